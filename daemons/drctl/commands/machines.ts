// drctl machines: every protected (or to be protected) machine.
import type { Command } from 'commander';
import { context } from '../client';
import { formatBytes, print, table } from '../output';
import { directionLabel } from './machine-show';

export function register(program: Command): void {
  program
    .command('machines')
    .description('list the machines')
    .action(async (_options: unknown, command: Command) => {
      const ctx = context(command);
      const response = await ctx.call(ctx.client.listMachines, {});
      print(ctx, response, () => {
        if (response.machines.length === 0) return 'no machines: drctl machine add NAME --agent AGENT --disk PATH adds one';
        return table(
          ['NAME', 'ID', 'STATE', 'DIRECTION', 'DISKS', 'SIZE', 'LATEST POINT', 'REASON'],
          response.machines.map((machine) => [
            machine.name,
            machine.machineId,
            machine.state,
            directionLabel(machine.direction),
            String(machine.disks.length),
            formatBytes(machine.disks.reduce((sum, disk) => sum + disk.diskBytes, 0)),
            machine.disks.length === 1 ? machine.disks[0]!.latestRecoveryPointId || '-' : `${machine.disks.filter((disk) => disk.latestRecoveryPointId).length}/${machine.disks.length} disks`,
            machine.stateReason,
          ]),
        );
      });
    });
}
