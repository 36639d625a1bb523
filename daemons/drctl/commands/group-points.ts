// drctl group points NAME: the group-consistent points of a replication group, oldest first.
import type { Command } from 'commander';
import { context } from '../client';
import { formatTime, print, table } from '../output';

export function register(group: Command): void {
  group
    .command('points')
    .description('list the group-consistent points of a replication group')
    .argument('<name>', 'name or id of the group')
    .action(async (name: string, _options: unknown, command: Command) => {
      const ctx = context(command);
      const response = await ctx.call(ctx.client.listGroupPoints, { group: name });
      print(ctx, response, () => {
        if (response.points.length === 0) return `no group points yet for ${name}: drctl group point ${name} takes one`;
        return table(
          ['ID', 'TIME', 'TAG', 'COMPLETE', 'MEMBER POINTS'],
          response.points.map((point) => [point.groupPointId, formatTime(point.timeMs), point.tag || '-', point.complete ? 'yes' : 'no', point.members.map((member) => member.id || `${member.diskId}@(in flight)`).join(', ')]),
        );
      });
    });
}
