// drctl test-failover NAME [--select SELECTOR]: materialise a recovery point to
// separate disks on the target's master target while replication goes on;
// drctl cleanup NAME removes them.
import type { Command } from 'commander';
import { context } from '../client';
import { addWaitOptions, followJob, parsePointSelection, pointSelectionHelp, type PointSelection } from './failover';

export function register(program: Command): void {
  addWaitOptions(
    program
      .command('test-failover')
      .description('materialise a recovery point to separate disks (under the datastore\'s test-failover folder) while replication goes on; drctl cleanup removes them')
      .argument('<name>', 'name or id of the machine')
      .option('--select <selector>', `which point (default latest): ${pointSelectionHelp}`, parsePointSelection),
  ).action(async (name: string, options: { select?: PointSelection; wait: boolean; watch: boolean }, command: Command) => {
    const ctx = context(command);
    const select = options.select ?? { selector: 'LATEST', pointIds: [], timeMs: 0 };
    const job = await ctx.call(ctx.client.testFailover, { machine: name, selector: select.selector, pointIds: select.pointIds, timeMs: select.timeMs });
    await followJob(ctx, job, options);
    if (!ctx.json && options.wait && options.watch) {
      const machine = await ctx.call(ctx.client.getMachine, { machine: name });
      if (machine.testFailover) process.stdout.write(`test disks: ${machine.testFailover.diskPaths.join(', ')} (drctl cleanup ${name} removes them)\n`);
    }
  });
}
