// drctl group point NAME [--tag T]: take a group-consistent point now (a brief
// barrier on every member), and show its member points.
import type { Command } from 'commander';
import type { GroupPoint__Output } from '../../../generated/drplane/v1/GroupPoint';
import { context } from '../client';
import { fields, formatTime, print } from '../output';
import { pointsTable } from './points';

/** The barrier holds writes at most 5 s, then the server waits up to 30 s for the members' points. */
const groupPointCallTimeoutMs = 2 * 60_000;

export function renderGroupPoint(point: GroupPoint__Output): string {
  const head = fields([
    ['group point', point.groupPointId],
    ['group', point.groupId],
    ['barrier', point.barrierId],
    ['time', formatTime(point.timeMs)],
    ['tag', point.tag || '-'],
    ['complete', point.complete ? 'yes: every member point is applied' : 'not yet: some member points are still in flight (drctl group points shows them when they land)'],
  ]);
  return `${head}\n\n${pointsTable(point.members)}`;
}

export function register(group: Command): void {
  group
    .command('point')
    .description('take a group-consistent point of a replication group now')
    .argument('<name>', 'name or id of the group')
    .option('--tag <tag>', 'tag of the point', '')
    .action(async (name: string, options: { tag: string }, command: Command) => {
      const ctx = context(command);
      const point = await ctx.call(ctx.client.takeGroupPoint, { group: name, tag: options.tag }, { timeoutMs: groupPointCallTimeoutMs });
      print(ctx, point, () => renderGroupPoint(point));
    });
}
