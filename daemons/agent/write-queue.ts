// The order of one source disk's writes (write-through.ts). Two kinds of task:
//   - exclusive (run, hold): WriteStream writes, markers, barriers, a
//     capture's start and stop, retire and close. It runs alone: after every
//     task queued before it has finished, and before any task queued after it
//     starts. So a marker or a new capture falls between whole writes.
//   - range (runRange): an NBD request, over the whole blocks it touches. It
//     runs once every exclusive task queued before it has finished and every
//     range task queued before it whose blocks overlap its own has finished
//     (a range lock); range tasks on distinct blocks run at the same time, at
//     most `rangeTasksInFlightMax` of them.
// Failed tasks count as finished. Tasks that overlap keep the order they were
// queued in, so a later write over the same blocks lands (and is recorded)
// after an earlier one; writes on distinct blocks commute.
import assert from 'node:assert/strict';

interface Entry {
  exclusive: boolean;
  /** The byte range a range task covers, [start, end); an empty one overlaps nothing. */
  start: number;
  end: number;
  finished: Promise<void>;
}

export class WriteQueue {
  /** Tasks queued and not finished, in the order they were queued. */
  private readonly pending = new Set<Entry>();
  private rangeTasksRunning = 0;
  private readonly slotWaiters: (() => void)[] = [];

  constructor(readonly rangeTasksInFlightMax: number) {
    assert.ok(rangeTasksInFlightMax >= 1);
  }

  /** Runs `task` alone, after every task queued before it (failed ones too). */
  async run<T>(task: () => Promise<T> | T): Promise<T> {
    const { ready, finish } = this.admit(true, 0, 0);
    try {
      if (ready) await ready;
      return await task();
    } finally {
      finish();
    }
  }

  /**
   * Runs `task` over the bytes [start, end) (whole blocks: the caller rounds
   * out), after the exclusive tasks and the overlapping range tasks queued
   * before it, beside other range tasks. start === end: a task that touches
   * no blocks (a flush) and waits only for exclusive tasks.
   */
  async runRange<T>(start: number, end: number, task: () => Promise<T> | T): Promise<T> {
    assert.ok(start <= end);
    const { ready, finish } = this.admit(false, start, end);
    let slot = false;
    try {
      // Nothing to wait for (the common case of a client at queue depth 1): no extra turns of the event loop.
      if (ready) await ready;
      if (this.rangeTasksRunning < this.rangeTasksInFlightMax && this.slotWaiters.length === 0) this.rangeTasksRunning++;
      else await new Promise<void>((resolve) => this.slotWaiters.push(resolve)); // the finishing task hands its slot over
      slot = true;
      return await task();
    } finally {
      if (slot) this.releaseSlot();
      finish();
    }
  }

  /**
   * Waits for every task queued so far, then keeps later ones waiting until
   * the returned release is called (once; more calls do nothing).
   */
  async hold(): Promise<() => void> {
    const { ready, finish } = this.admit(true, 0, 0);
    if (ready) await ready;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      finish();
    };
  }

  /** Queues an entry now (so tasks queued later see it) and says what it waits for (undefined: nothing). */
  private admit(exclusive: boolean, start: number, end: number): { ready: Promise<void> | undefined; finish: () => void } {
    const before: Promise<void>[] = [];
    for (const entry of this.pending) {
      if (exclusive || entry.exclusive || (entry.start < end && start < entry.end)) before.push(entry.finished);
    }
    let finish!: () => void;
    const entry: Entry = { exclusive, start, end, finished: new Promise<void>((resolve) => (finish = resolve)) };
    this.pending.add(entry);
    const ready = before.length === 0 ? undefined : before.length === 1 ? before[0] : Promise.all(before).then(() => undefined);
    return {
      ready,
      finish: () => {
        this.pending.delete(entry);
        finish();
      },
    };
  }

  /** A range task ended: its slot goes to the first task waiting for one, or is freed. */
  private releaseSlot(): void {
    const next = this.slotWaiters.shift();
    if (next) next();
    else this.rangeTasksRunning--;
  }
}
