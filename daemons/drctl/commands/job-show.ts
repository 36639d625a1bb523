// drctl job show ID: a job, its steps and progress.
import type { Command } from 'commander';
import type { Job__Output } from '../../../generated/drplane/v1/Job';
import { context } from '../client';
import { fields, formatBytes, formatDuration, formatTime, print, shortState, table } from '../output';

export function renderJob(job: Job__Output): string {
  const head = fields([
    ['job', job.jobId],
    ['kind', job.kind],
    ['machine', job.machineId],
    ['state', shortState(job.state)],
    ['progress', `${job.percent.toFixed(1)}% (${formatBytes(job.bytesDone)} of ${formatBytes(job.bytesTotal)}; ${formatBytes(job.bytesSent)} sent)`],
    ['eta', job.etaMs ? formatDuration(job.etaMs) : '-'],
    ['created', formatTime(job.createdTimeMs)],
    ['ended', job.endedTimeMs ? `${formatTime(job.endedTimeMs)} (after ${formatDuration(job.endedTimeMs - job.createdTimeMs)})` : '-'],
    ...(job.error ? [['error', job.error] as [string, string]] : []),
  ]);
  const steps = table(
    ['STEP', 'STATE', 'DONE', 'TOTAL', 'MESSAGE'],
    job.steps.map((step) => [step.name, shortState(step.state), step.bytesTotal ? formatBytes(step.bytesDone) : '-', step.bytesTotal ? formatBytes(step.bytesTotal) : '-', step.message]),
  );
  return `${head}\n\n${steps}`;
}

export function register(job: Command): void {
  job
    .command('show')
    .description('show a job and its steps')
    .argument('<id>', 'job id')
    .action(async (jobId: string, _options: unknown, command: Command) => {
      const ctx = context(command);
      const found = await ctx.call(ctx.client.getJob, { jobId });
      print(ctx, found, () => renderJob(found));
    });
}
