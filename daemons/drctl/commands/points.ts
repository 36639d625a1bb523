// drctl points NAME [--disk ID] [--select SELECTOR]: the recovery points of a
// machine's disks, or the one point per disk a selector chooses.
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import type { RecoveryPoint__Output } from '../../../generated/drplane/v1/RecoveryPoint';
import type { SelectMachinePointRequest } from '../../../generated/drplane/v1/SelectMachinePointRequest';
import { context } from '../client';
import { formatTime, print, table } from '../output';

const kindLabels: Record<string, string> = { CRASH_CONSISTENT: 'crash-consistent', APP_CONSISTENT: 'app-consistent', GROUP_CONSISTENT: 'group-consistent' };
/** LATEST drains the process server, which may take a while with a large backlog (the server allows 10 minutes). */
const selectCallTimeoutMs = 11 * 60_000;

const selectorWords: Record<string, SelectMachinePointRequest['selector']> = {
  latest: 'LATEST',
  'latest-processed': 'LATEST_PROCESSED',
  'latest-app-consistent': 'LATEST_APP_CONSISTENT',
  'latest-crash-consistent': 'LATEST_CRASH_CONSISTENT',
};

export const selectorHelp =
  'latest (drain the process server first: lowest RPO), latest-processed (newest applied: lowest RTO), latest-app-consistent, latest-crash-consistent, a point id (<disk>@<sequence>), or <=TIME (newest at or before TIME: ISO 8601 like 2024-05-01T13:45:00Z, or unix ms)';

/** The SelectRecoveryPoint fields for a --select value. */
export function parseSelector(text: string): Pick<SelectMachinePointRequest, 'selector' | 'pointId' | 'timeMs'> {
  const word = selectorWords[text];
  if (word) return { selector: word };
  if (text.startsWith('<=')) {
    const time = text.slice(2);
    const timeMs = /^\d+$/.test(time) ? Number(time) : /^\d{4}-\d{2}-\d{2}/.test(time) ? Date.parse(time) : NaN;
    if (!Number.isSafeInteger(timeMs) || timeMs <= 0) throw new InvalidArgumentError(`not a time: ${JSON.stringify(time)} (ISO 8601, e.g. 2024-05-01T13:45:00Z, or unix milliseconds)`);
    return { selector: 'AT_OR_BEFORE', timeMs };
  }
  if (/^.+@\d+$/.test(text)) return { selector: 'BY_ID', pointId: text };
  throw new InvalidArgumentError(`not a selector: ${JSON.stringify(text)}; one of ${selectorHelp}`);
}

export function pointsTable(points: RecoveryPoint__Output[]): string {
  return table(
    ['ID', 'KIND', 'SOURCE TIME', 'APPLIED TIME', 'CHANGE', 'TAG'],
    points.map((point) => [point.id || '(not applied yet)', kindLabels[point.kind] ?? point.kind, formatTime(point.sourceTimeMs), formatTime(point.appliedTimeMs), point.changeSequence ? String(point.changeSequence) : '-', point.tag]),
  );
}

export function register(program: Command): void {
  program
    .command('points')
    .description('list the recovery points of a machine, or choose one per disk with --select')
    .argument('<name>', 'name or id of the machine')
    .option('--disk <id>', 'only this disk')
    .option('--select <selector>', selectorHelp, parseSelector)
    .action(async (name: string, options: { disk?: string; select?: ReturnType<typeof parseSelector> }, command: Command) => {
      const ctx = context(command);
      const response = options.select
        ? await ctx.call(ctx.client.selectRecoveryPoint, { machine: name, diskId: options.disk ?? '', ...options.select }, { timeoutMs: selectCallTimeoutMs })
        : await ctx.call(ctx.client.listRecoveryPoints, { machine: name, diskId: options.disk ?? '' });
      print(ctx, response, () => {
        if (response.recoveryPoints.length === 0) return `no recovery points yet for ${name}`;
        return pointsTable(response.recoveryPoints);
      });
    });
}
