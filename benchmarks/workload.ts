// A write workload at a fixed rate: random block-aligned writes of 4-64 KiB,
// paced by a token bucket over bytes, with a bounded number in flight. The same
// generator drives drplane (through the agent's write-through API) and the peer
// (plain writes to the file while rsync copies it in a loop).
import { seededRandom } from '../test/helpers/disks';

export const writeBytesMin = 4 * 1024;
export const writeBytesMax = 64 * 1024;
/** Writes in flight at once: enough to keep a pipelined stream busy. */
export const writesInFlightMax = 32;
/** The bucket refills in steps of this length. */
const pacingStepMs = 5;

export interface WorkloadResult {
  writes: number;
  bytes: number;
  seconds: number;
  /** Bytes per second actually written. */
  achievedBytesPerSecond: number;
  /** Latency of each write from issue to answer, in ms: p50 and p99. */
  latencyP50Ms: number;
  latencyP99Ms: number;
}

export type WriteFunction = (offset: number, data: Buffer) => Promise<void>;

/** Runs writes of random size and place at `bytesPerSecond` for `seconds`. */
export async function runWorkload(write: WriteFunction, options: { diskBytes: number; bytesPerSecond: number; seconds: number; seed: number }): Promise<WorkloadResult> {
  const random = seededRandom(options.seed);
  // A pool of random buffers reused for the data: generating random bytes would cost more than writing them.
  const pool = Buffer.alloc(16 * 1024 * 1024);
  for (let index = 0; index < pool.length; index += 4) pool.writeUInt32LE((random() * 2 ** 32) >>> 0, index);
  const blocks = options.diskBytes / 4096;
  const started = performance.now();
  const endAt = started + options.seconds * 1000;
  let issuedBytes = 0;
  let writes = 0;
  const latencies: number[] = [];
  // A count and one waiter, not a set of promises raced on every write: with 32 in flight, Promise.race cost
  // this process (which shares the cores with the daemons it measures) a reaction per write in flight per write.
  let inFlight = 0;
  let failure: { error: unknown } | undefined;
  let wake: (() => void) | undefined;
  const settled = () => {
    inFlight--;
    const waiting = wake;
    wake = undefined;
    waiting?.();
  };
  const anySettled = () => new Promise<void>((resolve) => (wake = resolve));
  while (performance.now() < endAt) {
    if (failure) throw failure.error;
    const allowedBytes = ((performance.now() - started) / 1000) * options.bytesPerSecond;
    if (issuedBytes >= allowedBytes || inFlight >= writesInFlightMax) {
      if (inFlight >= writesInFlightMax) await anySettled();
      else await new Promise((resolve) => setTimeout(resolve, pacingStepMs));
      continue;
    }
    const length = (1 + Math.floor(random() * (writeBytesMax / writeBytesMin))) * writeBytesMin;
    const offset = Math.floor(random() * (blocks - length / 4096 + 1)) * 4096;
    const from = Math.floor(random() * ((pool.length - length) / 4096)) * 4096;
    const data = pool.subarray(from, from + length);
    issuedBytes += length;
    writes++;
    const issued = performance.now();
    inFlight++;
    write(offset, data).then(
      () => {
        latencies.push(performance.now() - issued);
        settled();
      },
      (error: unknown) => {
        failure ??= { error };
        settled();
      },
    );
  }
  while (inFlight > 0) await anySettled();
  if (failure) throw failure.error;
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    writes,
    bytes: issuedBytes,
    seconds,
    achievedBytesPerSecond: issuedBytes / seconds,
    latencyP50Ms: percentile(latencies, 0.5),
    latencyP99Ms: percentile(latencies, 0.99),
  };
}

export function percentile(sorted: number[], share: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(share * sorted.length))];
}
