// Follows a job (WatchJob stream) until it ends: a bar per step on a terminal,
// plain timed lines otherwise, JSON events (one a line) with --json when asked
// (docs/control-plane.md, "Progress"). A configuration server that restarts
// meanwhile is waited for: its jobs resume.
import * as grpc from '@grpc/grpc-js';
import type { Job__Output } from '../../generated/drplane/v1/Job';
import type { JobStep__Output } from '../../generated/drplane/v1/JobStep';
import { cleanDetails, DrctlError, type Context } from './client';
import { formatBytes, formatDuration, print, shortState } from './output';
import { fitLine, fitStatusLine, plainLine, RateMeter, TerminalLine, type BarFields } from './progress';

/** How long drctl waits for an unreachable configuration server while watching. */
export const watchReconnectMsMax = 60_000;
export const watchReconnectIntervalMs = 1_000;

const jobEnded = (job: Job__Output) => job.state === 'JOB_SUCCEEDED' || job.state === 'JOB_FAILED' || job.state === 'JOB_STOPPED';

export interface WatchOptions {
  /** Print every update as a JSON line (job watch --json). */
  eachAsJson?: boolean;
}

/** Resolves with the job in its final state. */
export async function watchJob(context: Context, jobId: string, options: WatchOptions = {}): Promise<Job__Output> {
  const display: Display = options.eachAsJson ? new JsonEvents() : context.json ? new Silent() : process.stderr.isTTY ? new TerminalBars() : new PlainLines(jobId, context.progressIntervalMs);
  let last: Job__Output | undefined;
  let unreachableSince = 0;
  try {
    for (;;) {
      try {
        last = await followOnce(context, jobId, (job) => {
          unreachableSince = 0;
          last = job;
          display.update(job);
        });
        if (last && jobEnded(last)) return last;
      } catch (error) {
        const code = (error as grpc.ServiceError).code;
        if (code !== grpc.status.UNAVAILABLE) throw error;
        if (!unreachableSince) {
          unreachableSince = Date.now();
          display.note(`configuration server unreachable (${cleanDetails((error as grpc.ServiceError).details)}); retrying for up to ${formatDuration(watchReconnectMsMax)}`);
        } else if (Date.now() - unreachableSince > watchReconnectMsMax) throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, watchReconnectIntervalMs));
    }
  } finally {
    display.stop();
  }
}

function followOnce(context: Context, jobId: string, onJob: (job: Job__Output) => void): Promise<Job__Output | undefined> {
  return new Promise((resolve, reject) => {
    let last: Job__Output | undefined;
    const call = context.client.watchJob({ jobId });
    call.on('data', (job: Job__Output) => {
      last = job;
      onJob(job);
    });
    call.on('error', reject);
    call.on('end', () => resolve(last));
  });
}

/** The one-line summary of a job that ended. */
export function summary(job: Job__Output): string {
  const took = job.endedTimeMs && job.createdTimeMs ? ` in ${formatDuration(job.endedTimeMs - job.createdTimeMs)}` : '';
  const moved = job.bytesTotal ? `: ${formatBytes(job.bytesDone)} of ${formatBytes(job.bytesTotal)} scanned, ${formatBytes(job.bytesSent)} sent` : '';
  if (job.state === 'JOB_SUCCEEDED') return `job ${job.jobId} (${job.kind}) succeeded${took}${moved}`;
  return `job ${job.jobId} (${job.kind}) ${shortState(job.state).toLowerCase()}${took}: ${job.error || 'no reason given'}`;
}

/** Exits non-zero for a job that did not succeed (after printing it). */
export function failUnlessSucceeded(job: Job__Output): void {
  if (job.state !== 'JOB_SUCCEEDED') throw new DrctlError(shortState(job.state), `job ${job.jobId} (${job.kind}): ${job.error || 'no reason given'}`);
}

interface Display {
  update(job: Job__Output): void;
  note(text: string): void;
  stop(): void;
}

class Silent implements Display {
  update(): void {}
  note(): void {}
  stop(): void {}
}

