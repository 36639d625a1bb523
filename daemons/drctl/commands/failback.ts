// drctl failback NAME [--unplanned --select SELECTOR] [--sync-first]
// [--alternate-location]: bring a machine that runs at its recovery site home
// (failover, commit, and reprotect toward the recovery site again), as one
// job. At most 3 run at once; more wait in the queue.
import type { Command } from 'commander';
import { context, DrctlError } from '../client';
import { addWaitOptions, followJob, parsePointSelection, pointSelectionHelp, type PointSelection } from './failover';

export function register(program: Command): void {
  addWaitOptions(
    program
      .command('failback')
      .description('bring a machine home: fail it over to its home site (planned by default), commit, and reprotect it toward the recovery site; at most 3 at once, more wait in the queue')
      .argument('<name>', 'name or id of the machine')
      .option('--unplanned', 'do not shut the source down; take the selected point')
      .option('--select <selector>', `unplanned: which point (default latest): ${pointSelectionHelp}`, parsePointSelection)
      .option('--sync-first', 'planned: synchronize while the source still runs, so the final delta after the shutdown is small')
      .option('--alternate-location', 'land on new disks under the home datastore instead of the machine\'s disks at home'),
  ).action(async (name: string, options: { unplanned?: boolean; select?: PointSelection; syncFirst?: boolean; alternateLocation?: boolean; wait: boolean; watch: boolean }, command: Command) => {
    if (options.select && !options.unplanned) throw new DrctlError('INVALID_ARGUMENT', '--select: only with --unplanned (a planned failback takes the latest point, drained and proven)');
    if (options.syncFirst && options.unplanned) throw new DrctlError('INVALID_ARGUMENT', '--sync-first: only for a planned failback (the source must still run)');
    const ctx = context(command);
    const select = options.select ?? { selector: 'LATEST', pointIds: [], timeMs: 0 };
    const job = await ctx.call(ctx.client.failback, {
      machine: name,
      unplanned: Boolean(options.unplanned),
      selector: options.unplanned ? select.selector : 'POINT_SELECTOR_UNSPECIFIED',
      pointIds: select.pointIds,
      timeMs: select.timeMs,
      synchronizeFirst: Boolean(options.syncFirst),
      location: options.alternateLocation ? 'ALTERNATE_LOCATION' : 'ORIGINAL_LOCATION',
    });
    if (!ctx.json && job.state === 'JOB_QUEUED' && job.detail) process.stderr.write(`job ${job.jobId} queued: ${job.detail}\n`);
    await followJob(ctx, job, options);
  });
}
