// drctl cleanup NAME: delete the disks of a machine's test failover, as a job.
import type { Command } from 'commander';
import { context } from '../client';
import { addWaitOptions, followJob } from './failover';

export function register(program: Command): void {
  addWaitOptions(
    program
      .command('cleanup')
      .description("delete the disks of a machine's test failover")
      .argument('<name>', 'name or id of the machine'),
  ).action(async (name: string, options: { wait: boolean; watch: boolean }, command: Command) => {
    const ctx = context(command);
    const job = await ctx.call(ctx.client.cleanupTestFailover, { machine: name });
    await followJob(ctx, job, options);
  });
}
