// The piscina pool that runs shared/hash-worker.ts. Pool size is spelled out
// (not piscina's default), and idle workers stay up: starting one costs more
// than a task.
import os from 'node:os';
import path from 'node:path';
import { Piscina } from 'piscina';
import type { HashFileRangeTask, PrepareExtentsResult, PrepareExtentsTask } from './hash-worker';
import { blockBytes } from './limits';
import { units } from './limits';

/** Size of one hashing task when a whole file is hashed (large, so dispatch costs little). */
export const hashTaskBytes = 64 * units.MiB;

export class HashPool {
  readonly pool: Piscina;

  constructor(threads = Math.max(1, Math.min(os.availableParallelism(), 4))) {
    this.pool = new Piscina({
      filename: path.join(__dirname, 'hash-worker.js'),
      minThreads: threads,
      maxThreads: threads,
      idleTimeout: 60_000,
      // A queue bound keeps memory bounded: callers await run() before adding more.
      maxQueue: threads * 8,
    });
  }

  get threads(): number {
    return this.pool.options.maxThreads;
  }

  /** Block hashes of a whole file range, computed in parallel tasks that read the file themselves. */
  async hashFile(filePath: string, offset: number, length: number): Promise<Buffer> {
    const tasks: Promise<Uint8Array>[] = [];
    for (let start = 0; start < length; start += hashTaskBytes) {
      const task: HashFileRangeTask = { kind: 'hash-file-range', path: filePath, offset: offset + start, length: Math.min(hashTaskBytes, length - start) };
      tasks.push(this.pool.run(task));
    }
    const parts = await Promise.all(tasks);
    return Buffer.concat(parts.map((part) => Buffer.from(part.buffer, part.byteOffset, part.byteLength)));
  }

  /** Hashes, drops zero blocks and encodes a batch of pieces in one task. */
  async prepareExtents(pieces: { offset: number; data: Buffer }[], compress: boolean): Promise<PrepareExtentsResult> {
    const transfer: ArrayBuffer[] = [];
    const owned = pieces.map((piece) => {
      if (piece.data.length % blockBytes !== 0) throw new RangeError(`piece at ${piece.offset} is not whole blocks`);
      // gRPC hands us slices of larger buffers: copy into a buffer of our own and move it to the worker.
      const copy = new Uint8Array(piece.data.length);
      copy.set(piece.data);
      transfer.push(copy.buffer);
      return { offset: piece.offset, data: copy };
    });
    const task: PrepareExtentsTask = { kind: 'prepare-extents', pieces: owned, compress };
    return this.pool.run(task, { transferList: transfer });
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
