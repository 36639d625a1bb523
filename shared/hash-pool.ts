// The piscina pool that runs shared/hash-worker.ts. Pool size is spelled out
// (not piscina's default). Workers start when the first task comes and stay up
// for a minute of idleness: each holds about 14 MiB (a V8 isolate, its read
// buffers), and on the data path the pool is the exception now (the agent
// hashes what it reads on its main thread; the process server hashes only an
// older agent's pieces and a scan's first pass), so a daemon at rest or in a
// full sync does not pay for threads it does not use.
import os from 'node:os';
import path from 'node:path';
import { Piscina } from 'piscina';
import { limitExceeded } from './errors';
import type { HashFileRangeTask, PrepareExtentsResult, PrepareExtentsTask } from './hash-worker';
import { blockBytes } from './limits';
import { units } from './limits';

/** Size of one hashing task when a whole file is hashed (large, so dispatch costs little). */
export const hashTaskBytes = 64 * units.MiB;

/** How long an idle worker stays up: starting one (about 50 ms) costs more than a task, so a busy minute keeps them. */
const hashThreadIdleMs = 60_000;

export class HashPool {
  readonly pool: Piscina;
  /** Tasks handed to piscina and not yet finished: at most the threads plus piscina's queue. */
  private submitted = 0;
  private readonly submittedMax: number;
  /** Callers waiting for room, first come first served. */
  private readonly waiting: (() => void)[] = [];

  constructor(threads = Math.max(1, Math.min(os.availableParallelism(), 4))) {
    const maxQueue = threads * 8;
    this.pool = new Piscina({
      filename: path.join(__dirname, 'hash-worker.js'),
      minThreads: 0,
      maxThreads: threads,
      idleTimeout: hashThreadIdleMs,
      // A queue bound keeps memory bounded; run() waits for room instead of letting piscina reject.
      maxQueue,
    });
    this.submittedMax = threads + maxQueue;
  }

  /** Runs a task once piscina has room: a full queue makes callers wait, never fail ("Task queue is at limit"). */
  private async run<T>(task: HashFileRangeTask | PrepareExtentsTask, transferList?: ArrayBuffer[]): Promise<T> {
    // A woken waiter checks again: a caller that arrived meanwhile may have taken the place.
    while (this.submitted >= this.submittedMax) await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.submitted++;
    try {
      return (await this.pool.run(task, transferList ? { transferList } : undefined)) as T;
    } catch (error) {
      // V8 reserves about 10 GiB of address space for each WebAssembly memory (the hasher's, in each thread).
      if (error instanceof Error && /^WebAssembly\.\w+\(\): Out of memory/.test(error.message)) {
        throw limitExceeded(`a hashing thread cannot reserve the address space of its WebAssembly hasher (${error.message}): this process's address-space limit (LimitAS= of the unit, or ulimit -v) is too low for it; raise or remove the limit`);
      }
      throw error;
    } finally {
      this.submitted--;
      this.waiting.shift()?.();
    }
  }

  get threads(): number {
    return this.pool.options.maxThreads;
  }

  /** Block hashes of a whole file range, computed in parallel tasks that read the file themselves. */
  async hashFile(filePath: string, offset: number, length: number): Promise<Buffer> {
    const tasks: Promise<Uint8Array>[] = [];
    for (let start = 0; start < length; start += hashTaskBytes) {
      const task: HashFileRangeTask = { kind: 'hash-file-range', path: filePath, offset: offset + start, length: Math.min(hashTaskBytes, length - start) };
      tasks.push(this.run<Uint8Array>(task));
    }
    const parts = await Promise.all(tasks);
    return Buffer.concat(parts.map((part) => Buffer.from(part.buffer, part.byteOffset, part.byteLength)));
  }

  /**
   * Hashes, drops zero blocks and encodes a batch of pieces in one task. With
   * keepZero, zero blocks stay in the extents (hash 0): a delta sync must send
   * a block that became zero on the source.
   */
  async prepareExtents(pieces: { offset: number; data: Buffer }[], compress: boolean, keepZero = false): Promise<PrepareExtentsResult> {
    // gRPC hands us slices of larger buffers: copy them into one buffer of our own
    // and move it to the worker (one transfer, however many small pieces a delta has).
    const total = pieces.reduce((sum, piece) => sum + piece.data.length, 0);
    const buffer = new Uint8Array(total);
    let position = 0;
    const owned = pieces.map((piece) => {
      if (piece.data.length % blockBytes !== 0) throw new RangeError(`piece at ${piece.offset} is not whole blocks`);
      buffer.set(piece.data, position);
      position += piece.data.length;
      return { offset: piece.offset, data: buffer.subarray(position - piece.data.length, position) };
    });
    const transfer = [buffer.buffer];
    const task: PrepareExtentsTask = { kind: 'prepare-extents', pieces: owned, compress, keepZero };
    return this.run<PrepareExtentsResult>(task, transfer);
  }

  async close(): Promise<void> {
    await this.pool.destroy();
  }
}
