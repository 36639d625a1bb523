// Write-through: a workload's writes reach a source disk through the agent.
// A write's record is numbered right after its pwrite to the source completes,
// so the record order is the order writes reached the disk. WriteStream writes
// run one at a time; NBD writes on distinct blocks run at the same time, and
// those whose blocks overlap one in flight wait for it (write-queue.ts): of
// two overlapping writes the later one lands, and is numbered, after the
// earlier; writes on distinct blocks commute. So replaying the records in
// sequence order gives the source, and every record boundary is a state a
// disk could have had (any write answered before another was sent has the
// lower sequence).
import type { FileHandle } from 'node:fs/promises';
import { DrplaneError, ErrorCode, invalidArgument, limitExceeded, outOfRange } from '../../shared/errors';
import { failpoint } from '../../shared/failpoints';
import { readAll, writeAll, writeAllSync } from '../../shared/file-io';
import { openFlags } from '../../shared/open-beneath';
import { blockBytes, extentBytesMax, nbdWritesInFlightPerDiskMax, zeroRecordHeldBytes } from '../../shared/limits';
import { isAllZero } from '../../shared/zeros';
import type { Capture } from './capture';
import type { SourceDisk, SourceDisks } from './disks';
import { WriteQueue } from './write-queue';
import { Encoder, stringFieldBytes, uintFieldBytes } from '../../shared/wire';

/** Writes up to this size run inline: a page-cache write costs microseconds, the thread pool far more. */
const syncWriteBytesMax = 64 * 1024;

export interface WriteResult {
  /** The write's change record; 0 when the disk has no write-through capture. */
  sequence: number;
  captureId: string;
}

/** A WriteResponse encoded by hand (one per write: protobufjs's writer cost more than the message). */
export function encodeWriteResponse(result: WriteResult): Buffer {
  const out = new Encoder(Buffer.allocUnsafe(uintFieldBytes(1, result.sequence) + stringFieldBytes(2, result.captureId)));
  out.uint(1, result.sequence).string(2, result.captureId);
  return out.buffer;
}

/** Whole blocks, 1 byte to 1 MiB, inside the disk; otherwise the write is refused and nothing is written. */
export function validateWrite(offset: number, length: number, diskBytes: number, diskPath: string): void {
  if (length === 0) throw invalidArgument(`write to ${diskPath} at offset ${offset} has no data`);
  if (length > extentBytesMax) throw invalidArgument(`write to ${diskPath} of ${length} bytes is larger than ${extentBytesMax}: split it`);
  if (offset % blockBytes !== 0 || length % blockBytes !== 0) throw invalidArgument(`write to ${diskPath} (offset ${offset}, length ${length}) is not aligned to ${blockBytes}-byte blocks`);
  if (offset + length > diskBytes) throw outOfRange(`write to ${diskPath} (offset ${offset}, length ${length}) ends past the end of the disk (${diskBytes} bytes)`);
}

/** One open source disk and its queue of writes (and of markers and barriers that must fall between writes). */
export class SourceWriter {
  readonly queue = new WriteQueue(nbdWritesInFlightPerDiskMax);
  /** Set (in the queue, between two writes) when the disk is shut down as a source: later writes get this error. */
  private refusal: (() => DrplaneError) | undefined;

  constructor(
    readonly disk: SourceDisk,
    private readonly handle: FileHandle,
  ) {}

  /**
   * Queues a validated write. `captureOf` is asked inside the queue, so a
   * capture that starts or stops between two writes sees whole writes only.
   */
  write(offset: number, data: Buffer, sync: boolean, captureOf: () => Capture | undefined): Promise<WriteResult> {
    validateWrite(offset, data.length, this.disk.diskBytes, this.disk.path);
    return this.queue.run(() => this.writeInQueue(offset, data, sync, captureOf));
  }

