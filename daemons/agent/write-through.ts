// Write-through: a workload's writes reach a source disk through the agent.
// Writes to one disk run one at a time: the pwrite to the source and the
// record's sequence are taken together, so the record order is the disk's
// write order and every record boundary is a state the disk really had.
import fsSync from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';
import { DrplaneError, ErrorCode, invalidArgument, limitExceeded, outOfRange } from '../../shared/errors';
import { failpoint } from '../../shared/failpoints';
import { blockBytes, extentBytesMax } from '../../shared/limits';
import type { Capture } from './capture';
import type { SourceDisk, SourceDisks } from './disks';
import { OneAtATime } from './one-at-a-time';

/** Writes up to this size run inline: a page-cache write costs microseconds, the thread pool far more. */
const syncWriteBytesMax = 64 * 1024;

export interface WriteResult {
  /** The write's change record; 0 when the disk has no write-through capture. */
  sequence: number;
  captureId: string;
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
  readonly queue = new OneAtATime();

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
    return this.queue.run(async () => {
      // Wait for room before the disk changes: a workload feels the back-pressure, and the record is sure to fit.
      await captureOf()?.waitForRoom(data.length);
      const capture = captureOf();
      if (capture) capture.pendingSinceMs = Date.now();
      try {
        await this.writeFully(offset, data);
        if (sync) await this.handle.datasync();
        await failpoint('write-through.written');
      } catch (error) {
        // Part of the write may be on the disk with no record of it: only a resync can tell.
        if (capture && !capture.stopped) capture.overflow(`a write to the source failed (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
        throw writeError(error, this.disk.path, offset, data.length);
      } finally {
        if (capture) capture.pendingSinceMs = undefined;
      }
      if (!capture || capture.stopped) return { sequence: 0, captureId: '' };
      const record = capture.append({ offset, data });
      return { sequence: record.sequence, captureId: capture.captureId };
    });
  }

  private async writeFully(offset: number, data: Buffer): Promise<void> {
    if (data.length <= syncWriteBytesMax) {
      for (let done = 0; done < data.length; ) done += fsSync.writeSync(this.handle.fd, data, done, data.length - done, offset + done);
      return;
    }
    for (let done = 0; done < data.length; ) {
      const { bytesWritten } = await this.handle.write(data, done, data.length - done, offset + done);
      done += bytesWritten;
    }
  }

  close(): Promise<void> {
    return this.queue.run(() => this.handle.close());
  }
}

function writeError(error: unknown, diskPath: string, offset: number, length: number): DrplaneError {
  if (error instanceof DrplaneError) return error;
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC') return limitExceeded(`no space left under ${diskPath} to write ${length} bytes at ${offset}: the image file is sparse and its file system is full`);
  return new DrplaneError(ErrorCode.FailedPrecondition, `cannot write ${length} bytes at ${offset} to ${diskPath}: ${code ?? (error as Error).message}`, { cause: error });
}

/** One writer per configured disk, opened on its first write and kept open (one fd per disk). */
export class SourceWriters {
  private readonly writers = new Map<string, Promise<SourceWriter>>();

  constructor(private readonly disks: SourceDisks) {}

  /**
   * The writer of a configured disk (PERMISSION_DENIED for any other path).
   * Callers that await it in order get it in order: write order is kept.
   */
  get(requested: string): Promise<SourceWriter> {
    const diskPath = this.disks.authorize(requested);
    let writer = this.writers.get(diskPath);
    if (!writer) {
      writer = this.open(diskPath);
      this.writers.set(diskPath, writer);
      // A disk that could not be opened is tried again on the next write.
      writer.catch(() => this.writers.delete(diskPath));
    }
    return writer;
  }

  private async open(diskPath: string): Promise<SourceWriter> {
    const disk = await this.disks.describe(diskPath);
    let handle: FileHandle;
    try {
      handle = await fs.open(disk.path, 'r+');
    } catch (error) {
      throw new DrplaneError(ErrorCode.FailedPrecondition, `cannot open ${disk.path} for writing: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`, { cause: error });
    }
    return new SourceWriter(disk, handle);
  }

  async closeAll(): Promise<void> {
    const writers = await Promise.allSettled(this.writers.values());
    this.writers.clear();
    await Promise.all(writers.map((writer) => (writer.status === 'fulfilled' ? writer.value.close() : undefined)));
  }
}
