// drctl machine show NAME: a machine, its disks and where they replicate.
import type { Command } from 'commander';
import type { FailoverState__Output } from '../../../generated/drplane/v1/FailoverState';
import type { Machine__Output } from '../../../generated/drplane/v1/Machine';
import type { MachineSite__Output } from '../../../generated/drplane/v1/MachineSite';
import { context } from '../client';
import { fields, formatBytes, formatDuration, formatTime, print, table } from '../output';

const captureLabels: Record<string, string> = { CAPTURE_SCAN: 'scan', CAPTURE_WRITE_THROUGH: 'write-through' };

/** FORWARD: home -> recovery (as enabled); REVERSE: recovery -> home (after a failover's commit). */
export function directionLabel(direction: string): string {
  if (direction === 'FORWARD') return 'home -> recovery';
  if (direction === 'REVERSE') return 'recovery -> home';
  return '-';
}

/** What the operator can do next in a state (docs/failover.md, "States"). */
const nextByState: Record<string, string> = {
  FAILED_OVER: 'commit pending: drctl commit, or drctl change-point',
  COMMITTED: 'runs at the site it failed over to, unprotected: drctl reprotect',
};

function site(label: string, value: MachineSite__Output | null): [string, string][] {
  if (!value) return [];
  const servers = [value.agentId && `agent ${value.agentId}`, value.processServerId && `process server ${value.processServerId}`, value.masterTargetId && `master target ${value.masterTargetId}`].filter(Boolean).join(', ');
  return [
    [label, servers || '-'],
    [`${label} disks`, value.diskPaths.filter(Boolean).join(', ') || '-'],
  ];
}

function failoverLine(value: FailoverState__Output | null): string {
  if (!value) return '-';
  const points = value.recoveryPointIds.length ? value.recoveryPointIds.join(', ') : 'choosing';
  return `${value.jobId} (${value.planned ? 'planned' : value.selector}): ${points} -> ${value.diskPaths.join(', ')}`;
}

export function renderMachine(machine: Machine__Output, policyName = machine.policyId): string {
  const head = fields([
    ['name', machine.name],
    ['id', machine.machineId],
    ['state', machine.state + (machine.stateReason ? ` (${machine.stateReason})` : nextByState[machine.state] ? ` (${nextByState[machine.state]})` : '')],
    ['direction', directionLabel(machine.direction)],
    ...(machine.restartableJobId ? [['restartable job', `${machine.restartableJobId} (drctl job restart ${machine.restartableJobId})`] as [string, string]] : []),
    ['agent', machine.agentId || '-'],
    ['process server', machine.processServerId || '-'],
    ['master target', machine.masterTargetId || '-'],
    ['datastore', machine.datastore || '-'],
    ['policy', policyName || '-'],
    ['capture', captureLabels[machine.captureMode] ?? '-'],
    ['group', machine.groupId || '-'],
    ['created', formatTime(machine.createdTimeMs)],
    ...site('home', machine.home),
    ...site('recovery', machine.recovery),
    ...(machine.failover ? [['failover', failoverLine(machine.failover)] as [string, string]] : []),
    ...(machine.testFailover ? [['test failover', failoverLine(machine.testFailover)] as [string, string]] : []),
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
