// drctl job restart ID: run a failed or stopped job again from the step it
// ended in (the steps that succeeded are not run again), watched until it ends.
import type { Command } from 'commander';
import { context } from '../client';
import { addWaitOptions, followJob } from './failover';

export function register(job: Command): void {
  addWaitOptions(
    job
      .command('restart')
      .description('run a failed or stopped job again from the step it ended in (steps that succeeded are not run again)')
      .argument('<id>', 'job id'),
  ).action(async (jobId: string, options: { wait: boolean; watch: boolean }, command: Command) => {
    const ctx = context(command);
    const restarted = await ctx.call(ctx.client.restartJob, { jobId });
    await followJob(ctx, restarted, options);
  });
}
