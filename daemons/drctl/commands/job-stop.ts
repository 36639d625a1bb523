// drctl job stop ID: stop a queued or running job at its next safe point
// (JOB_STOPPED); drctl job restart ID continues it from the step it stopped in.
import type { Command } from 'commander';
import { context } from '../client';
import { print, shortState } from '../output';

export function register(job: Command): void {
  job
    .command('stop')
    .description('stop a queued or running job at its next safe point; drctl job restart continues it from the step it stopped in')
    .argument('<id>', 'job id')
    .action(async (jobId: string, _options: unknown, command: Command) => {
      const ctx = context(command);
      const stopped = await ctx.call(ctx.client.stopJob, { jobId });
      print(ctx, stopped, () => {
        if (stopped.state !== 'JOB_STOPPED') return `stop requested: job ${stopped.jobId} (${stopped.kind}) is still ${shortState(stopped.state)} and stops at its next safe point (drctl job watch ${stopped.jobId})`;
        const step = stopped.steps.find((candidate) => candidate.state === 'JOB_STOPPED');
        return `job ${stopped.jobId} (${stopped.kind}) stopped${step ? ` in step ${step.name}` : ''}; drctl job restart ${stopped.jobId} continues it`;
      });
    });
}
