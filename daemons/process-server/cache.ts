// The cache directory: every disk's journal, bounded together by cacheBytesMax.
// At the bound a session stops reading from its agent (so it stops
// acknowledging, and the agent holds the records: back-pressure, not loss)
// until applied segments are deleted. The bound is checked against the file
// system at start-up, so the journal does not find a full disk first.
import fs from 'node:fs';
import path from 'node:path';
import { cacheBytesDefault, cacheBytesMax, cacheBytesMin, cacheFreeBytesMargin, messageBytesMax } from '../../shared/limits';

/** Bytes of every file under `dir`. */
function bytesUnder(dir: string): number {
  let total = 0;
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) total += bytesUnder(full);
    else if (entry.isFile()) total += fs.statSync(full).size;
  }
  return total;
}

/**
 * Creates the cache directory and decides its bound: the configured value, or
 * the default, never more than the file system can give (free space plus what
 * the journals already hold, minus a margin). Throws a one-line error naming
 * the config key otherwise.
 */
export function prepareCacheDir(cacheDir: string, configuredBytesMax: number | undefined): { dir: string; bytesMax: number } {
  const dir = path.resolve(cacheDir);
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.accessSync(dir, fs.constants.W_OK);
  } catch (error) {
    throw new Error(`config key cacheDir: ${dir} is not a writable directory (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
  }
  const stats = fs.statfsSync(dir);
  const usable = stats.bavail * stats.bsize + bytesUnder(dir) - cacheFreeBytesMargin;
  const mib = (bytes: number) => `${Math.floor(bytes / 1024 / 1024)} MiB`;
  if (configuredBytesMax !== undefined) {
    if (!Number.isSafeInteger(configuredBytesMax) || configuredBytesMax < cacheBytesMin || configuredBytesMax > cacheBytesMax) {
      throw new Error(`config key cacheBytesMax: must be an integer from ${cacheBytesMin} to ${cacheBytesMax}, got ${configuredBytesMax}`);
    }
    if (configuredBytesMax > usable) {
      throw new Error(`config key cacheBytesMax: ${mib(configuredBytesMax)} is more than the file system of ${dir} can hold (${mib(Math.max(0, usable))} free beside the journals, keeping ${mib(cacheFreeBytesMargin)} spare): lower cacheBytesMax or free space`);
    }
    return { dir, bytesMax: configuredBytesMax };
  }
  const bytesMax = Math.min(cacheBytesDefault, usable);
  if (bytesMax < cacheBytesMin) {
    throw new Error(`config key cacheDir: ${dir} has ${mib(Math.max(0, usable))} free beside a ${mib(cacheFreeBytesMargin)} margin; the cache needs at least ${mib(cacheBytesMin)}: free space or point cacheDir elsewhere`);
  }
  return { dir, bytesMax };
}

/** What the cache holds, over every disk's journal. */
export class CacheSpace {
  private readonly users = new Set<{ readonly diskBytes: number }>();
  private readonly waiters = new Set<() => void>();

  constructor(
    readonly dir: string,
    readonly bytesMax: number,
  ) {}

  /** Journal segments of one disk: `diskBytes` is read whenever the cache is measured. */
  add(user: { readonly diskBytes: number }): () => void {
    this.users.add(user);
    return () => {
      this.users.delete(user);
      this.changed();
    };
  }

  get usedBytes(): number {
    let total = 0;
    for (const user of this.users) total += user.diskBytes;
    return total;
  }

  /** No room for another change batch: a session reading one now could pass the bound. */
  get full(): boolean {
    return this.usedBytes + messageBytesMax > this.bytesMax;
  }

  /** Something was deleted (or a journal went away): waiting sessions look again. */
  changed(): void {
    for (const wake of [...this.waiters]) wake();
    this.waiters.clear();
  }

  /** Resolves at the next change, or after `timeoutMs` (the caller looks again either way). */
  nextChange(timeoutMs: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.waiters.delete(wake);
        resolve();
      }, timeoutMs);
      const wake = () => {
        clearTimeout(timer);
        resolve();
      };
      this.waiters.add(wake);
    });
  }
}
