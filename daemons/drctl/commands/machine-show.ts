// drctl machine show NAME: a machine, its disks and where they replicate.
import type { Command } from 'commander';
import type { Machine__Output } from '../../../generated/drplane/v1/Machine';
import { context } from '../client';
import { fields, formatBytes, formatDuration, formatTime, print, table } from '../output';

const captureLabels: Record<string, string> = { CAPTURE_SCAN: 'scan', CAPTURE_WRITE_THROUGH: 'write-through' };

export function renderMachine(machine: Machine__Output, policyName = machine.policyId): string {
  const head = fields([
    ['name', machine.name],
    ['id', machine.machineId],
    ['state', machine.state + (machine.stateReason ? ` (${machine.stateReason})` : '')],
    ['agent', machine.agentId],
    ['process server', machine.processServerId || '-'],
    ['master target', machine.masterTargetId || '-'],
    ['datastore', machine.datastore || '-'],
    ['policy', policyName || '-'],
    ['capture', captureLabels[machine.captureMode] ?? '-'],
    ['group', machine.groupId || '-'],
    ['created', formatTime(machine.createdTimeMs)],
  ]);
  const disks = table(
    ['DISK', 'SOURCE', 'SIZE', 'EPOCH', 'REPLICA', 'RPO', 'BACKLOG', 'LATEST POINT'],
    machine.disks.map((disk) => [
      disk.diskId,
      disk.sourcePath,
      formatBytes(disk.diskBytes),
      String(disk.epoch),
      disk.replicaPath || '-',
      disk.rpoMs ? formatDuration(disk.rpoMs) : '-',
      formatBytes(disk.backlogBytes),
      disk.latestRecoveryPointId || '-',
    ]),
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
      const policy = found.policyId ? await ctx.call(ctx.client.getPolicy, { policy: found.policyId }).catch(() => undefined) : undefined;
      print(ctx, found, () => renderMachine(found, policy?.name));
    });
}