/** The step a job is at: the running one, else the first queued, else the last (the job ended). */
function currentStepIndex(job: Job__Output): number {
  const running = job.steps.findIndex((step) => step.state === 'JOB_RUNNING');
  if (running >= 0) return running;
  const queued = job.steps.findIndex((step) => step.state === 'JOB_QUEUED');
  if (queued >= 0 && !jobEnded(job)) return queued;
  return job.steps.length - 1;
}

/**
 * Follows the steps of a job in order, one at a time, each with its own rate
 * meter; reports each step that ended (including those that ended between two
 * updates) once, in order, before the next one.
 */
class StepTracker {
  /** The step being shown; -1 before the first update. */
  index = -1;
  meter = new RateMeter();
  stepStartedMs = Date.now();
  job: Job__Output | undefined;
  private readonly reported = new Set<number>();

  /** Moves to the job's current step; calls `ended` once for each step left behind (in order), `started` for each step it moves to. */
  follow(job: Job__Output, ended: (step: JobStep__Output) => void, started: (step: JobStep__Output) => void): void {
    this.job = job;
    if (job.steps.length === 0) return;
    const target = Math.max(0, currentStepIndex(job));
    if (this.index < 0) {
      this.index = 0;
      started(job.steps[0]!);
    }
    while (this.index < target) {
      this.report(job.steps[this.index]!, ended);
      this.index++;
      this.reset();
      started(job.steps[this.index]!);
    }
    this.meter.sample(Number(job.steps[this.index]!.bytesDone));
  }

  /** The job ended: its last step is reported (once). */
  finish(job: Job__Output, ended: (step: JobStep__Output) => void): void {
    const step = job.steps[this.index];
    if (step) this.report(step, ended);
  }

  private report(step: JobStep__Output, ended: (step: JobStep__Output) => void): void {
    if (this.reported.has(this.index)) return;
    this.reported.add(this.index);
    ended(step);
  }

  fields(step: JobStep__Output): BarFields {
    const total = Number(step.bytesTotal);
    return { label: step.name, bytesDone: Number(step.bytesDone), bytesTotal: total, bytesPerSecond: this.meter.bytesPerSecond(), etaMs: this.meter.etaMs(total), detail: step.message };
  }

  private reset(): void {
    this.meter = new RateMeter();
    this.stepStartedMs = Date.now();
  }
}

/** What a step that ended says: "succeeded 512 MiB of 512 MiB". */
function endedStepText(step: JobStep__Output): string {
  const bytes = Number(step.bytesTotal) > 0 ? ` ${formatBytes(Number(step.bytesDone))} of ${formatBytes(Number(step.bytesTotal))}` : '';
  return `${shortState(step.state).toLowerCase()}${bytes}`;
}

/** A line for a step without bytes to count (a hook, a commit): what state it is in and for how long. */
function statusText(step: JobStep__Output, startedMs: number): string {
  return `${shortState(step.state).toLowerCase()} ${formatDuration(Date.now() - startedMs)}`;
}

/** One JSON object per line on stdout: each update of the job (with its current step, the smoothed rate and ETA), then its end. */
class JsonEvents implements Display {
  private readonly steps = new StepTracker();

  update(job: Job__Output): void {
    this.steps.follow(job, () => undefined, () => undefined);
    const step = job.steps[this.steps.index];
    const fields = step ? this.steps.fields(step) : undefined;
    const event = {
      event: jobEnded(job) ? 'end' : 'progress',
      timeMs: Date.now(),
      ...job,
      step: step ? { index: this.steps.index, name: step.name, state: step.state, bytesDone: Number(step.bytesDone), bytesTotal: Number(step.bytesTotal), message: step.message } : null,
      // The smoothed rate of the current step, and the ETA it gives (drctl's, not the server's).
      bytesPerSecond: Math.round(fields?.bytesPerSecond ?? 0),
      etaMs: fields?.etaMs ?? 0,
    };
    process.stdout.write(`${JSON.stringify(event)}\n`);
  }
  note(text: string): void {
    process.stdout.write(`${JSON.stringify({ event: 'note', timeMs: Date.now(), message: text })}\n`);
  }
  stop(): void {}
}

/**
 * Not a terminal (a log, CI): a plain line when a step starts or ends, and
 * every --progress-interval while one runs; nothing is cut.
 */
class PlainLines implements Display {
  private readonly steps = new StepTracker();
  private readonly timer: NodeJS.Timeout;
  private lastLineMs = 0;

