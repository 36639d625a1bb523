// drctl failover NAME [--planned [--sync-first]] [--select SELECTOR] [--no-start]:
// fail a machine over to its target site, as a job watched with a progress
// bar (exit 1 if it fails). Planned: the source's shutdown hook, a drain, the
// hash proof, no data lost. Unplanned (default): the selected point (latest
// drains the process server first).
import type { Command } from 'commander';
import type { Job__Output } from '../../../generated/drplane/v1/Job';
import type { PointSelector } from '../../../generated/drplane/v1/PointSelector';
import { context, DrctlError, type Context } from '../client';
import { followStartedJob } from '../watch';
import { parseSelector, selectorHelp } from './points';

/** --select for a failover: a selector word, <=TIME, or point ids (one per disk, comma-separated). */
export interface PointSelection {
  selector: PointSelector;
  pointIds: string[];
  timeMs: number;
}

export const pointSelectionHelp = `${selectorHelp}; point ids of a machine with several disks: one per disk, comma-separated`;

export function parsePointSelection(text: string): PointSelection {
  const ids = text.split(',').map((part) => part.trim());
  if (ids.length > 1) {
    for (const id of ids) parseSelector(id);
    if (!ids.every((id) => /^.+@\d+$/.test(id))) throw new DrctlError('INVALID_ARGUMENT', `--select: several points must all be point ids (<disk>@<sequence>), got ${JSON.stringify(text)}`);
    return { selector: 'BY_ID', pointIds: ids, timeMs: 0 };
  }
  const parsed = parseSelector(text);
  return { selector: parsed.selector ?? 'LATEST', pointIds: parsed.pointId ? [parsed.pointId] : [], timeMs: Number(parsed.timeMs ?? 0) };
}

/** Watch options every job-starting command has: --no-wait (or --no-watch) returns once the job is created. */
export function addWaitOptions(command: Command): Command {
  return command.option('--no-wait', 'return once the job is created (drctl job watch JOB follows it)').option('--no-watch', 'the same as --no-wait');
}

/** Follows a job it started (unless told not to wait); prints what the job chose (Job.detail) after it. */
export async function followJob(ctx: Context, job: Job__Output, options: { wait: boolean; watch: boolean }): Promise<void> {
  const wait = options.wait && options.watch;
  await followStartedJob(ctx, job, wait);
  if (!wait || ctx.json) return;
  const final = await ctx.call(ctx.client.getJob, { jobId: job.jobId });
  if (final.detail) process.stdout.write(`${final.detail}\n`);
}

export function register(program: Command): void {
  addWaitOptions(
    program
      .command('failover')
      .description('fail a machine over to its target site: planned (no data loss: shut the source down, drain, prove by hashes) or unplanned (the selected recovery point); commit it afterwards (drctl commit)')
      .argument('<name>', 'name or id of the machine')
      .option('--planned', 'planned: run the source\'s shutdown hook, drain the process server, prove the replica equals the source, then materialise')
      .option('--sync-first', 'planned: synchronize while the source still runs, so the final delta after the shutdown is small')
      .option('--select <selector>', `unplanned: which point (default latest): ${pointSelectionHelp}`, parsePointSelection)
      .option('--no-start', 'do not run the start hook on the master target (start the machine yourself)'),
  ).action(async (name: string, options: { planned?: boolean; syncFirst?: boolean; select?: PointSelection; start: boolean; wait: boolean; watch: boolean }, command: Command) => {
    if (options.planned && options.select) throw new DrctlError('INVALID_ARGUMENT', '--select: a planned failover always takes the latest point (drained and proven equal to the source); leave out --planned to choose a point');
    if (options.syncFirst && !options.planned) throw new DrctlError('INVALID_ARGUMENT', '--sync-first: only with --planned (the source must still run)');
    const ctx = context(command);
    const select = options.select ?? { selector: 'LATEST', pointIds: [], timeMs: 0 };
    const job = await ctx.call(ctx.client.failover, {
      machine: name,
      planned: Boolean(options.planned),
      synchronizeFirst: Boolean(options.syncFirst),
      selector: options.planned ? 'POINT_SELECTOR_UNSPECIFIED' : select.selector,
      pointIds: select.pointIds,
      timeMs: select.timeMs,
      noStart: !options.start,
    });
    await followJob(ctx, job, options);
  });
}
