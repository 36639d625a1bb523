// The agent's source disks as NBD exports, and the block I/O the NBD server
// does on them. Every write goes through the disk's write-through queue (the
// same one Write/WriteStream use), so it reaches the source and becomes a
// change record in one step, in the disk's write order, whichever client or
// API it came from: NBD writes on distinct blocks at the same time, a write
// over blocks that one in flight is writing after it (write-queue.ts).
// Reads go straight to the file, outside the queue: the NBD protocol orders
// nothing between requests in flight, so a read overlapping a write not yet
// answered may see the old data, the new, or some 4 KiB pages of each; a
// write already answered is in the page cache every descriptor of the file sees.
import fsPromises, { type FileHandle } from 'node:fs/promises';
import { readAll } from '../../shared/file-io';
import path from 'node:path';
import { DrplaneError, ErrorCode } from '../../shared/errors';
import { blockBytes, extentBytesMax } from '../../shared/limits';
import { zeroBytes } from '../../shared/zeros';
import type { Capture } from './capture';
import type { SourceDisks } from './disks';
import type { SourceWriter, SourceWriters } from './write-through';

/** What the NBD server needs of the agent: its disks, their writers and captures, and which are shut down. */
export interface BlockAccess {
  disks: SourceDisks;
  writers: SourceWriters;
  /** The disk's write-through capture, if one runs now (asked inside the disk's queue). */
  captureOf(diskPath: string): Capture | undefined;
  /** Whether the disk is shut down as a source (planned failover): it is exported read-only then. */
  isShutDown(diskPath: string): boolean;
}

/** An export, as the handshake describes it. */
export interface ExportInfo {
  name: string;
  path: string;
  diskBytes: number;
  readOnly: boolean;
}

export class NbdExports {
  /** Export name -> disk path: each configured disk by its file name. */
  private readonly byName = new Map<string, string>();

  constructor(private readonly access: BlockAccess) {
    for (const diskPath of access.disks.paths) {
      const name = path.basename(diskPath);
      const other = this.byName.get(name);
      if (other) throw new DrplaneError(ErrorCode.InvalidArgument, `config key nbdListen: disks ${other} and ${diskPath} would both be NBD export "${name}": NBD exports are named by file name, so give the disks distinct file names`);
      this.byName.set(name, diskPath);
    }
  }

  /** The configured disks' export names, for NBD_OPT_LIST. */
  get names(): string[] {
    return [...this.byName.keys()];
  }

  /**
   * The disk an export name stands for: a configured disk's file name; the
   * empty name when exactly one disk is configured; or an absolute path the
   * agent may write (a configured disk, or a file under a disk root, e.g. a
   * recovered disk after failover). Undefined when the name is none of these.
   */
  resolve(name: string): string | undefined {
    const byName = this.byName.get(name);
    if (byName) return byName;
    if (name === '' && this.byName.size === 1) return [...this.byName.values()][0];
    if (path.isAbsolute(name)) {
      try {
        return this.access.disks.authorize(name);
      } catch {
        return undefined;
      }
    }
    return undefined;
  }

  /** Describes an export now (size, read-only); a DrplaneError when the disk cannot be described. */
  async describe(name: string, diskPath: string): Promise<ExportInfo> {
    const disk = await this.access.disks.describe(diskPath);
    return { name, path: disk.path, diskBytes: disk.diskBytes, readOnly: this.access.isShutDown(disk.path) };
  }