  constructor(private readonly jobId: string, private readonly intervalMs: number) {
    this.timer = setInterval(() => this.tick(), Math.max(100, Math.min(intervalMs, 1_000)));
    this.timer.unref();
  }

  update(job: Job__Output): void {
    const ended = (step: JobStep__Output) => this.write(`${step.name} ${endedStepText(step)}${step.message && step.state !== 'JOB_SUCCEEDED' ? ` (${step.message})` : ''}`);
    this.steps.follow(job, ended, () => (this.lastLineMs = 0));
    if (!jobEnded(job)) this.tick();
    else this.steps.finish(job, ended);
  }
  note(text: string): void {
    this.write(`drctl: ${text}`);
  }
  stop(): void {
    clearInterval(this.timer);
  }

  private tick(): void {
    const job = this.steps.job;
    if (!job || jobEnded(job) || Date.now() - this.lastLineMs < this.intervalMs) return;
    const step = job.steps[this.steps.index];
    if (!step) return;
    if (Number(step.bytesTotal) > 0) this.write(plainLine(this.steps.fields(step)));
    else this.write(`${step.name} ${statusText(step, this.steps.stepStartedMs)}${step.message ? ` (${step.message})` : ''}`);
  }

  private write(line: string): void {
    this.lastLineMs = Date.now();
    process.stderr.write(`${timeOfDay()} ${this.jobId} ${line}\n`);
  }
}

/** "11:58:03": plain lines carry the time, so a log shows the pace. */
function timeOfDay(): string {
  const now = new Date();
  const two = (value: number) => String(value).padStart(2, '0');
  return `${two(now.getHours())}:${two(now.getMinutes())}:${two(now.getSeconds())}`;
}

/**
 * A terminal: one bar per step, updated in place (cli-progress), each line
 * cut to the terminal's width; a step that ends keeps its last line.
 */
class TerminalBars implements Display {
  private readonly steps = new StepTracker();
  private bar: TerminalLine | undefined;
  private noteText = '';

  update(job: Job__Output): void {
    // An update means the configuration server answers again: a note about its absence is over.
    this.noteText = '';
    this.steps.follow(job, (step) => this.endStep(step), () => undefined);
    if (jobEnded(job)) return this.steps.finish(job, (step) => this.endStep(step));
    const step = job.steps[this.steps.index];
    if (!step) return;
    this.bar ??= new TerminalLine();
    this.bar.show((width) => this.line(step, width));
  }
  note(text: string): void {
    this.noteText = text;
    this.bar?.refresh();
    if (!this.bar) process.stderr.write(`drctl: ${text}\n`);
  }
  stop(): void {
    this.bar?.close();
    this.bar = undefined;
  }

  private line(step: JobStep__Output, width: number): string {
    const fields = this.steps.fields(step);
    if (this.noteText) fields.detail = this.noteText;
    if (fields.bytesTotal > 0) return fitLine(fields, width);
    return fitStatusLine(step.name, statusText(step, this.steps.stepStartedMs), fields.detail, width);
  }

  private endStep(step: JobStep__Output): void {
    const text = (width: number) => (Number(step.bytesTotal) > 0 ? fitLine({ ...this.steps.fields(step), etaMs: 0, detail: step.state === 'JOB_SUCCEEDED' ? shortState(step.state).toLowerCase() : step.message }, width) : fitStatusLine(step.name, endedStepText(step), step.state === 'JOB_SUCCEEDED' ? '' : step.message, width));
    this.bar ??= new TerminalLine();
    this.bar.show(text);
    this.bar.close();
    this.bar = undefined;
  }
}

/** After a command that starts a job: print it and return, or follow it to its end (exit status 1 unless it succeeded). */
export async function followStartedJob(context: Context, job: Job__Output, watch: boolean): Promise<void> {
  if (!watch) {
    print(context, job, () => `started job ${job.jobId} (${job.kind}); drctl job watch ${job.jobId} follows it`);
    return;
  }
  if (!context.json) process.stderr.write(`job ${job.jobId} (${job.kind}) started\n`);
  const final = await watchJob(context, job.jobId);
  print(context, final, () => summary(final));
  failUnlessSucceeded(final);
}
