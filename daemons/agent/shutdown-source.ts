// Planned failover on the agent (docs/failover.md): ShutdownSource runs the
// agent's shutdown hook (the machine stops), then shuts the listed disks as a
// source: writes through the agent are refused, the agent closes the files it
// keeps open for writing, and no capture starts on them. Captures already
// running go on: the drain that follows needs their records (write-through)
// or a last pass (scan); the failover's StopReplication stops them.
// ReleaseSource lifts it. The set is kept in <dataDir>/shut-down-sources.json
// (written to a temporary file, fsynced, renamed), so a restarted agent keeps
// refusing.
import fs from 'node:fs';
import path from 'node:path';
import type { ShutdownSourceRequest__Output } from '../../generated/drplane/v1/ShutdownSourceRequest';
import type { ShutdownSourceResponse } from '../../generated/drplane/v1/ShutdownSourceResponse';
import { type DrplaneError, failedPrecondition, invalidArgument } from '../../shared/errors';
import { disksPerMachineMax, nameLengthMax, shutdownHookOutputBytesMax, shutdownReasonLengthMax } from '../../shared/limits';
import type { Logger } from '../../shared/log';
import type { Captures } from './captures';
import type { SourceDisks } from './disks';
import type { HashTrees } from './hash-trees';
import { hookError, hookOutput, outputTail, type Hooks } from './hooks';
import { OneAtATime } from './one-at-a-time';
import type { SourceWriters } from './write-through';

/** A disk shut down as a source, as persisted. */
export interface ShutDownDisk {
  path: string;
  machine: string;
  reason: string;
  shutDownTimeMs: number;
  /** "<dev>:<ino>" of the file when it was shut down (null: it did not exist): a failback replaces it by rename. */
  inode: string | null;
}

interface ShutDownFile {
  version: 1;
  disks: ShutDownDisk[];
}

export const shutDownFileName = 'shut-down-sources.json';

const reasonText = (disk: ShutDownDisk) => disk.reason || `ShutdownSource for machine ${disk.machine || '(unnamed)'}`;

/** The error of a write to a shut-down disk. */
export function writeRefusal(disk: ShutDownDisk): DrplaneError {
  return failedPrecondition(`disk ${disk.path} is shut down for failover (${reasonText(disk)}): writes resume after the machine is failed back or reprotected here (ReleaseSource)`);
}

/** The error of a StartCapture on a shut-down disk with no capture running. */
export function captureRefusal(disk: ShutDownDisk): DrplaneError {
  return failedPrecondition(`disk ${disk.path} is shut down for failover (${reasonText(disk)}): no capture starts on it until it is released (ReleaseSource)`);
}

