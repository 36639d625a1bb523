// Bytes per second as a moving average over the last few seconds (status of a
// replication session: receive and apply rates, and the ETA they give).

/** The window of the moving average. */
export const throughputWindowMs = 10_000;
const bucketMs = 1_000;
const buckets = throughputWindowMs / bucketMs;

export class Throughput {
  /** Bytes per second-long bucket, indexed by the bucket's second modulo the window. */
  private readonly counts = new Array<number>(buckets).fill(0);
  private readonly seconds = new Array<number>(buckets).fill(-1);
  private readonly startedMs: number;

  constructor(private readonly now: () => number = Date.now) {
    this.startedMs = now();
  }

  add(bytes: number): void {
    const second = Math.floor(this.now() / bucketMs);
    const index = second % buckets;
    if (this.seconds[index] !== second) {
      this.seconds[index] = second;
      this.counts[index] = 0;
    }
    this.counts[index] += bytes;
  }

  /** Bytes per second over the window (or over the time since the start, when shorter). */
  perSecond(): number {
    const nowMs = this.now();
    const second = Math.floor(nowMs / bucketMs);
    let total = 0;
    for (let index = 0; index < buckets; index++) {
      if (this.seconds[index] > second - buckets) total += this.counts[index];
    }
    const spanMs = Math.min(throughputWindowMs, Math.max(bucketMs, nowMs - this.startedMs));
    return (total * 1000) / spanMs;
  }
}
