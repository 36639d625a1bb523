// drctl machine show NAME: a machine, its disks and where they replicate.
import type { Command } from 'commander';
import type { Machine__Output } from '../../../generated/drplane/v1/Machine';
import { context } from '../client';
import { fields, formatBytes, formatTime, print, table } from '../output';

export function renderMachine(machine: Machine__Output): string {
  const head = fields([
    ['name', machine.name],
    ['id', machine.machineId],
    ['state', machine.state + (machine.stateReason ? ` (${machine.stateReason})` : '')],
    ['agent', machine.agentId],
    ['process server', machine.processServerId || '-'],
    ['master target', machine.masterTargetId || '-'],
    ['datastore', machine.datastore || '-'],
    ['created', formatTime(machine.createdTimeMs)],
  ]);
  const disks = table(
    ['DISK', 'SOURCE', 'SIZE', 'EPOCH', 'REPLICA', 'LATEST POINT'],
    machine.disks.map((disk) => [disk.diskId, disk.sourcePath, formatBytes(disk.diskBytes), String(disk.epoch), disk.replicaPath || '-', disk.latestRecoveryPointId || '-']),
  );
  return `${head}\n\n${disks}`;
}

export function register(machine: Command): void {
  machine
    .command('show')
    .description('show a machine and its disks')
    .argument('<name>', 'name or id of the machine')
    .action(async (name: string, _options: unknown, command: Command) => {
      const ctx = context(command);
      const found = await ctx.call(ctx.client.getMachine, { machine: name });
      print(ctx, found, () => renderMachine(found));
    });
}