/** The identity of the file at a path now, or null when there is none. */
export async function inodeOf(diskPath: string): Promise<string | null> {
  try {
    const stats = await fs.promises.stat(diskPath, { bigint: true });
    return `${stats.dev}:${stats.ino}`;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
}

/** The persisted set of disks shut down as a source. */
export class ShutDownDisks {
  private disks = new Map<string, ShutDownDisk>();

  private constructor(private readonly file: string) {}

  /** Reads the set; an unreadable file stops the agent (it cannot know which disks must refuse writes). */
  static async load(dataDir: string): Promise<ShutDownDisks> {
    const set = new ShutDownDisks(path.join(dataDir, shutDownFileName));
    let text: string;
    try {
      text = await fs.promises.readFile(set.file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return set;
      throw error;
    }
    try {
      const parsed = JSON.parse(text) as ShutDownFile;
      if (parsed.version !== 1 || !Array.isArray(parsed.disks)) throw new Error('not a list of shut-down disks');
      for (const disk of parsed.disks) {
        if (typeof disk.path !== 'string' || !path.isAbsolute(disk.path)) throw new Error(`bad entry ${JSON.stringify(disk)}`);
        set.disks.set(disk.path, { path: disk.path, machine: String(disk.machine ?? ''), reason: String(disk.reason ?? ''), shutDownTimeMs: Number(disk.shutDownTimeMs) || 0, inode: disk.inode ?? null });
      }
    } catch (error) {
      throw new Error(`${set.file} is unreadable (${(error as Error).message}): it lists the disks shut down for failover, which must keep refusing writes; repair it, or remove it to let writes reach every disk again`);
    }
    return set;
  }

  get paths(): string[] {
    return [...this.disks.keys()].sort();
  }

  get(diskPath: string): ShutDownDisk | undefined {
    return this.disks.get(diskPath);
  }

  /** Adds disks; persisted before it takes effect. `applied` runs in the same tick as the change. */
  async add(disks: readonly ShutDownDisk[], applied: () => void = () => undefined): Promise<void> {
    const next = new Map(this.disks);
    for (const disk of disks) next.set(disk.path, disk);
    await this.persist(next);
    this.disks = next;
    applied();
  }

  /** Removes disks; persisted before it takes effect. */
  async remove(paths: readonly string[]): Promise<void> {
    const next = new Map(this.disks);
    for (const diskPath of paths) next.delete(diskPath);
    await this.persist(next);
    this.disks = next;
  }

  /** Write a temporary file, fsync it, rename it over the set, fsync the directory: a crash leaves the old set or the new one. */
  private async persist(disks: Map<string, ShutDownDisk>): Promise<void> {
    const content: ShutDownFile = { version: 1, disks: [...disks.values()].sort((a, b) => a.path.localeCompare(b.path)) };
    const temporary = `${this.file}.tmp-${process.pid}`;
    const handle = await fs.promises.open(temporary, 'w', 0o600);
    try {
      await handle.writeFile(JSON.stringify(content, null, 2));
      await handle.sync();
    } finally {
      await handle.close();
    }
    await fs.promises.rename(temporary, this.file);
    const directory = await fs.promises.open(path.dirname(this.file), 'r');
    try {
      await directory.sync();
    } finally {
      await directory.close();
    }
  }
}

export interface SourceShutdownParts {
  disks: SourceDisks;
  set: ShutDownDisks;
  hooks: Hooks;
  writers: SourceWriters;
  captures: Captures;
  trees: HashTrees;
  log: Logger;
}

export class SourceShutdown {
  /** ShutdownSource and ReleaseSource one at a time: the hook runs once for disks shut down together. */
  private readonly queue = new OneAtATime();

  constructor(private readonly parts: SourceShutdownParts) {}

  /**
   * Runs the shutdown hook (when configured and a listed disk is not shut down
   * yet) with every listed disk in DRPLANE_DISKS and the machine in
   * DRPLANE_MACHINE; a failing hook shuts nothing down. Then the listed disks
   * refuse writes, their open files are closed (after the writes already
   * admitted) and no capture starts on them.
   */
  async shutdown(request: ShutdownSourceRequest__Output): Promise<ShutdownSourceResponse> {
    const { disks, set, hooks, writers, log } = this.parts;
    if (request.paths.length === 0) throw invalidArgument('paths: at least one source disk is required');
    if (request.paths.length > disksPerMachineMax) throw invalidArgument(`paths: ${request.paths.length} disks, a machine has at most ${disksPerMachineMax}`);
    if (request.machine.length > nameLengthMax) throw invalidArgument(`machine is longer than ${nameLengthMax} characters`);
    if (request.reason.length > shutdownReasonLengthMax) throw invalidArgument(`reason is longer than ${shutdownReasonLengthMax} characters`);
    const listed = [...new Set(await Promise.all(request.paths.map((requested) => disks.authorizeExisting(requested))))].sort();
    return this.queue.run(async () => {
      const fresh = listed.filter((diskPath) => !set.get(diskPath));
      if (fresh.length === 0) {
        const first = set.get(listed[0])!;
        return { hookRan: false, hookOutput: `already shut down since ${new Date(first.shutDownTimeMs).toISOString()} (${reasonText(first)}): the shutdown hook does not run again`, shutDownPaths: listed };
      }
      let hookRan = false;
      let output = 'no shutdown hook is configured on this agent (hooks.shutdown, --shutdown-hook): writes through the agent are refused, but drplane did not stop the machine';
      if (hooks.has('shutdown')) {
        const result = await hooks.run('shutdown', { disks: listed, machine: request.machine });
        if (!result.ok) {
          throw failedPrecondition(`${hookError(result, hooks.timeoutMs, 'tail')}; no disk was shut down (writes go on): fix the hook or the machine, then call ShutdownSource again`);
        }
        hookRan = true;
        output = outputTail(hookOutput(result), shutdownHookOutputBytesMax);
      }
      const now = Date.now();
      const added = await Promise.all(fresh.map(async (diskPath): Promise<ShutDownDisk> => ({ path: diskPath, machine: request.machine, reason: request.reason, shutDownTimeMs: now, inode: await inodeOf(diskPath) })));
      // Persisted first: from the moment a write is refused, a restarted agent refuses it too. Writes admitted
      // before the change finish (and are captured); later ones are refused, and the file is closed. The retire
      // starts in the same tick as the change, so nothing reads the capture between the two.
      let retiring: Promise<void[]> = Promise.resolve([]);
      await set.add(added, () => {
        retiring = Promise.all(added.map((disk) => writers.retire(disk.path, () => writeRefusal(disk))));
      });
      await retiring;
      log.info({ disks: fresh, alreadyShutDown: listed.filter((diskPath) => !fresh.includes(diskPath)), machine: request.machine, reason: request.reason, hookRan }, 'disks shut down as a source: writes refused until ReleaseSource');
      return { hookRan, hookOutput: output, shutDownPaths: listed };
    });
  }

  /**
   * Lifts the shutdown of the listed disks (idempotent). A disk whose file was
   * replaced meanwhile (a failback renames the recovered disk over it) loses
   * what the agent still knew of the old file: its capture stops and its open
   * hash trees close, so the next write, capture or tree opens the path afresh.
   * A disk still the same file keeps its capture (a failover that stopped before
   * its fence goes on replicating without a resync).
   */
  async release(paths: readonly string[]): Promise<void> {
    const { disks, set, captures, trees, log } = this.parts;
    if (paths.length > disksPerMachineMax) throw invalidArgument(`paths: ${paths.length} disks, a machine has at most ${disksPerMachineMax}`);
    const listed = [...new Set(paths.map((requested) => disks.authorize(requested)))];
    await this.queue.run(async () => {
      const released = listed.map((diskPath) => set.get(diskPath)).filter((disk): disk is ShutDownDisk => disk !== undefined);
      if (released.length === 0) return;
      await set.remove(released.map((disk) => disk.path));
      for (const disk of released) {
        const inode = await inodeOf(disk.path).catch(() => null);
        const replaced = inode === null || inode !== disk.inode;
        if (replaced) {
          captures.stopStale(disk.path, 'the disk was replaced while it was shut down as a source');
          trees.closeDisk(disk.path);
        }
        log.info({ disk: disk.path, machine: disk.machine, shutDownTimeMs: disk.shutDownTimeMs, replaced }, 'disk released as a source: writes accepted again');
      }
    });
  }
}
