// ReadDisk: streams block-aligned ranges of a source disk in pieces of at most
// 1 MiB, cut at 1 MiB boundaries of the disk, optionally leaving out all-zero
// pieces. Reads run ahead of the stream by one large read; the stream's
// back-pressure (write() returning false) paces both.
import type { FileHandle } from 'node:fs/promises';
import fsSync from 'node:fs';
import fs from 'node:fs/promises';
import type * as grpc from '@grpc/grpc-js';
import type { ByteRange__Output } from '../../generated/drplane/v1/ByteRange';
import type { DiskData } from '../../generated/drplane/v1/DiskData';
import { failedPrecondition, invalidArgument, limitExceeded, outOfRange } from '../../shared/errors';
import { failpoint } from '../../shared/failpoints';
import { blockBytes, extentBytesMax, readRangesPerRequestMax, units } from '../../shared/limits';

/** One read from the disk: several pieces, so a large sequential read feeds the stream. */
export const readRunBytes = 4 * units.MiB;

const zeroPiece = Buffer.alloc(extentBytesMax);
/** Reads up to this size run inline (synchronously). */
const syncReadBytesMax = 64 * 1024;

/** Checks a request's ranges against the disk: count, alignment, bounds. */
export function validateRanges(ranges: readonly ByteRange__Output[], diskBytes: number, diskPath: string): void {
  if (ranges.length > readRangesPerRequestMax) throw limitExceeded(`${ranges.length} ranges in one ReadDisk request; at most ${readRangesPerRequestMax}`);
  for (const [index, { offset, length }] of ranges.entries()) {
    if (offset % blockBytes !== 0 || length % blockBytes !== 0) throw invalidArgument(`range ${index} (offset ${offset}, length ${length}) is not aligned to ${blockBytes}-byte blocks`);
    if (length === 0) throw invalidArgument(`range ${index} at offset ${offset} is empty`);
    if (offset + length > diskBytes) throw outOfRange(`range ${index} (offset ${offset}, length ${length}) ends past the end of ${diskPath} (${diskBytes} bytes)`);
  }
}

/** The reads that cover the ranges, in order, each at most readRunBytes and starting on a piece boundary after the first. */
export function* readRuns(ranges: readonly ByteRange__Output[], runBytes = readRunBytes): Generator<{ offset: number; length: number }> {
  for (const { offset, length } of ranges) {
    const end = offset + length;
    for (let position = offset; position < end; ) {
      const runEnd = Math.min(end, Math.floor(position / extentBytesMax) * extentBytesMax + runBytes);
      yield { offset: position, length: runEnd - position };
      position = runEnd;
    }
  }
}

/** Cuts a run into pieces at the 1 MiB boundaries of the disk. */
export function* piecesOf(offset: number, data: Buffer): Generator<{ offset: number; data: Buffer }> {
  for (let position = offset; position < offset + data.length; ) {
    const pieceEnd = Math.min(offset + data.length, (Math.floor(position / extentBytesMax) + 1) * extentBytesMax);
    yield { offset: position, data: data.subarray(position - offset, pieceEnd - offset) };
    position = pieceEnd;
  }
}

async function readRun(handle: FileHandle, diskPath: string, run: { offset: number; length: number }): Promise<Buffer> {
  // A fresh buffer per run: its pieces may sit in the stream's write queue long after we read the next run.
  const data = Buffer.allocUnsafe(run.length);
  if (run.length <= syncReadBytesMax) {
    // A delta reads thousands of scattered blocks: inline page-cache reads cost microseconds, the thread pool far more.
    for (let done = 0; done < run.length; ) {
      const bytesRead = fsSync.readSync(handle.fd, data, done, run.length - done, run.offset + done);
      if (bytesRead === 0) throw failedPrecondition(`${diskPath} ended at ${run.offset + done} while reading to ${run.offset + run.length}: did the disk shrink?`);
      done += bytesRead;
    }
    return data;
  }
  for (let done = 0; done < run.length; ) {
    const { bytesRead } = await handle.read(data, done, run.length - done, run.offset + done);
    if (bytesRead === 0) throw failedPrecondition(`${diskPath} ended at ${run.offset + done} while reading to ${run.offset + run.length}: did the disk shrink?`);
    done += bytesRead;
  }
  return data;
}

function drained(call: grpc.ServerWritableStream<unknown, DiskData>): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      call.off('drain', done);
      call.off('cancelled', done);
      call.off('close', done);
      resolve();
    };
    call.on('drain', done);
    call.on('cancelled', done);
    call.on('close', done);
  });
}

/** Streams the ranges (already validated) to the call; returns the bytes read from the disk. */
export async function streamRanges(
  call: grpc.ServerWritableStream<unknown, DiskData>,
  diskPath: string,
  ranges: readonly ByteRange__Output[],
  skipZero: boolean,
  onRead: (bytes: number) => void,
): Promise<void> {
  const handle = await fs.open(diskPath, 'r');
  const runs = readRuns(ranges);
  const readNext = (): Promise<{ offset: number; data: Buffer } | undefined> => {
    const next = runs.next();
    if (next.done) return Promise.resolve(undefined);
    const run = next.value;
    return readRun(handle, diskPath, run).then((data) => (onRead(data.length), { offset: run.offset, data }));
  };
  let pending = readNext();
  try {
    for (;;) {
      const run = await pending;
      if (!run || call.cancelled) break;
      await failpoint('read-disk.run-read');
      pending = readNext();
      for (const piece of piecesOf(run.offset, run.data)) {
        if (skipZero && piece.data.equals(zeroPiece.subarray(0, piece.data.length))) continue;
        if (!call.write({ offset: piece.offset, data: piece.data })) await drained(call);
        if (call.cancelled) return;
      }
    }
  } finally {
    // The read ahead may still be running: let it finish (or fail) before the handle closes.
    await pending.catch(() => undefined);
    await handle.close();
  }
}
