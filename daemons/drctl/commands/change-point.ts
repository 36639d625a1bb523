// drctl change-point NAME --select SELECTOR: before commit, materialise another
// recovery point onto a failed-over machine's disks, as a job.
import type { Command } from 'commander';
import { context } from '../client';
import { addWaitOptions, followJob, parsePointSelection, pointSelectionHelp, type PointSelection } from './failover';

export function register(program: Command): void {
  addWaitOptions(
    program
      .command('change-point')
      .description("before commit: put another recovery point onto a failed-over machine's disks (the replica and its points are kept until commit)")
      .argument('<name>', 'name or id of the machine')
      .requiredOption('--select <selector>', `which point: ${pointSelectionHelp} (after the failover, latest is the latest processed)`, parsePointSelection),
  ).action(async (name: string, options: { select: PointSelection; wait: boolean; watch: boolean }, command: Command) => {
    const ctx = context(command);
    const job = await ctx.call(ctx.client.changeRecoveryPoint, { machine: name, selector: options.select.selector, pointIds: options.select.pointIds, timeMs: options.select.timeMs });
    await followJob(ctx, job, options);
  });
}
