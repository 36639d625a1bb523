// Jobs: every change of a machine's protection is a job with steps and
// progress, persisted at each state change (progress at most once a second),
// resumed after a restart, and observable by a stream. A workflow's steps are
// idempotent, so resuming means running the job again from its first step that
// did not succeed. An operator may stop a job (it ends JOB_STOPPED at its next
// await) and restart a failed or stopped one: it continues from the step it
// ended in, never from the first.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument, notFound } from '../../../shared/errors';
import type { Logger } from '../../../shared/log';
import { endedJobAgeMsDefault, endedJobsKeptMax } from '../../../shared/limits';
import type { Job } from '../../../generated/drplane/v1/Job';
import type { JobState__Output } from '../../../generated/drplane/v1/JobState';
import type { Store } from '../store/store';
import type { JobRecord } from '../store/records';
import { finish, jobEnded, JobInterrupted, jobStoppedError, RunningJob, sumSteps } from './running-job';

/** How long stop() waits for running workflows to notice it before the database closes. */
export const jobStopGraceMs = 5_000;
/** How long StopJob waits for the job to reach its next safe point before it answers (the job stops regardless). */
export const stopJobWaitMs = 5_000;
/** Ended jobs are pruned this often (and after each job ends, and at start-up). */
export const jobsPruneIntervalMs = 60_000;

/**
 * A limited number of jobs (of one or more kinds sharing `name`) run at once;
 * the others wait in JOB_QUEUED, oldest first, with the reason in `detail`.
 * `step` is the job's first step: it succeeds when the job gets its slot.
 */
export interface JobSlot {
  name: string;
  max: number;
  step: string;
  /** Completes "waiting for a <label> slot". */
  label: string;
}

export interface Workflow<P = unknown> {
  run(job: RunningJob<P>): Promise<void>;
  /**
   * Runs inside the transaction that records the end of the job, so the
   * machine's state and the job's change together. `error` is empty on
   * success; `stopped` tells an operator's stop (error says so) from a failure.
   */
  ended(job: JobRecord<P>, error: string, stopped: boolean): void;
  /**
   * Runs inside the transaction that restarts a failed or stopped job (its
   * machine, if any, already names it as its active job): the machine's state
   * for the steps still to run.
   */
  restarted?(job: JobRecord<P>): void;
  slot?: JobSlot;
}

type Listener = (job: JobRecord) => void;

interface SlotWaiter {
  job: RunningJob<unknown>;
  slot: JobSlot;
  admit(): void;
}

export class Jobs {
  private readonly workflows = new Map<string, Workflow<never>>();
  private readonly running = new Map<string, { job: RunningJob<unknown>; done: Promise<void> }>();
  private readonly listeners = new Map<string, Set<Listener>>();
  private readonly abort = new AbortController();
  private readonly waiters = new Map<string, SlotWaiter>();
  /** While resumeAll starts the jobs, slots are handed out only once every holder is running again. */
  private resuming = false;

