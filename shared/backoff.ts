// Waiting between the attempts of something that may fail for a while (a
// peer that is away, a stream cut): the wait doubles from initialMs up to
// maxMs, and jitter takes a random part of each wait off, so that callers that
// failed together (every job calling a restarted peer) do not call again in
// step. A wait never exceeds maxMs, and never falls below (1 - jitterRatio)
// of its step.
//
// Written here rather than taken from a library: the loops that use it end
// their waits at once on an abort signal (a job or a daemon stopping), and
// some start again from initialMs after progress (a stream that reconnected
// and delivered). exponential-backoff offers neither; p-retry offers the
// signal but no reset, and is an ES module this CommonJS build cannot require.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';

export interface BackoffOptions {
  /** The first wait (before jitter). */
  initialMs: number;
  /** The longest wait: the steps grow up to it and stay there. */
  maxMs: number;
  /** Each step is the previous one times this (default 2). */
  multiplier?: number;
  /** Jitter takes up to this part of each step off, at random (default 0.5; 0: no jitter). */
  jitterRatio?: number;
  /** A number in [0, 1): Math.random, or a seeded one in tests. */
  random?: () => number;
}

export const backoffMultiplierDefault = 2;
export const backoffJitterRatioDefault = 0.5;

/** The waits of one retry loop; reset() after progress starts again from initialMs. */
export class Backoff {
  private readonly initialMs: number;
  private readonly maxMs: number;
  private readonly multiplier: number;
  private readonly jitterRatio: number;
  private readonly random: () => number;
  private stepMs: number;

  constructor(options: BackoffOptions) {
    this.initialMs = options.initialMs;
    this.maxMs = options.maxMs;
    this.multiplier = options.multiplier ?? backoffMultiplierDefault;
    this.jitterRatio = options.jitterRatio ?? backoffJitterRatioDefault;
    this.random = options.random ?? Math.random;
    assert.ok(this.initialMs > 0 && this.initialMs <= this.maxMs, `backoff: 0 < initialMs (${this.initialMs}) <= maxMs (${this.maxMs})`);
    assert.ok(this.multiplier >= 1, `backoff: multiplier (${this.multiplier}) >= 1`);
    assert.ok(this.jitterRatio >= 0 && this.jitterRatio <= 1, `backoff: jitterRatio (${this.jitterRatio}) in [0, 1]`);
    this.stepMs = this.initialMs;
  }

  /** The wait before the next attempt, in whole milliseconds; the step after it grows. */
  nextDelayMs(): number {
    const stepMs = this.stepMs;
    this.stepMs = Math.min(this.stepMs * this.multiplier, this.maxMs);
    return Math.round(stepMs * (1 - this.jitterRatio * this.random()));
  }

  /** Starts again from initialMs (the call made progress: the next failure is a new one). */
  reset(): void {
    this.stepMs = this.initialMs;
  }
}

export interface RetryOptions {
  backoff: BackoffOptions;
  /** Whether a failure is worth another attempt; anything else is thrown at once. */
  retryable(error: unknown): boolean;
  /** Told of each failure that is retried, with the wait before the next attempt (to log it, or to show it). */
  onRetry?(error: unknown, delayMs: number): void;
  /** Ends a wait at once (sleep rejects with its AbortError); give this or `wait`. */
  signal?: AbortSignal;
  /** Waits between attempts, instead of a sleep on `signal` (a job's wait, which throws the job's own stop). */
  wait?(delayMs: number): Promise<void>;
}

/** Calls `attempt` until it succeeds or fails with an error `retryable` refuses, waiting between attempts. */
export async function retry<T>(attempt: () => Promise<T>, options: RetryOptions): Promise<T> {
  const backoff = new Backoff(options.backoff);
  const wait = options.wait ?? ((delayMs: number) => sleep(delayMs, undefined, { signal: options.signal }));
  for (;;) {
    try {
      return await attempt();
    } catch (error) {
      if (!options.retryable(error)) throw error;
      const delayMs = backoff.nextDelayMs();
      options.onRetry?.(error, delayMs);
      await wait(delayMs);
    }
  }
}