  /** Opens an export for one connection (a descriptor for its reads). */
  async open(exported: ExportInfo): Promise<OpenExport> {
    let handle: FileHandle;
    try {
      handle = await fsPromises.open(exported.path, 'r');
    } catch (error) {
      throw new DrplaneError(ErrorCode.FailedPrecondition, `cannot open ${exported.path} for reading: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, { cause: error });
    }
    return new OpenExport(exported, handle, this.access);
  }
}

/** One connection's export: reads from its own descriptor, writes through the disk's queue. */
export class OpenExport {
  constructor(
    readonly info: ExportInfo,
    private readonly handle: FileHandle,
    private readonly access: BlockAccess,
  ) {}

  get isShutDown(): boolean {
    return this.access.isShutDown(this.info.path);
  }

  /** Reads `length` bytes at `offset` into `into` at `at` (a reply buffer whose header comes first). */
  read(offset: number, into: Buffer, at: number, length: number): Promise<void> {
    // The file shrank under the export: what is gone reads as zeros.
    return readAll(this.handle, into.subarray(at, at + length), offset, 'zeros');
  }

  /**
   * Writes `data` at `offset` (any alignment, inside the export) as one task
   * of the disk's queue over the whole blocks it touches: partial blocks at
   * either end are merged with what the source holds (read-modify-write, safe
   * because no other write of those blocks runs meanwhile), and the rest goes
   * in extents of at most extentBytesMax, each a change record. `fua`:
   * durable on the source before it resolves.
   */
  write(offset: number, data: Buffer, fua: boolean): Promise<void> {
    return this.apply(offset, data.length, data, fua);
  }

  /**
   * Zeros `length` bytes at `offset` (TRIM and WRITE_ZEROES), as write()
   * does: written to the source from one shared buffer of zeros, in pieces of
   * at most extentBytesMax, each captured as a zero-run record (no data: no
   * zero bytes travel to the process server, its journal or the master target).
   */
  zero(offset: number, length: number, fua: boolean): Promise<void> {
    return this.apply(offset, length, undefined, fua);
  }

  /**
   * Every write answered before it is durable on the source, and its records
   * are held (NBD FLUSH). An answered write has finished its pwrite and has its
   * record, so one fdatasync covers it: the flush touches no blocks and waits
   * for no write in flight (only for a task that runs alone, e.g. a retire).
   */
  async flush(): Promise<void> {
    const writer = await this.access.writers.get(this.info.path);
    await writer.queue.runRange(0, 0, () => this.datasync(writer));
  }

  /**
   * fdatasync of the source. One that fails may have lost writes whose records
   * are held (the kernel drops dirty pages it could not write): the capture
   * overflows, so the process server resyncs instead of trusting them.
   */
  private async datasync(writer: SourceWriter): Promise<void> {
    try {
      await writer.datasyncInQueue();
    } catch (error) {
      // A disk shut down as a source refuses before any fdatasync: nothing was lost, and its drain must go on.
      const capture = this.access.isShutDown(this.info.path) ? undefined : this.access.captureOf(this.info.path);
      if (capture && !capture.stopped) capture.overflow(`fdatasync of the source failed (${(error as Error).message})`);
      throw error;
    }
  }

  /** One write-like request (`data` undefined: zeros) as one task of the disk's queue, over the whole blocks it touches. */
  private async apply(offset: number, length: number, data: Buffer | undefined, fua: boolean): Promise<void> {
    const writer = await this.access.writers.get(this.info.path);
    const captureOf = () => this.access.captureOf(this.info.path);
    /** Bytes of the request from `at` (relative to `offset`), `count` of them, at their place on the disk. */
    const piece = (at: number, count: number) =>
      data ? writer.writeInQueue(offset + at, data.subarray(at, at + count), false, captureOf) : writer.writeInQueue(offset + at, zeroBytes(count), false, captureOf, true);
    /** Read-modify-write of the block at `blockOffset` with the request's bytes from `at`, `count` of them. */
    const merge = async (blockOffset: number, at: number, count: number) => {
      const block = Buffer.allocUnsafe(blockBytes);
      await writer.readInQueue(blockOffset, block);
      const into = offset + at - blockOffset;
      if (data) data.copy(block, into, at, at + count);
      else block.fill(0, into, into + count);
      await writer.writeInQueue(blockOffset, block, false, captureOf);
    };
    const blocksStart = Math.floor(offset / blockBytes) * blockBytes;
    const blocksEnd = Math.ceil((offset + length) / blockBytes) * blockBytes;
    await writer.queue.runRange(blocksStart, blocksEnd, async () => {
      const end = offset + length;
      const firstWhole = Math.ceil(offset / blockBytes) * blockBytes;
      const lastWhole = Math.floor(end / blockBytes) * blockBytes;
      if (firstWhole > lastWhole) {
        // Inside one block, touching neither of its edges.
        await merge(lastWhole, 0, length);
      } else {
        if (offset < firstWhole) await merge(firstWhole - blockBytes, 0, firstWhole - offset);
        for (let at = firstWhole; at < lastWhole; at += extentBytesMax) await piece(at - offset, Math.min(extentBytesMax, lastWhole - at));
        if (lastWhole < end) await merge(lastWhole, lastWhole - offset, end - lastWhole);
      }
      if (fua) await this.datasync(writer);
    });
  }

  async close(): Promise<void> {
    await this.handle.close().catch(() => undefined);
  }
}
