// The handle a workflow runs its job through: steps that are skipped when
// they already succeeded (a resumed or restarted job), progress written at
// most once a second, and waits that end as soon as the operator or the
// daemon stops the job (jobs.ts runs the handles).
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import type { JobState__Output } from '../../../generated/drplane/v1/JobState';
import type { JobRecord, StepRecord } from '../store/records';
import type { Store } from '../store/store';

/** Progress is written to the database at most this often (state changes always are). */
export const progressPersistIntervalMs = 1_000;
/** The window over which the transfer rate, and so the ETA, is measured. */
export const rateWindowMs = 10_000;
/** The error of a job the operator stopped. */
export const jobStoppedError = 'stopped by the operator (drctl job stop)';

export const jobEnded = (state: JobState__Output) => state === 'JOB_SUCCEEDED' || state === 'JOB_FAILED' || state === 'JOB_STOPPED';

/** Thrown by workflows when the daemon is stopping: the job stays RUNNING and resumes at the next start. */
export class JobInterrupted extends Error {
  override name = 'JobInterrupted';
}

/** Thrown by workflows when the operator stopped the job: it ends JOB_STOPPED. */
export class JobStopped extends Error {
  override name = 'JobStopped';
}

/** The handle a workflow uses to report its steps and progress. */
export class RunningJob<P = unknown> {
  /** Aborted when the daemon stops or the operator stops this job. */
  readonly signal: AbortSignal;
  private readonly stopController = new AbortController();
  private lastPersistedMs = 0;
  private readonly samples: { timeMs: number; bytesDone: number }[] = [];

  constructor(
    readonly record: JobRecord<P>,
    private readonly store: Store,
    daemonSignal: AbortSignal,
    private readonly changed: (record: JobRecord) => void,
  ) {
    this.signal = AbortSignal.any([daemonSignal, this.stopController.signal]);
  }

  get params(): P {
    return this.record.params;
  }

  /** The operator asked this job to stop. */
  get stopRequested(): boolean {
    return this.stopController.signal.aborted;
  }

  requestStop(): void {
    this.stopController.abort();
  }

  step(name: string): StepRecord {
    const step = this.record.steps.find((candidate) => candidate.name === name);
    assert.ok(step, `job ${this.record.jobId} has no step ${name}`);
    return step;
  }

  /** Runs a step unless it already succeeded (before a restart); records its start and end. */
  async runStep(name: string, action: (step: StepRecord) => Promise<void>): Promise<void> {
    const step = this.step(name);
    if (step.state === 'JOB_SUCCEEDED') return;
    this.throwIfInterrupted();
    this.save(() => {
      step.state = 'JOB_RUNNING';
      step.message = '';
    });
    await action(step);
    this.throwIfInterrupted();
    this.save(() => {
      step.state = 'JOB_SUCCEEDED';
      step.bytesDone = step.bytesTotal;
    });
  }

  /** Updates a step's progress; written to the database at most once a second, sent to watchers at once. */
  progress(step: StepRecord, update: { bytesDone?: number; bytesTotal?: number; bytesSent?: number; message?: string }): void {
    if (update.bytesDone !== undefined) step.bytesDone = update.bytesDone;
    if (update.bytesTotal !== undefined) step.bytesTotal = update.bytesTotal;
    if (update.bytesSent !== undefined) this.record.bytesSent = update.bytesSent;
    if (update.message !== undefined) step.message = update.message;
    sumSteps(this.record);
    this.record.updatedTimeMs = Date.now();
    this.sample();
    if (this.record.updatedTimeMs - this.lastPersistedMs >= progressPersistIntervalMs) this.save();
    else this.changed(this.record as JobRecord);
  }

  /** Applies `change` (and any other writes in it) and persists the job, in one transaction. */
  save(change?: () => void): void {
    this.store.write(() => {
      change?.();
      sumSteps(this.record);
      this.record.updatedTimeMs = Date.now();
      this.store.jobs.putSync(this.record.jobId, this.record as JobRecord);
    });
    this.lastPersistedMs = this.record.updatedTimeMs;
    this.changed(this.record as JobRecord);
  }

  /** Sets Job.detail (what the job chose, or why it waits). */
  setDetail(detail: string): void {
    if (this.record.detail !== detail) this.save(() => (this.record.detail = detail));
  }

  /** Milliseconds left at the rate of the last few seconds; 0 when unknown. */
  etaMs(): number {
    if (this.samples.length < 2) return 0;
    const first = this.samples[0]!;
    const last = this.samples[this.samples.length - 1]!;
    const elapsedMs = last.timeMs - first.timeMs;
    const bytes = last.bytesDone - first.bytesDone;
    if (elapsedMs <= 0 || bytes <= 0) return 0;
    const remaining = Math.max(0, this.record.bytesTotal - this.record.bytesDone);
    return Math.round((remaining * elapsedMs) / bytes);
  }

  /** Waits, or throws JobStopped / JobInterrupted when the job or the daemon stops meanwhile. */
  async wait(ms: number): Promise<void> {
    try {
      await sleep(ms, undefined, { signal: this.signal });
    } catch {
      throw this.interruption();
    }
  }

  /**
   * Resolves with `work`, or throws JobStopped / JobInterrupted as soon as the
   * job or the daemon stops: a long peer call (a materialise, a hook) does not
   * hold a stop. The call itself runs on; every step is idempotent.
   */
  async abortable<T>(work: Promise<T>): Promise<T> {
    this.throwIfInterrupted();
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<never>((_resolve, reject) => {
      onAbort = () => reject(this.interruption());
      this.signal.addEventListener('abort', onAbort, { once: true });
    });
    work.catch(() => {});
    try {
      return await Promise.race([work, aborted]);
    } finally {
      this.signal.removeEventListener('abort', onAbort!);
    }
  }

  throwIfInterrupted(): void {
    if (this.signal.aborted) throw this.interruption();
  }

  /** The error for an aborted signal: the operator's stop wins over the daemon's. */
  interruption(): Error {
    return this.stopRequested ? new JobStopped(jobStoppedError) : new JobInterrupted('the configuration server is stopping');
  }

  private sample(): void {
    const now = Date.now();
    this.samples.push({ timeMs: now, bytesDone: this.record.bytesDone });
    while (this.samples.length > 2 && now - this.samples[0]!.timeMs > rateWindowMs) this.samples.shift();
  }
}

/** Records the end of a job: its state, error, and the state of each step that had not succeeded. */
export function finish(record: JobRecord, error: string, stopped: boolean, now = Date.now()): void {
  record.state = stopped ? 'JOB_STOPPED' : error ? 'JOB_FAILED' : 'JOB_SUCCEEDED';
  record.error = error;
  record.endedTimeMs = now;
  record.slotHeld = false;
  for (const step of record.steps) {
    if (step.state === 'JOB_RUNNING') {
      step.state = stopped ? 'JOB_STOPPED' : error ? 'JOB_FAILED' : 'JOB_SUCCEEDED';
      if (error) step.message = stopped ? `${step.message ? `${step.message}; ` : ''}${jobStoppedError}` : error;
    } else if (step.state === 'JOB_QUEUED' && error) step.state = 'JOB_STOPPED';
  }
  sumSteps(record);
}

export function sumSteps(record: JobRecord<unknown>): void {
  record.bytesDone = record.steps.reduce((sum, step) => sum + step.bytesDone, 0);
  record.bytesTotal = record.steps.reduce((sum, step) => sum + step.bytesTotal, 0);
}
