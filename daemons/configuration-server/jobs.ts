// Jobs: every change of a machine's protection is a job with steps and
// progress, persisted at each state change (progress at most once a second),
// resumed after a restart, and observable by a stream. A workflow's steps are
// idempotent, so resuming means running the job again from its first step that
// did not succeed.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { DrplaneError, ErrorCode, invalidArgument, notFound } from '../../shared/errors';
import type { Logger } from '../../shared/log';
import type { Job } from '../../generated/drplane/v1/Job';
import type { JobState__Output } from '../../generated/drplane/v1/JobState';
import type { Store } from './store';

/** Progress is written to the database at most this often (state changes always are). */
export const progressPersistIntervalMs = 1_000;
/** The window over which the transfer rate, and so the ETA, is measured. */
export const rateWindowMs = 10_000;
/** How long stop() waits for running workflows to notice it before the database closes. */
export const jobStopGraceMs = 5_000;

export interface StepRecord {
  name: string;
  state: JobState__Output;
  bytesDone: number;
  bytesTotal: number;
  message: string;
}

export interface JobRecord<P = unknown> {
  jobId: string;
  kind: string;
  machineId: string;
  state: JobState__Output;
  steps: StepRecord[];
  bytesDone: number;
  bytesTotal: number;
  bytesSent: number;
  error: string;
  createdTimeMs: number;
  updatedTimeMs: number;
  endedTimeMs: number;
  /** What the workflow needs to resume (chosen servers, sync ids, per-disk progress). */
  params: P;
}

export const jobEnded = (state: JobState__Output) => state === 'JOB_SUCCEEDED' || state === 'JOB_FAILED' || state === 'JOB_STOPPED';

export interface Workflow<P = unknown> {
  run(job: RunningJob<P>): Promise<void>;
  /**
   * Runs inside the transaction that records the end of the job, so the
   * machine's state and the job's change together. `error` is empty on success.
   */
  ended(job: JobRecord<P>, error: string): void;
}

/** Thrown by workflows when the daemon is stopping: the job stays RUNNING and resumes at the next start. */
export class JobInterrupted extends Error {
  override name = 'JobInterrupted';
}

type Listener = (job: JobRecord) => void;

