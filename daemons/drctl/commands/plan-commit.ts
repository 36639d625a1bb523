// drctl plan commit NAME: commit every member's failover, in order, as one job.
import type { Command } from 'commander';
import { context } from '../client';
import { followStartedJob } from '../watch';

export function register(plan: Command): void {
  plan
    .command('commit')
    .description("commit a recovery plan's failover: every member's recovered disks become its own, in order, as one job")
    .argument('<name>', 'name or id of the plan')
    .option('--no-wait', 'return once the job is created (drctl job watch JOB follows it)')
    .option('--no-watch', 'the same as --no-wait')
    .action(async (name: string, options: { wait: boolean; watch: boolean }, command: Command) => {
      const ctx = context(command);
      const job = await ctx.call(ctx.client.commitRecoveryPlan, { plan: name });
      await followStartedJob(ctx, job, options.wait && options.watch);
    });
}
