// drctl points NAME [--disk ID]: the recovery points of a machine's disks.
import type { Command } from 'commander';
import { context } from '../client';
import { formatTime, print, table } from '../output';

const kindLabels: Record<string, string> = { CRASH_CONSISTENT: 'crash-consistent', APP_CONSISTENT: 'app-consistent', GROUP_CONSISTENT: 'group-consistent' };

export function register(program: Command): void {
  program
    .command('points')
    .description('list the recovery points of a machine')
    .argument('<name>', 'name or id of the machine')
    .option('--disk <id>', 'only this disk')
    .action(async (name: string, options: { disk?: string }, command: Command) => {
      const ctx = context(command);
      const response = await ctx.call(ctx.client.listRecoveryPoints, { machine: name, diskId: options.disk ?? '' });
      print(ctx, response, () => {
        if (response.recoveryPoints.length === 0) return `no recovery points yet for ${name}`;
        return table(
          ['ID', 'KIND', 'SOURCE TIME', 'APPLIED TIME', 'TAG'],
          response.recoveryPoints.map((point) => [point.id, kindLabels[point.kind] ?? point.kind, formatTime(point.sourceTimeMs), formatTime(point.appliedTimeMs), point.tag]),
        );
      });
    });
}
