// Calling peers from a job's step: the deadline of a call, waiting for an
// unreachable peer (the reason on the step) until it answers or the job
// stops, and the progress of a long call reported while it runs.
import { retry } from '../../../shared/backoff';
import { DrplaneError, ErrorCode } from '../../../shared/errors';
import type { Logger } from '../../../shared/log';
import type { StepRecord } from '../store/records';
import type { RunningJob } from './running-job';

/** Deadline of a status or control call to a peer (never wait on a peer without one). */
export const peerCallTimeoutMs = 10_000;
/** First wait before calling an unreachable peer again; doubles up to the max, less a random part (shared/backoff.ts). */
export const peerRetryIntervalMs = 1_000;
export const peerRetryIntervalMsMax = 5_000;

/** Calls a peer until it answers: an unreachable peer is waited for (backoff with jitter), with the reason on the step. */
export function retryUnavailable<T>(log: Logger, job: RunningJob<unknown>, step: StepRecord, call: () => Promise<T>): Promise<T> {
  return retry(
    () => {
      job.throwIfInterrupted();
      return job.abortable(call());
    },
    {
      backoff: { initialMs: peerRetryIntervalMs, maxMs: peerRetryIntervalMsMax },
      retryable: (error) => error instanceof DrplaneError && error.code === ErrorCode.Unavailable,
      onRetry: (error) => {
        const message = errorMessage(error);
        log.warn({ jobId: job.record.jobId, err: message }, 'peer unreachable; retrying');
        job.progress(step, { message: `${message}; retrying` });
      },
      // A stop or the daemon's end ends the wait at once (JobStopped, JobInterrupted).
      wait: (delayMs) => job.wait(delayMs),
    },
  );
}

/** The message of anything thrown: a peer's error, or a bug's. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** How often a step asks how far a long peer call (a materialisation) has got. */
export const progressPollIntervalMs = 500;

/**
 * Resolves with `work`; meanwhile calls `report` every progressPollIntervalMs
 * (one at a time). A report that fails is skipped: progress is a figure for
 * the operator, never a reason to fail the step.
 */
export async function whileReporting<T>(work: Promise<T>, report: (pending: () => boolean) => Promise<void>): Promise<T> {
  let done = false;
  const reporting = (async () => {
    while (!done) {
      await new Promise((resolve) => setTimeout(resolve, progressPollIntervalMs).unref());
      if (done) return;
      // `pending` tells a report that was answered after the work ended to drop its figures.
      await report(() => !done).catch(() => undefined);
    }
  })();
  try {
    return await work;
  } finally {
    done = true;
    void reporting;
  }
}
