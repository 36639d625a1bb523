// drctl status: the whole site at a glance: servers and their heartbeats,
// machines, each disk's RPO against its threshold, backlog, apply rate, ETA and
// newest point, and the active health events.
import type { Command } from 'commander';
import type { DiskHealth__Output } from '../../../generated/drplane/v1/DiskHealth';
import type { HealthEvent__Output } from '../../../generated/drplane/v1/HealthEvent';
import { context } from '../client';
import { formatInterval } from '../durations';
import { formatAge, formatBytes, formatDuration, formatTime, print, table } from '../output';

const kindLabels: Record<string, string> = { PROCESS_SERVER: 'ps', MASTER_TARGET: 'mt', AGENT: 'agent' };
const captureLabels: Record<string, string> = { CAPTURE_SCAN: 'scan', CAPTURE_WRITE_THROUGH: 'write-through' };

/** "REPLICATION_REPLICATING" -> "replicating". */
export function shortReplicationState(state: string): string {
  return state.replace(/^REPLICATION_(STATE_)?/, '').toLowerCase() || '-';
}

function rpoCell(disk: DiskHealth__Output): string {
  if (!disk.latestRecoveryPointTimeMs) return '-';
  const rpo = formatDuration(disk.rpoMs);
  return disk.rpoThresholdMs && disk.rpoMs > disk.rpoThresholdMs ? `${rpo} OVER` : rpo;
}

function etaCell(etaMs: number): string {
  if (etaMs < 0) return 'stalled';
  return etaMs > 0 ? formatDuration(etaMs) : '-';
}

export function eventsTable(events: HealthEvent__Output[], now = Date.now()): string {
  return table(
    ['RAISED', 'CODE', 'SEVERITY', 'SUBJECT', 'STATE', 'MESSAGE'],
    events.map((event) => [
      formatTime(event.raisedTimeMs),
      event.code,
      event.severity.replace(/^HEALTH_/, '').toLowerCase(),
      event.subject,
      event.clearedTimeMs ? `cleared ${formatAge(event.clearedTimeMs, now)}` : 'active',
      event.message,
    ]),
  );
}

export function register(program: Command): void {
  program
    .command('status')
    .description('servers, machines, replication health per disk (RPO, backlog, rate, ETA) and active health events')
    .action(async (_options: unknown, command: Command) => {
      const ctx = context(command);
      const [status, policies] = await Promise.all([ctx.call(ctx.client.getStatus, {}), ctx.call(ctx.client.listPolicies, {})]);
      const policyNames = new Map(policies.policies.map((policy) => [policy.policyId, policy.name]));
      print(ctx, status, () => {
        const now = status.timeMs || Date.now();
        const sections: string[] = [];
        sections.push(
          status.servers.length === 0
            ? 'SERVERS: none registered'
            : `SERVERS\n${table(
                ['KIND', 'NAME', 'ADDRESS', 'HEALTHY', 'LAST HEARTBEAT'],
                status.servers.map((server) => [kindLabels[server.kind] ?? server.kind, server.name, server.address, server.healthy ? 'yes' : 'NO', formatAge(server.lastHeartbeatTimeMs, now)]),
              )}`,
        );
        sections.push(
          status.machines.length === 0
            ? 'MACHINES: none (drctl machine add NAME --agent AGENT --disk PATH adds one)'
            : `MACHINES\n${table(
                ['NAME', 'STATE', 'POLICY', 'CAPTURE', 'DISKS', 'REASON'],
                status.machines.map((machine) => [
                  machine.name,
                  machine.state,
                  machine.policyId ? (policyNames.get(machine.policyId) ?? machine.policyId) : '-',
                  captureLabels[machine.captureMode] ?? '-',
                  String(machine.disks.length),
                  machine.stateReason,
                ]),
              )}`,
        );
        if (status.disks.length > 0) {
          sections.push(
            `DISKS\n${table(
              ['DISK', 'MACHINE', 'STATE', 'RPO', 'THRESHOLD', 'BACKLOG', 'APPLY RATE', 'ETA', 'NEWEST POINT', 'REASON'],
              status.disks.map((disk) => [
                disk.diskId,
                disk.machineName,
                shortReplicationState(disk.replicationState),
                rpoCell(disk),
                disk.rpoThresholdMs ? formatInterval(disk.rpoThresholdMs) : '-',
                formatBytes(disk.backlogBytes),
                `${formatBytes(Math.round(disk.applyBytesPerSecond))}/s`,
                etaCell(disk.etaMs),
                disk.latestRecoveryPointId ? `${disk.latestRecoveryPointId} (${formatTime(disk.latestRecoveryPointTimeMs)})` : '-',
                disk.stateReason,
              ]),
            )}`,
          );
        }
        sections.push(status.activeEvents.length === 0 ? 'ACTIVE EVENTS: none' : `ACTIVE EVENTS\n${eventsTable(status.activeEvents, now)}`);
        return sections.join('\n\n');
      });
    });
}
