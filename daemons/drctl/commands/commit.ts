// drctl commit NAME: end a failover. The replicas the machine failed over from
// are retired and it runs at the other site (reprotect it next), as a job.
import type { Command } from 'commander';
import { context } from '../client';
import { addWaitOptions, followJob } from './failover';

export function register(program: Command): void {
  addWaitOptions(
    program
      .command('commit')
      .description('commit a failover: the recovered disks are the machine\'s, the replicas it came from are retired; reprotect it next (drctl reprotect)')
      .argument('<name>', 'name or id of the machine'),
  ).action(async (name: string, options: { wait: boolean; watch: boolean }, command: Command) => {
    const ctx = context(command);
    const job = await ctx.call(ctx.client.commitFailover, { machine: name });
    await followJob(ctx, job, options);
  });
}