export class Jobs {
  private readonly workflows = new Map<string, Workflow<never>>();
  private readonly running = new Map<string, { job: RunningJob<unknown>; done: Promise<void> }>();
  private readonly listeners = new Map<string, Set<Listener>>();
  private readonly abort = new AbortController();

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
  ) {}

  register<P>(kind: string, workflow: Workflow<P>): void {
    assert.ok(!this.workflows.has(kind), `workflow ${kind} registered twice`);
    this.workflows.set(kind, workflow as Workflow<never>);
  }

  /**
   * Records a new job (QUEUED) together with the caller's writes, in one
   * transaction; call start() after it returns. Call inside store.write().
   */
  create<P>(kind: string, machineId: string, steps: { name: string; bytesTotal?: number }[], params: P): JobRecord<P> {
    assert.ok(this.workflows.has(kind), `no workflow for job kind ${kind}`);
    const now = Date.now();
    const record: JobRecord<P> = {
      jobId: `job-${this.store.next('job')}`,
      kind,
      machineId,
      state: 'JOB_QUEUED',
      steps: steps.map((step) => ({ name: step.name, state: 'JOB_QUEUED', bytesDone: 0, bytesTotal: step.bytesTotal ?? 0, message: '' })),
      bytesDone: 0,
      bytesTotal: 0,
      bytesSent: 0,
      error: '',
      createdTimeMs: now,
      updatedTimeMs: now,
      endedTimeMs: 0,
      params,
    };
    sumSteps(record);
    this.store.jobs.putSync(record.jobId, record as JobRecord);
    return record;
  }

  /** Runs the job's workflow in the background. */
  start(record: JobRecord): void {
    if (this.running.has(record.jobId) || this.abort.signal.aborted) return;
    const workflow = this.workflows.get(record.kind);
    if (!workflow) {
      this.log.error({ jobId: record.jobId, kind: record.kind }, 'no workflow for this job kind: it stays as it is');
      return;
    }
    const job = new RunningJob(record, this.store, this.abort.signal, (changed) => this.notify(changed));
    const done = this.drive(job, workflow as Workflow<unknown>).finally(() => this.running.delete(record.jobId));
    this.running.set(record.jobId, { job, done });
  }

  /** Starts again every job that was queued or running when the daemon stopped. */
  resumeAll(): number {
    let resumed = 0;
    for (const { value } of this.store.jobs.getRange()) {
      if (jobEnded(value.state)) continue;
      this.log.info({ jobId: value.jobId, kind: value.kind, machineId: value.machineId }, 'resuming job');
      this.start(value);
      resumed++;
    }
    return resumed;
  }

  get(jobId: string): JobRecord {
    if (!jobId) throw invalidArgument('job_id: required');
    const record = this.running.get(jobId)?.job.record ?? this.store.jobs.get(jobId);
    if (!record) throw notFound(`no job ${JSON.stringify(jobId)}: drctl jobs lists them`);
    return record;
  }

  /** Every job, oldest first; of one machine when machineId is given. */
  list(machineId?: string): JobRecord[] {
    const records: JobRecord[] = [];
    for (const { value } of this.store.jobs.getRange()) {
      if (machineId && value.machineId !== machineId) continue;
      records.push(this.running.get(value.jobId)?.job.record ?? value);
    }
    return records.sort((a, b) => a.createdTimeMs - b.createdTimeMs || jobNumber(a.jobId) - jobNumber(b.jobId));
  }

  /** Calls `listener` at every change of the job until the returned function is called. */
  watch(jobId: string, listener: Listener): () => void {
    let set = this.listeners.get(jobId);
    if (!set) this.listeners.set(jobId, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0 && this.listeners.get(jobId) === set) this.listeners.delete(jobId);
    };
  }

  toProto(record: JobRecord): Job {
    const running = this.running.get(record.jobId)?.job;
    const percent = record.state === 'JOB_SUCCEEDED' ? 100 : record.bytesTotal > 0 ? Math.min(100, (100 * record.bytesDone) / record.bytesTotal) : 0;
    return {
      jobId: record.jobId,
      kind: record.kind,
      machineId: record.machineId,
      state: record.state,
      steps: record.steps.map((step) => ({ ...step })),
      bytesDone: record.bytesDone,
      bytesTotal: record.bytesTotal,
      bytesSent: record.bytesSent,
      percent: Math.round(percent * 10) / 10,
      etaMs: running && !jobEnded(record.state) ? running.etaMs() : 0,
      error: record.error,
      createdTimeMs: record.createdTimeMs,
      updatedTimeMs: record.updatedTimeMs,
      endedTimeMs: record.endedTimeMs,
    };
  }

  /** Interrupts the running workflows (they stay RUNNING and resume at the next start) and saves their progress. */
  async stop(): Promise<void> {
    this.abort.abort();
    const all = [...this.running.values()];
    await Promise.race([Promise.allSettled(all.map((entry) => entry.done)), sleep(jobStopGraceMs, undefined, { ref: false })]);
    for (const { job } of all) {
      try {
        job.save();
      } catch (error) {
        this.log.warn({ err: error, jobId: job.record.jobId }, 'could not save the progress of an interrupted job');
      }
    }
  }

  private async drive(job: RunningJob<unknown>, workflow: Workflow<unknown>): Promise<void> {
    const { record } = job;
    const log = this.log.child({ jobId: record.jobId, kind: record.kind, machineId: record.machineId });
    if (record.state === 'JOB_QUEUED') job.save(() => (record.state = 'JOB_RUNNING'));
    log.info('job running');
    let error = '';
    try {
      await workflow.run(job);
    } catch (thrown) {
      if (thrown instanceof JobInterrupted || this.abort.signal.aborted) {
        log.info('job interrupted: it resumes when the configuration server starts again');
        return;
      }
      error = thrown instanceof Error ? thrown.message : String(thrown);
      if (!(thrown instanceof DrplaneError) || thrown.code === ErrorCode.Internal) log.error({ err: thrown }, 'job failed');
    }
    const now = Date.now();
    job.save(() => {
      record.state = error ? 'JOB_FAILED' : 'JOB_SUCCEEDED';
      record.error = error;
      record.endedTimeMs = now;
      for (const step of record.steps) {
        if (step.state === 'JOB_RUNNING' || (step.state === 'JOB_QUEUED' && error)) {
          step.state = error ? (step.state === 'JOB_RUNNING' ? 'JOB_FAILED' : 'JOB_STOPPED') : 'JOB_SUCCEEDED';
          if (error && step.state === 'JOB_FAILED') step.message = error;
        }
      }
      workflow.ended(record, error);
    });
    if (error) log.warn({ error }, 'job failed');
    else log.info({ durationMs: now - record.createdTimeMs, bytes: record.bytesTotal, bytesSent: record.bytesSent }, 'job succeeded');
  }

  private notify(record: JobRecord): void {
    for (const listener of [...(this.listeners.get(record.jobId) ?? [])]) listener(record);
  }
}

/** The handle a workflow uses to report its steps and progress. */
export class RunningJob<P = unknown> {
  private lastPersistedMs = 0;
  private readonly samples: { timeMs: number; bytesDone: number }[] = [];

  constructor(
    readonly record: JobRecord<P>,
    private readonly store: Store,
    readonly signal: AbortSignal,
    private readonly changed: (record: JobRecord) => void,
  ) {}

  get params(): P {
    return this.record.params;
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

  /** Waits, or throws JobInterrupted when the daemon stops meanwhile. */
  async wait(ms: number): Promise<void> {
    try {
      await sleep(ms, undefined, { signal: this.signal });
    } catch {
      throw new JobInterrupted('the configuration server is stopping');
    }
  }

  throwIfInterrupted(): void {
    if (this.signal.aborted) throw new JobInterrupted('the configuration server is stopping');
  }

  private sample(): void {
    const now = Date.now();
    this.samples.push({ timeMs: now, bytesDone: this.record.bytesDone });
    while (this.samples.length > 2 && now - this.samples[0]!.timeMs > rateWindowMs) this.samples.shift();
  }
}

function sumSteps(record: JobRecord<unknown>): void {
  record.bytesDone = record.steps.reduce((sum, step) => sum + step.bytesDone, 0);
  record.bytesTotal = record.steps.reduce((sum, step) => sum + step.bytesTotal, 0);
}

function jobNumber(jobId: string): number {
  return Number(jobId.slice(jobId.lastIndexOf('-') + 1)) || 0;
}