  /**
   * The body of write(), for a caller already running in this disk's queue
   * (the NBD server: a request split into extents, or a read-modify-write of
   * partial blocks, applied as one task over its blocks, queue.runRange; other
   * writes of the same disk may run meanwhile on other blocks). The caller has
   * validated the write. Held records may pass heldBytesMax by the writes in
   * flight at once (at most nbdWritesInFlightPerDiskMax extents): each checks
   * for room before it writes.
   * `zeros`: every byte of `data` is zero (TRIM, WRITE_ZEROES, or any write
   * found to be all zero): the record is a zero run, with no data.
   */
  async writeInQueue(offset: number, data: Buffer, sync: boolean, captureOf: () => Capture | undefined, zeros = isAllZero(data)): Promise<WriteResult> {
    if (this.refusal) throw this.refusal();
    // Wait for room before the disk changes: a workload feels the back-pressure, and the record is sure to fit.
    const heldBytes = zeros ? zeroRecordHeldBytes : data.length;
    const waiting = captureOf();
    if (waiting && !waiting.hasRoom(heldBytes)) await waiting.waitForRoom(heldBytes);
    const capture = captureOf();
    const recorded = capture?.beginPending();
    try {
      await this.writeFully(offset, data);
      if (sync) await this.handle.datasync();
      await failpoint('write-through.written');
    } catch (error) {
      // Part of the write may be on the disk with no record of it: only a resync can tell.
      if (capture && !capture.stopped) capture.overflow(`a write to the source failed (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
      throw writeError(error, this.disk.path, offset, data.length);
    } finally {
      recorded?.();
    }
    if (!capture || capture.stopped) return { sequence: 0, captureId: '' };
    const record = zeros ? capture.appendZeros(offset, data.length) : capture.appendCopy(offset, data);
    return { sequence: record.sequence, captureId: capture.captureId };
  }

  /** For a caller in this disk's queue, over these blocks: reads `into.length` bytes at `offset` (the blocks a partial write merges into). */
  async readInQueue(offset: number, into: Buffer): Promise<void> {
    if (this.refusal) throw this.refusal();
    await readAll(this.handle, into, offset, 'zeros');
  }

  /** For a caller in this disk's queue: every write that finished before it is durable on the source (NBD FLUSH and FUA). */
  async datasyncInQueue(): Promise<void> {
    if (this.refusal) throw this.refusal();
    try {
      await this.handle.datasync();
    } catch (error) {
      throw writeError(error, this.disk.path, 0, 0);
    }
  }

  private async writeFully(offset: number, data: Buffer): Promise<void> {
    // Every byte or a failure (a write that writes nothing would otherwise loop for ever).
    if (data.length <= syncWriteBytesMax) writeAllSync(this.handle.fd, data, offset, 'write-through.write');
    else await writeAll(this.handle, data, offset, 'write-through.write');
  }

  close(): Promise<void> {
    return this.queue.run(() => this.handle.close());
  }

  /**
   * After the writes queued so far: refuse every later one with `refusal`
   * and close the file (ShutdownSource: the agent holds no file of the disk).
   */
  retire(refusal: () => DrplaneError): Promise<void> {
    return this.queue.run(async () => {
      if (this.refusal) return;
      this.refusal = refusal;
      await this.handle.close();
    });
  }
}

function writeError(error: unknown, diskPath: string, offset: number, length: number): DrplaneError {
  if (error instanceof DrplaneError) return error;
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC') return limitExceeded(`no space left under ${diskPath} to write ${length} bytes at ${offset}: the image file is sparse and its file system is full`);
  return new DrplaneError(ErrorCode.FailedPrecondition, `cannot write ${length} bytes at ${offset} to ${diskPath}: ${code ?? (error as Error).message}`, { cause: error });
}

/**
 * One writer per disk, opened on its first write and kept open (one fd per
 * disk) until the disk is shut down as a source: retire() closes it, and the
 * next write after ReleaseSource opens the path afresh (a failback may have
 * replaced the file by rename: the old fd would write to the old inode).
 */
export class SourceWriters {
  private readonly writers = new Map<string, Promise<SourceWriter>>();
  private readonly retiring = new Map<string, Promise<void>>();

  constructor(
    private readonly disks: SourceDisks,
    /** Why a disk takes no writes now (it is shut down as a source), or undefined. */
    private readonly refusal: (diskPath: string) => DrplaneError | undefined = () => undefined,
  ) {}

  /**
   * The writer of a disk this agent may write (PERMISSION_DENIED for any
   * other path; FAILED_PRECONDITION while it is shut down as a source).
   * Callers that await it in order get it in order: write order is kept.
   */
  get(requested: string): Promise<SourceWriter> {
    const diskPath = this.disks.authorize(requested);
    const refused = this.refusal(diskPath);
    if (refused) return Promise.reject(refused);
    let writer = this.writers.get(diskPath);
    if (!writer) {
      const opening = this.open(diskPath);
      writer = opening;
      this.writers.set(diskPath, opening);
      // A disk that could not be opened is tried again on the next write.
      opening.catch(() => {
        if (this.writers.get(diskPath) === opening) this.writers.delete(diskPath);
      });
    }
    return writer;
  }

  private async open(diskPath: string): Promise<SourceWriter> {
    const disk = await this.disks.describe(diskPath);
    let handle: FileHandle;
    try {
      // Between the check (describe) and the open, for the test that swaps the disk's directory for a link.
      await failpoint('write-through.before-open');
      handle = await this.disks.open(disk.path, openFlags.readWrite);
    } catch (error) {
      if (error instanceof DrplaneError) throw error;
      throw new DrplaneError(ErrorCode.FailedPrecondition, `cannot open ${disk.path} for writing: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, { cause: error });
    }
    return new SourceWriter(disk, handle);
  }

  /**
   * Forgets the disk's writer: writes queued before this call are done (or
   * refused) first, later ones get `refusal`, and its file is closed. A later
   * get() opens the path again; the caller refuses writes before that while
   * the disk is shut down.
   */
  async retire(requested: string, refusal: () => DrplaneError): Promise<void> {
    const diskPath = this.disks.authorize(requested);
    const pending = this.writers.get(diskPath);
    if (!pending) return;
    this.writers.delete(diskPath);
    const retiring = pending.then(
      (writer) => writer.retire(refusal),
      () => undefined,
    );
    this.retiring.set(diskPath, retiring);
    try {
      await retiring;
    } finally {
      if (this.retiring.get(diskPath) === retiring) this.retiring.delete(diskPath);
    }
  }

  /** Resolves once a retire() of the disk in progress is done: every write admitted before it has its record. */
  async retired(diskPath: string): Promise<void> {
    await this.retiring.get(diskPath)?.catch(() => undefined);
  }

  async closeAll(): Promise<void> {
    const writers = await Promise.allSettled(this.writers.values());
    this.writers.clear();
    await Promise.all(writers.map((writer) => (writer.status === 'fulfilled' ? writer.value.close() : undefined)));
  }
}
