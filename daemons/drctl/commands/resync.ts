// drctl resync NAME [--full]: sync a protected machine again under its running
// capture (only what differs, or everything with --full), as a job that ends
// when every disk replicates again with a newer point.
import type { Command } from 'commander';
import { context } from '../client';
import { followStartedJob } from '../watch';

export function register(program: Command): void {
  program
    .command('resync')
    .description('sync a protected machine again: only the blocks that differ (default) or every block (--full)')
    .argument('<name>', 'name or id of the machine')
    .option('--full', 'send every non-zero block, not only those that differ')
    .option('--no-watch', 'return once the job is created')
    .action(async (name: string, options: { full?: boolean; watch: boolean }, command: Command) => {
      const ctx = context(command);
      const job = await ctx.call(ctx.client.resyncMachine, { machine: name, full: Boolean(options.full) });
      await followStartedJob(ctx, job, options.watch);
    });
}