  private pruneTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
    /** How many ended jobs are kept, and for how long (configuration: endedJobsKeptMax, endedJobAgeMsMax). */
    private readonly retention: { keptMax: number; ageMsMax: number } = { keptMax: endedJobsKeptMax, ageMsMax: endedJobAgeMsDefault },
  ) {}

  /**
   * Deletes ended jobs beyond retention.keptMax (oldest first) or older than
   * retention.ageMsMax, except those still named by a machine, a plan, a group
   * or a job that is kept (a failed job to restart, a plan's children).
   * Returns how many were deleted.
   */
  pruneEnded(now = Date.now()): number {
    const jobs = [...this.store.jobs.getRange()].map(({ value }) => value);
    const ended = jobs.filter((job) => jobEnded(job.state) && !this.running.has(job.jobId)).sort(byAge);
    const excess = ended.length - this.retention.keptMax;
    const candidates = new Set(ended.filter((job, index) => index < excess || (job.endedTimeMs > 0 && job.endedTimeMs < now - this.retention.ageMsMax)).map((job) => job.jobId));
    if (candidates.size === 0) return 0;
    // Kept: every job that is no candidate, every job a machine, plan or group names, and whatever a kept job names.
    const kept = new Set(jobs.filter((job) => !candidates.has(job.jobId)).map((job) => job.jobId));
    for (const { value } of this.store.machines.getRange()) collectJobIds(value, kept);
    for (const { value } of this.store.plans.getRange()) collectJobIds(value, kept);
    for (const { value } of this.store.groups.getRange()) collectJobIds(value, kept);
    const byId = new Map(jobs.map((job) => [job.jobId, job]));
    for (const pending = [...kept]; pending.length > 0; ) {
      const job = byId.get(pending.pop()!);
      if (!job) continue;
      const names = new Set<string>();
      collectJobIds({ params: job.params, childJobIds: job.childJobIds }, names);
      for (const jobId of names) if (!kept.has(jobId)) pending.push(jobId), kept.add(jobId);
    }
    const deleted = [...candidates].filter((jobId) => !kept.has(jobId));
    if (deleted.length === 0) return 0;
    this.store.write(() => {
      for (const jobId of deleted) this.store.jobs.remove(jobId);
    });
    this.log.info({ deleted: deleted.length, kept: ended.length - deleted.length, keptMax: this.retention.keptMax, ageMsMax: this.retention.ageMsMax }, 'ended jobs pruned');
    return deleted.length;
  }

  /** Prunes ended jobs now and every jobsPruneIntervalMs until stop(). */
  startPruning(): void {
    this.pruneQuietly();
    this.pruneTimer = setInterval(() => this.pruneQuietly(), jobsPruneIntervalMs);
    this.pruneTimer.unref();
  }

  /** pruneEnded, a failure logged: pruning is housekeeping, it must not stop the daemon. */
  private pruneQuietly(): void {
    if (this.abort.signal.aborted) return;
    try {
      this.pruneEnded();
    } catch (error) {
      this.log.warn({ err: (error as Error).message }, 'could not prune ended jobs; trying again later');
    }
  }

  register<P>(kind: string, workflow: Workflow<P>): void {
    assert.ok(!this.workflows.has(kind), `workflow ${kind} registered twice`);
    if (workflow.slot) assert.ok(workflow.slot.max >= 1, `workflow ${kind}: a slot needs max >= 1`);
    this.workflows.set(kind, workflow as Workflow<never>);
  }

  /**
   * Records a new job (QUEUED) together with the caller's writes, in one
   * transaction; call start() after it returns. Call inside store.write().
   */
  create<P>(kind: string, machineId: string, steps: { name: string; bytesTotal?: number }[], params: P, options: { detail?: string; planId?: string } = {}): JobRecord<P> {
    const workflow = this.workflows.get(kind);
    assert.ok(workflow, `no workflow for job kind ${kind}`);
    if (workflow.slot) assert.equal(steps[0]?.name, workflow.slot.step, `job kind ${kind}: its first step must be ${workflow.slot.step}`);
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
      detail: options.detail ?? '',
      ...(options.planId ? { planId: options.planId, childJobIds: [] } : {}),
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
    // In the map before the workflow runs: its first (synchronous) part may already count slots.
    const entry = { job: job as RunningJob<unknown>, done: Promise.resolve() };
    this.running.set(record.jobId, entry);
    entry.done = this.drive(job, workflow as Workflow<unknown>).finally(() => {
      this.running.delete(record.jobId);
      // A slot this job held is free now: the oldest job waiting for it starts.
      if (workflow.slot) this.admit(workflow.slot.name);
    });
  }

  /** Starts again every job that was queued or running when the daemon stopped. */
  resumeAll(): number {
    const unfinished = [...this.store.jobs.getRange()].map(({ value }) => value).filter((value) => !jobEnded(value.state));
    unfinished.sort(byAge);
    this.resuming = true;
    try {
      for (const value of unfinished) {
        this.log.info({ jobId: value.jobId, kind: value.kind, machineId: value.machineId }, 'resuming job');
        this.start(value);
      }
    } finally {
      this.resuming = false;
    }
    // The jobs that held slots before the restart hold them again; the rest queue, oldest first.
    for (const name of new Set([...this.workflows.values()].flatMap((workflow) => (workflow.slot ? [workflow.slot.name] : [])))) this.admit(name);
    return unfinished.length;
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
    return records.sort(byAge);
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

  /**
   * Stops a queued or running job: a queued one at once, a running one at its
   * next await (its running step ends STOPPED). Answers the job once it has
   * stopped, or after stopJobWaitMs with the stop still on its way.
   */
  async stopJob(jobId: string, waitMs = stopJobWaitMs): Promise<JobRecord> {
    const record = this.get(jobId);
    if (jobEnded(record.state)) throw failedPrecondition(`job ${jobId} (${record.kind}) has already ended ${shortState(record.state)}: there is nothing to stop`);
    const entry = this.running.get(jobId);
    if (entry) {
      this.log.info({ jobId, kind: record.kind, machineId: record.machineId }, 'stop requested by the operator');
      entry.job.requestStop();
      await Promise.race([entry.done, sleep(waitMs, undefined, { ref: false })]);
      return this.get(jobId);
    }
    // Not running in this process (no workflow for its kind): recorded as stopped here.
    const workflow = this.workflows.get(record.kind);
    const stopped = this.store.write(() => {
      const current = this.store.jobs.get(jobId);
      if (!current || jobEnded(current.state)) return current;
      finish(current, jobStoppedError, true);
      workflow?.ended(current as never, jobStoppedError, true);
      this.store.jobs.putSync(jobId, current);
      return current;
    });
    if (stopped) this.notify(stopped);
    return stopped ?? record;
  }

  /**
   * Runs a failed or stopped job again from the step it ended in: the steps
   * that succeeded stay done, the others are queued again. A machine's job
   * must be the one the machine names (restartable_job_id); the machine gets
   * it as its active job again, in the same transaction.
   */
  restart(jobId: string): JobRecord {
    const found = this.get(jobId);
    const workflow = this.workflows.get(found.kind);
    if (!workflow) throw failedPrecondition(`job ${jobId} is of a kind (${found.kind}) this configuration server cannot run`);
    const record = this.store.write(() => {
      const current = this.store.jobs.get(jobId);
      if (!current) throw notFound(`no job ${JSON.stringify(jobId)}: drctl jobs lists them`);
      if ((current.state !== 'JOB_FAILED' && current.state !== 'JOB_STOPPED') || this.running.has(jobId)) {
        throw failedPrecondition(`job ${jobId} (${current.kind}) is ${shortState(current.state)}: only a failed or stopped job can be restarted`);
      }
      if (current.machineId) {
        const machine = this.store.machines.get(current.machineId);
        if (!machine) throw failedPrecondition(`machine ${current.machineId} of job ${jobId} no longer exists`);
        if (machine.restartableJobId !== jobId) {
          throw failedPrecondition(
            machine.restartableJobId
              ? `job ${jobId} is not the job machine ${machine.name} can continue: that is ${machine.restartableJobId} (drctl job restart ${machine.restartableJobId})`
              : `job ${jobId} can no longer be restarted: machine ${machine.name} has moved on since (it is ${machine.state})`,
          );
        }
        const active = machine.activeJobId && machine.activeJobId !== jobId ? this.store.jobs.get(machine.activeJobId) : undefined;
        if (active && !jobEnded(active.state)) throw failedPrecondition(`machine ${machine.name} is busy with ${active.kind} ${active.jobId}: wait for it (drctl job watch ${active.jobId})`);
        this.store.machines.putSync(machine.machineId, { ...machine, activeJobId: jobId, restartableJobId: '', stateReason: `${current.kind} ${jobId} restarted` });
      }
      current.state = 'JOB_QUEUED';
      current.error = '';
      current.endedTimeMs = 0;
      current.detail = '';
      // It gets a slot again like any other job; its slot step stays done (it is not work to redo).
      current.slotHeld = false;
      for (const step of current.steps) {
        if (step.state === 'JOB_SUCCEEDED') continue;
        step.state = 'JOB_QUEUED';
        step.message = '';
      }
      current.updatedTimeMs = Date.now();
      workflow.restarted?.(current as never);
      this.store.jobs.putSync(jobId, current);
      return current;
    });
    this.log.info({ jobId, kind: record.kind, machineId: record.machineId, from: record.steps.find((step) => step.state !== 'JOB_SUCCEEDED')?.name ?? '' }, 'job restarted by the operator');
    this.notify(record);
    this.start(record);
    return this.get(jobId);
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
      detail: record.detail ?? '',
      planId: record.planId ?? '',
      childJobIds: [...(record.childJobIds ?? [])],
    };
  }

  /** Interrupts the running workflows (they stay RUNNING and resume at the next start) and saves their progress. */
  async stop(): Promise<void> {
    this.abort.abort();
    clearInterval(this.pruneTimer);
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
    let error = '';
    let stopped = false;
    try {
      if (workflow.slot && !record.slotHeld) await this.waitForSlot(job, workflow.slot);
      else if (record.state === 'JOB_QUEUED') job.save(() => (record.state = 'JOB_RUNNING'));
      log.info('job running');
      await workflow.run(job);
    } catch (thrown) {
      if (job.stopRequested) {
        stopped = true;
        error = jobStoppedError;
      } else if (thrown instanceof JobInterrupted || this.abort.signal.aborted) {
        log.info('job interrupted: it resumes when the configuration server starts again');
        return;
      } else {
        error = thrown instanceof Error ? thrown.message : String(thrown);
        if (!(thrown instanceof DrplaneError) || thrown.code === ErrorCode.Internal) log.error({ err: thrown }, 'job failed');
      }
    }
    const now = Date.now();
    job.save(() => {
      finish(record, error, stopped, now);
      workflow.ended(record, error, stopped);
    });
    // One more ended job: the oldest beyond the count go now, not at the next timer.
    if (this.pruneTimer) setImmediate(() => this.pruneQuietly());
    if (stopped) log.info({ step: record.steps.find((step) => step.state === 'JOB_STOPPED')?.name ?? '' }, 'job stopped');
    else if (error) log.warn({ error }, 'job failed');
    else log.info({ durationMs: now - record.createdTimeMs, bytes: record.bytesTotal, bytesSent: record.bytesSent }, 'job succeeded');
  }

  /** Keeps the job QUEUED until one of its workflow's slots is free and every older waiting job has one. */
  private waitForSlot(job: RunningJob<unknown>, slot: JobSlot): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const jobId = job.record.jobId;
      const onAbort = () => {
        this.waiters.delete(jobId);
        reject(job.interruption());
      };
      if (job.signal.aborted) return onAbort();
      job.signal.addEventListener('abort', onAbort, { once: true });
      this.waiters.set(jobId, {
        job,
        slot,
        admit: () => {
          job.signal.removeEventListener('abort', onAbort);
          resolve();
        },
      });
      this.admit(slot.name);
    });
  }

  /** Hands out the free slots of `name` to the oldest waiting jobs; tells the others why they wait. */
  private admit(name: string): void {
    if (this.resuming) return;
    const holders: RunningJob<unknown>[] = [];
    for (const { job } of this.running.values()) {
      if (this.workflows.get(job.record.kind)?.slot?.name === name && job.record.slotHeld && !jobEnded(job.record.state)) holders.push(job);
    }
    holders.sort((a, b) => byAge(a.record, b.record));
    const waiting = [...this.waiters.values()].filter((waiter) => waiter.slot.name === name).sort((a, b) => byAge(a.job.record, b.job.record));
    for (const waiter of waiting) {
      const { job, slot } = waiter;
      const step = job.step(slot.step);
      if (holders.length < slot.max) {
        this.waiters.delete(job.record.jobId);
        job.save(() => {
          if (step.state !== 'JOB_SUCCEEDED') {
            step.state = 'JOB_SUCCEEDED';
            step.message = `a ${slot.label} slot (${holders.length + 1} of ${slot.max} in use)`;
          }
          job.record.slotHeld = true;
          job.record.state = 'JOB_RUNNING';
          job.record.detail = '';
        });
        holders.push(job);
        waiter.admit();
        continue;
      }
      const detail = `waiting for a ${slot.label} slot: ${holders.length} of ${slot.max} running (${holders.map((holder) => holder.record.jobId).join(', ')})`;
      if (job.record.detail !== detail) {
        job.save(() => {
          job.record.detail = detail;
          if (step.state !== 'JOB_SUCCEEDED') step.message = detail;
        });
      }
    }
  }

  private notify(record: JobRecord): void {
    for (const listener of [...(this.listeners.get(record.jobId) ?? [])]) listener(record);
  }
}

function jobNumber(jobId: string): number {
  return Number(jobId.slice(jobId.lastIndexOf('-') + 1)) || 0;
}

function byAge(a: JobRecord, b: JobRecord): number {
  return a.createdTimeMs - b.createdTimeMs || jobNumber(a.jobId) - jobNumber(b.jobId);
}

function shortState(state: JobState__Output): string {
  return state.replace(/^JOB_/, '');
}

/** Every job id (job-N) named anywhere in a record. */
function collectJobIds(value: unknown, into: Set<string>): void {
  if (typeof value === 'string') {
    if (/^job-\d+$/.test(value)) into.add(value);
  } else if (Array.isArray(value)) {
    for (const item of value) collectJobIds(item, into);
  } else if (value && typeof value === 'object') {
    for (const item of Object.values(value)) collectJobIds(item, into);
  }
}
