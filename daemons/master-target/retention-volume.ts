// The retention volume: where the retention store (LMDB) lives. It must
// qualify at start-up (DESIGN.md, Retention store): a volume that fills up or
// vanishes takes every recovery point with it, so a daemon refuses to start on
// one that is missing, read-only, empty or nearly full, or, when configured
// explicitly, shared with the install directory or the process server's cache
// (either of which can fill it, or be filled by it).
import fs from 'node:fs';
import path from 'node:path';
import { failedPrecondition } from '../../shared/errors';

export interface RetentionVolumeOptions {
  /** The configured retentionDir, or undefined for the default under the data directory. */
  retentionDir: string | undefined;
  dataDir: string;
  /** The folder holding the code (see installDirectory). */
  installDir: string;
  /** A process server's cache directory on this host, if one runs here. */
  processServerCacheDir: string | undefined;
  freeBytesMin: number;
}

export interface RetentionVolume {
  /** The directory of the store. */
  dir: string;
  /** False for the default: the volume-separation checks were skipped. */
  explicit: boolean;
  capacityBytes: number;
  freeBytes: number;
}

/** The repository or installation root: the nearest folder above this file with a package.json. */
export function installDirectory(from = __dirname): string {
  for (let dir = path.resolve(from); ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    if (dir === path.dirname(dir)) return path.resolve(from);
  }
}

/** Capacity and free space (for an unprivileged writer) of the file system holding `dir`, now. */
export function volumeSpace(dir: string): { capacityBytes: number; freeBytes: number } {
  const stats = fs.statfsSync(dir);
  return { capacityBytes: stats.blocks * stats.bsize, freeBytes: stats.bavail * stats.bsize };
}

const formatBytes = (bytes: number) => (bytes >= 1024 ** 3 ? `${(bytes / 1024 ** 3).toFixed(1)} GiB` : `${(bytes / 1024 ** 2).toFixed(1)} MiB`);

/** The device of the nearest existing ancestor (a cache directory the process server has not created yet lands there). */
function deviceOf(target: string): number {
  let dir = path.resolve(target);
  while (!fs.existsSync(dir) && dir !== path.dirname(dir)) dir = path.dirname(dir);
  return fs.statSync(dir).dev;
}

/**
 * Checks the retention volume, or throws an error of one line naming the
 * problem. The default directory (<dataDir>/retention) is created; an explicit
 * retentionDir never is: a missing mount must not become a folder on the root
 * volume.
 */
/** What an operator does about a full retention volume while the master target cannot start (docs/continuous-replication.md). */
function freeingAdvice(dir: string): string {
  return `prune old recovery points offline (drctl prune-retention --retention-dir ${dir} --keep-hours N), or use a larger volume`;
}

export function prepareRetentionVolume(options: RetentionVolumeOptions): RetentionVolume {
  const explicit = options.retentionDir !== undefined;
  const dir = path.resolve(options.retentionDir ?? path.join(options.dataDir, 'retention'));
  const key = explicit ? `retentionDir ${dir}` : `retention directory ${dir} (default: retentionDir is not set)`;
  if (!explicit) fs.mkdirSync(dir, { recursive: true });

  let stat: fs.Stats;
  try {
    stat = fs.statSync(dir);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw failedPrecondition(`${key} does not exist: mount the retention volume there (drplane does not create it)`);
    throw failedPrecondition(`${key} cannot be read (${code ?? (error as Error).message})`);
  }
  if (!stat.isDirectory()) throw failedPrecondition(`${key} is not a directory`);

  const probe = path.join(dir, `.retention-probe-${process.pid}`);
  try {
    const fd = fs.openSync(probe, 'wx', 0o600);
    try {
      fs.writeSync(fd, 'drplane retention probe\n');
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.rmSync(probe);
  } catch (error) {
    fs.rmSync(probe, { force: true });
    const code = (error as NodeJS.ErrnoException).code;
    // Full, not read-only: say how to free it.
    if (code === 'ENOSPC' || code === 'EDQUOT') throw failedPrecondition(`${key} is full (${code}): ${freeingAdvice(dir)}`);
    throw failedPrecondition(`${key} is not writable (${code ?? (error as Error).message})`);
  }

  const { capacityBytes, freeBytes } = volumeSpace(dir);
  if (capacityBytes <= 0) throw failedPrecondition(`${key} is on a file system with no capacity (statfs reports 0 blocks)`);
  if (freeBytes < options.freeBytesMin) {
    throw failedPrecondition(`${key} has ${formatBytes(freeBytes)} free, less than retentionFreeBytesMin (${formatBytes(options.freeBytesMin)}): ${freeingAdvice(dir)}`);
  }

  if (explicit) {
    if (stat.dev === deviceOf(options.installDir)) {
      throw failedPrecondition(`${key} is on the same file system as the install directory ${options.installDir}: give the retention store a volume of its own`);
    }
    if (options.processServerCacheDir !== undefined && stat.dev === deviceOf(options.processServerCacheDir)) {
      throw failedPrecondition(`${key} is on the same file system as the process server cache ${path.resolve(options.processServerCacheDir)} (processServerCacheDir): give the retention store a volume of its own`);
    }
  }
  return { dir, explicit, capacityBytes, freeBytes };
}
