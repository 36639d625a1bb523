// drctl plan failover NAME [--planned] [--select SELECTOR] [--no-start]: fail
// every member over in order, as one job watched with a progress bar (exit 1
// unless it succeeds). Groups fail over at their newest complete group point.
import { Command, InvalidArgumentError } from 'commander';
import { context } from '../client';
import { followStartedJob } from '../watch';
import { parseSelector } from './points';

/** LATEST drains every process server first: the call may take a while before the job exists. */
const planFailoverCallTimeoutMs = 5 * 60_000;

export const planSelectorHelp =
  'unplanned: latest (default; drains the process servers first), latest-processed, latest-app-consistent, latest-crash-consistent, or <=TIME (ISO 8601 or unix ms); groups take their newest complete group point (at or before TIME with <=TIME)';

function parsePlanSelector(text: string): ReturnType<typeof parseSelector> {
  const parsed = parseSelector(text);
  if (parsed.selector === 'BY_ID') throw new InvalidArgumentError(`a point id names one disk; a plan takes ${planSelectorHelp}`);
  return parsed;
}

export function register(plan: Command): void {
  plan
    .command('failover')
    .description('fail every member of a recovery plan over, in order, as one job')
    .argument('<name>', 'name or id of the plan')
    .option('--planned', 'no data loss: each source is shut down, drained and proven equal by hashes before its machine starts at the recovery site')
    .option('--select <selector>', planSelectorHelp, parsePlanSelector)
    .option('--no-start', "do not run the master targets' start hook (the operator starts the machines)")
    .option('--no-wait', 'return once the job is created (drctl job watch JOB follows it)')
    .option('--no-watch', 'the same as --no-wait')
    .action(async (name: string, options: { planned?: boolean; select?: ReturnType<typeof parseSelector>; start: boolean; wait: boolean; watch: boolean }, command: Command) => {
      if (options.planned && options.select) command.error('error: --select is for an unplanned failover; a planned one takes the latest point after the drain');
      const ctx = context(command);
      const job = await ctx.call(
        ctx.client.failoverRecoveryPlan,
        { plan: name, planned: Boolean(options.planned), selector: options.select?.selector ?? 'POINT_SELECTOR_UNSPECIFIED', timeMs: options.select?.timeMs ?? 0, noStart: !options.start },
        { timeoutMs: planFailoverCallTimeoutMs },
      );
      await followStartedJob(ctx, job, options.wait && options.watch);
    });
}
