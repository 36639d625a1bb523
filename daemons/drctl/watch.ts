// Follows a job (WatchJob stream) until it ends: a progress bar on a
// terminal, a line per step otherwise, NDJSON with --json when asked. A
// configuration server that restarts meanwhile is waited for: its jobs resume.
import * as grpc from '@grpc/grpc-js';
import { SingleBar } from 'cli-progress';
import type { Job__Output } from '../../generated/drplane/v1/Job';
import { cleanDetails, DrctlError, type Context } from './client';
import { formatBytes, formatDuration, print, shortState } from './output';

/** How long drctl waits for an unreachable configuration server while watching. */
export const watchReconnectMaxMs = 60_000;
export const watchReconnectIntervalMs = 1_000;

const ended = (job: Job__Output) => job.state === 'JOB_SUCCEEDED' || job.state === 'JOB_FAILED' || job.state === 'JOB_STOPPED';

export interface WatchOptions {
  /** Print every update as a JSON line (job watch --json). */
  eachAsJson?: boolean;
}

/** Resolves with the job in its final state. */
export async function watchJob(context: Context, jobId: string, options: WatchOptions = {}): Promise<Job__Output> {
  const display = options.eachAsJson ? new JsonLines() : context.json ? new Silent() : process.stderr.isTTY ? new Bar() : new StepLines();
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
        if (last && ended(last)) return last;
      } catch (error) {
        const code = (error as grpc.ServiceError).code;
        if (code !== grpc.status.UNAVAILABLE) throw error;
        if (!unreachableSince) {
          unreachableSince = Date.now();
          display.note(`configuration server unreachable (${cleanDetails((error as grpc.ServiceError).details)}); retrying for up to ${formatDuration(watchReconnectMaxMs)}`);
        } else if (Date.now() - unreachableSince > watchReconnectMaxMs) throw error;
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

class JsonLines implements Display {
  update(job: Job__Output): void {
    process.stdout.write(`${JSON.stringify(job)}\n`);
  }
  note(text: string): void {
    process.stderr.write(`drctl: ${text}\n`);
  }
  stop(): void {}
}

const currentStep = (job: Job__Output) => job.steps.find((step) => step.state === 'JOB_RUNNING') ?? job.steps.find((step) => step.state === 'JOB_QUEUED') ?? job.steps[job.steps.length - 1];

class StepLines implements Display {
  private lastLine = '';
  update(job: Job__Output): void {
    const step = currentStep(job);
    const line = ended(job) ? '' : `${job.jobId} ${shortState(job.state).toLowerCase()}: ${step?.name ?? ''}${step?.message ? ` (${step.message})` : ''}`;
    if (line && line !== this.lastLine) process.stderr.write(`${line}\n`);
    this.lastLine = line;
  }
  note(text: string): void {
    process.stderr.write(`drctl: ${text}\n`);
  }
  stop(): void {}
}

class Bar implements Display {
  private readonly bar = new SingleBar({
    format: '{step} [{bar}] {percentage}% | {done} of {total} | sent {sent} | ETA {eta_text} {message}',
    barCompleteChar: '#',
    barIncompleteChar: '-',
    hideCursor: true,
    clearOnComplete: false,
    stream: process.stderr,
  });
  private started = false;

  update(job: Job__Output): void {
    const step = currentStep(job);
    const payload = {
      step: (step?.name ?? job.kind).padEnd(16),
      done: formatBytes(job.bytesDone),
      total: formatBytes(job.bytesTotal),
      sent: formatBytes(job.bytesSent),
      eta_text: job.etaMs ? formatDuration(job.etaMs) : '-',
      message: step?.message ? `(${step.message})` : '',
    };
    const value = Math.round(job.percent * 10);
    if (!this.started) {
      this.bar.start(1000, value, payload);
      this.started = true;
    } else this.bar.update(value, payload);
  }
  note(text: string): void {
    if (this.started) this.bar.update({ message: `(${text})` });
    else process.stderr.write(`drctl: ${text}\n`);
  }
  stop(): void {
    if (this.started) this.bar.stop();
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
