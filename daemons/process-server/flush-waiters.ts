// The FlushReplication calls a replication session has waiting: each is
// served by a recovery point (one that covers a change record, or the newest
// once everything up to a record is applied) or ends at its timeout.
import { deadlineExceeded, failedPrecondition } from '../../shared/errors';
import type { RecoveryPoint__Output } from '../../generated/drplane/v1/RecoveryPoint';

export interface FlushWaiter {
  /** The capture whose point serves the flush ('' : the next capture the session starts). */
  captureId: string;
  /** covering: the first point at or after `target`. newest: the newest point once every record up to `target` is applied. */
  kind: 'covering' | 'newest';
  /** A change record; +Infinity while a scan flush waits for the agent's pass to say which. */
  target: number;
  resolve(point: RecoveryPoint__Output): void;
  reject(error: unknown): void;
}

/** Where the session stands, as settle() reads it. */
export interface FlushFacts {
  /** A sync runs: no point can serve a flush until it ends. */
  syncRunning: boolean;
  captureId: string;
  latestPoint: RecoveryPoint__Output | undefined;
  /** Records before it were overwritten by the sync they raced with: no point before it is consistent. */
  consistentFrom: number;
  appliedChangeSequence: number;
}

export class FlushWaiters {
  private readonly waiters = new Set<FlushWaiter>();

  constructor(private readonly diskId: string) {}

  /** Registers a waiter, rejected with DEADLINE_EXCEEDED (timeoutMessage) unless settled within timeoutMs. */
  add(fields: Pick<FlushWaiter, 'captureId' | 'kind' | 'target'>, timeoutMs: number, timeoutMessage: (waiter: FlushWaiter) => string): { waiter: FlushWaiter; promise: Promise<RecoveryPoint__Output> } {
    let waiter!: FlushWaiter;
    const promise = new Promise<RecoveryPoint__Output>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(waiter);
        reject(deadlineExceeded(timeoutMessage(waiter)));
      }, Math.max(1, timeoutMs));
      waiter = {
        ...fields,
        resolve: (point) => (clearTimeout(timer), resolve(point)),
        reject: (error) => (clearTimeout(timer), reject(error)),
      };
    });
    this.waiters.add(waiter);
    return { waiter, promise };
  }

  has(waiter: FlushWaiter): boolean {
    return this.waiters.has(waiter);
  }

  /** The record a waiting flush needs a point at (-1: none waits). */
  target(consistentFrom: number): number {
    let target = -1;
    for (const waiter of this.waiters) target = Math.max(target, waiter.target, consistentFrom - 1);
    return target;
  }

  /** A new capture: every waiter is served by its first point (its first pass or sync started after the flush). */
  followCapture(captureId: string): void {
    for (const waiter of this.waiters) {
      waiter.captureId = captureId;
      waiter.kind = 'covering';
      waiter.target = 0;
    }
  }

  /** Resolves the waiters the session's state now serves. */
  settle(facts: FlushFacts): void {
    if (facts.syncRunning) return;
    const { captureId, latestPoint: point } = facts;
    for (const waiter of [...this.waiters]) {
      if (waiter.captureId !== captureId) continue;
      const need = Math.max(waiter.target, facts.consistentFrom - 1);
      if (waiter.kind === 'covering') {
        if (!point || point.captureId !== captureId || point.changeSequence < need) continue;
        this.waiters.delete(waiter);
        waiter.resolve(point);
        continue;
      }
      if (facts.appliedChangeSequence < need) continue;
      this.waiters.delete(waiter);
      if (point) waiter.resolve(point);
      else waiter.reject(failedPrecondition(`disk ${this.diskId}: everything received is applied, but scan capture has made no point yet (a point needs a quiet pass or a snapshot)`));
    }
  }

  /** The session stops: every waiter gets `error`. */
  rejectAll(error: unknown): void {
    for (const waiter of this.waiters) waiter.reject(error);
    this.waiters.clear();
  }
}
