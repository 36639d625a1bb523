// Replication health: a monitor asks every process server for its sessions
// (ListReplications) every statusPollIntervalMs and keeps each disk's RPO,
// backlog, rates and newest point in memory (DiskHealth). When a process
// server does not answer, the master target is asked for the newest point
// applied, so the RPO keeps growing as it really does. From what it sees the
// monitor raises and clears health events, and pushes again a policy value a
// peer missed (crash-consistent interval, retention window).
import { unary } from '../../shared/grpc';
import { retentionVolumeLowFreeRatio, sourceClockSkewMsMax } from '../../shared/limits';
import { formatBytes } from '../../shared/sizes';
import type { Logger } from '../../shared/log';
import type { DiskHealth } from '../../generated/drplane/v1/DiskHealth';
import type { Machine } from '../../generated/drplane/v1/Machine';
import type { ReplicationStatus__Output } from '../../generated/drplane/v1/ReplicationStatus';
import type { SystemStatus } from '../../generated/drplane/v1/SystemStatus';
import type { HealthEvents } from './entities/health-events';
import { type Machines, replicating } from './entities/machines';
import { callPeer, peerName, type Peers } from './entities/peers';
import { statusPollIntervalMs } from './config';
import { formatMs } from './entities/policies';
import type { ReplicationSessions } from './workflows/replication-sessions';
import { heartbeatsMissedMax, kindLabel, type Servers } from './entities/servers';
import { type DiskRecord, HealthCode, type MachineRecord, type PolicyRecord } from './store/records';
import { errorMessage } from './jobs/peer-calls';

/** Deadline of each status call: a peer that hangs must not stall the monitor. */
export const statusCallTimeoutMs = 3_000;
/** A policy value a peer did not take is pushed again at most this often per disk. */
export const policyRepushIntervalMs = 10_000;
/** A process server state_reason that says its cache (journal) is full. */
const cacheFullPattern = /cache\b.*\bfull|full\b.*\bcache/i;

interface LiveDisk {
  health: DiskHealth & { rpoMs: number; latestRecoveryPointTimeMs: number; reportedTimeMs: number };
  /** When the CS last had an answer about this disk (process server or master target). */
  observedTimeMs: number;
  /** Retention window last accepted by the master target (0: not yet, in this process). */
  retentionPushedMs: number;
  retentionAttemptMs: number;
  crashIntervalAttemptMs: number;
}

export class HealthMonitor {
  private readonly disks = new Map<string, LiveDisk>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;
  private readonly startedTimeMs = Date.now();

  constructor(
    private readonly machines: Machines,
    private readonly servers: Servers,
    private readonly peers: Peers,
    private readonly sessions: ReplicationSessions,
    private readonly events: HealthEvents,
    private readonly log: Logger,
    private readonly pollIntervalMs = statusPollIntervalMs,
  ) {}

  start(): void {
    this.schedule();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.running;
  }

  /** One round: servers' heartbeats, then every process server's sessions. Never throws. */
  async poll(): Promise<void> {
    const now = Date.now();
    try {
      this.checkHeartbeats(now);
      const machines = this.machines.list().filter(replicating);
      const byProcessServer = new Map<string, MachineRecord[]>();
      for (const machine of machines) byProcessServer.set(machine.processServerId, [...(byProcessServer.get(machine.processServerId) ?? []), machine]);
      await Promise.all([...[...byProcessServer].map(([processServerId, members]) => this.pollProcessServer(processServerId, members)), this.pollRetentionVolumes(now)]);
      const monitored = new Set(machines.flatMap((machine) => machine.disks.map((disk) => disk.diskId)));
      for (const diskId of [...this.disks.keys()]) if (!monitored.has(diskId)) this.disks.delete(diskId);
      // A disk no longer replicated has no RPO to be over.
      for (const subject of this.events.activeSubjects(HealthCode.RpoThresholdExceeded)) if (!monitored.has(subject)) this.events.clear(HealthCode.RpoThresholdExceeded, subject);
    } catch (error) {
      this.log.error({ err: error }, 'health monitor round failed');
    }
  }

  /** The live view of a disk, if it is monitored. */
  diskHealth(diskId: string): DiskHealth | undefined {
    return this.disks.get(diskId)?.health;
  }

  /** A machine as stored, with its disks' live RPO, backlog and newest point. */
  decorate(machine: Machine): Machine {
    return {
      ...machine,
      disks: (machine.disks ?? []).map((disk) => {
        const live = disk.diskId ? this.disks.get(disk.diskId)?.health : undefined;
        if (!live) return disk;
        return { ...disk, rpoMs: live.rpoMs, backlogBytes: live.backlogBytes, latestRecoveryPointId: live.latestRecoveryPointId || disk.latestRecoveryPointId };
      }),
    };
  }

  status(): SystemStatus {
    const now = Date.now();
    const machines = this.machines.list();
    const disks: DiskHealth[] = [];
    for (const machine of machines) for (const disk of machine.disks) if (this.disks.has(disk.diskId)) disks.push(this.disks.get(disk.diskId)!.health);
    return {
      timeMs: now,
      servers: this.servers.list().map((server) => this.servers.toProto(server, now)),
      machines: machines.map((machine) => this.decorate(this.machines.toProto(machine))),
      disks,
      activeEvents: this.events.list({ activeOnly: true, limit: Number.MAX_SAFE_INTEGER }).map((event) => this.events.toProto(event)),
    };
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.poll().finally(() => {
        this.running = undefined;
        this.schedule();
      });
    }, this.pollIntervalMs);
    this.timer.unref();
  }

  /** HEARTBEAT_MISSED while a registered server is not healthy; cleared at its next heartbeat. */
  private checkHeartbeats(now: number): void {
    // Right after a restart the heartbeats held in memory are gone and the stored ones are old: give every server the time to send one.
    if (now - this.startedTimeMs < heartbeatsMissedMax * this.servers.heartbeatIntervalMs) return;
    for (const server of this.servers.list()) {
      if (this.servers.healthy(server, now)) {
        this.events.clear(HealthCode.HeartbeatMissed, server.serverId);
        continue;
      }
      this.events.raise({
        code: HealthCode.HeartbeatMissed,
        subject: server.serverId,
        severity: 'HEALTH_ERROR',
        message: `${peerName(server)} sent no heartbeat for ${formatMs(Math.round((now - server.lastHeartbeatTimeMs) / 1000) * 1000)} (expected every ${formatMs(this.servers.heartbeatIntervalMs)}): is it running and able to reach this configuration server?`,
      });
    }
  }

  /**
   * RETENTION_VOLUME_LOW while a master target's retention volume has less
   * than retentionVolumeLowFreeRatio of its capacity free (it refuses batches
   * whose before-images do not fit, and does not start when full); cleared
   * once it has room again. A master target that does not answer keeps its
   * event as it was (HEARTBEAT_MISSED says it is away).
   */
  private async pollRetentionVolumes(now: number): Promise<void> {
    const masterTargets = this.servers.list().filter((server) => server.kind === 'MASTER_TARGET' && this.servers.healthy(server, now));
    await Promise.all(
      masterTargets.map(async (server) => {
        let status;
        try {
          const client = this.peers.masterTarget(server);
          status = await callPeer(server, () => unary(client, client.getStatus, {}, { timeoutMs: statusCallTimeoutMs }));
        } catch {
          return;
        }
        const capacity = Number(status.retentionCapacityBytes);
        const free = Number(status.retentionFreeBytes);
        if (capacity > 0 && free < capacity * retentionVolumeLowFreeRatio) {
          this.events.raise({
            code: HealthCode.RetentionVolumeLow,
            subject: server.serverId,
            severity: 'HEALTH_ERROR',
            message: `${peerName(server)}: its retention volume ${status.retentionDir} has ${formatBytes(free)} free of ${formatBytes(capacity)} (under ${retentionVolumeLowFreeRatio * 100} %): batches that do not fit are refused and replication stops; shorten retention windows (drctl policy update, or ConfigureReplica) so the pruner frees space, or grow the volume`,
          });
        } else this.events.clear(HealthCode.RetentionVolumeLow, server.serverId);
      }),
    );
  }

  private async pollProcessServer(processServerId: string, machines: MachineRecord[]): Promise<void> {
    const processServer = this.servers.get(processServerId);
    let statuses: Map<string, ReplicationStatus__Output>;
    try {
      if (!processServer) throw new Error(`process server ${processServerId} is no longer registered`);
      const client = this.peers.processServer(processServer);
      const response = await callPeer(processServer, () => unary(client, client.listReplications, {}, { timeoutMs: statusCallTimeoutMs }));
      statuses = new Map(response.replications.map((status) => [status.diskId, status]));
    } catch (error) {
      const reason = `${processServer ? `${kindLabel.PROCESS_SERVER} ${processServer.name}` : processServerId} did not answer: ${errorMessage(error)}`;
      await Promise.all(machines.map((machine) => this.pollMasterTarget(machine, reason)));
      return;
    }
    const now = Date.now();
    for (const machine of machines) {
      const policy = this.sessions.policyOf(machine);
      for (const disk of machine.disks) {
        const status = statuses.get(disk.diskId);
        if (status) this.fromSession(machine, disk, policy, status, now);
        else this.unknown(machine, disk, policy, 'REPLICATION_STATE_UNSPECIFIED', `${processServer!.name} has no session for this disk`, now);
      }
    }
  }

  /** The process server is away: the newest point applied, from the master target, keeps the RPO true. */
  private async pollMasterTarget(machine: MachineRecord, reason: string): Promise<void> {
    const policy = this.sessions.policyOf(machine);
    const masterTarget = this.servers.get(machine.masterTargetId);
    await Promise.all(
      machine.disks.map(async (disk) => {
        const now = Date.now();
        try {
          if (!masterTarget) throw new Error(`master target ${machine.masterTargetId} is no longer registered`);
          const client = this.peers.masterTarget(masterTarget);
          const replica = await callPeer(masterTarget, () => unary(client, client.getReplica, { diskId: disk.diskId }, { timeoutMs: statusCallTimeoutMs }));
          const live = this.live(machine, disk, policy, now);
          const pointTimeMs = Number(replica.latestRecoveryPointTimeMs);
          if (pointTimeMs > 0) {
            live.health.latestRecoveryPointId = replica.latestRecoveryPointId;
            live.health.latestRecoveryPointTimeMs = pointTimeMs;
            live.health.rpoMs = Math.max(0, now - pointTimeMs);
            live.observedTimeMs = now;
          }
          this.unknown(machine, disk, policy, 'UNKNOWN', reason, now);
        } catch (error) {
          this.unknown(machine, disk, policy, 'UNKNOWN', `${reason}; the master target did not answer either: ${errorMessage(error)}`, now);
        }
      }),
    );
  }

  private live(machine: MachineRecord, disk: DiskRecord, policy: PolicyRecord, now: number): LiveDisk {
    let live = this.disks.get(disk.diskId);
    if (!live) {
      live = {
        health: {
          diskId: disk.diskId,
          machineId: machine.machineId,
          machineName: machine.name,
          replicationState: '',
          stateReason: '',
          rpoMs: 0,
          rpoThresholdMs: policy.rpoThresholdMs,
          backlogBytes: 0,
          applyBytesPerSecond: 0,
          etaMs: 0,
          latestRecoveryPointId: disk.latestRecoveryPointId,
          latestRecoveryPointTimeMs: 0,
          reportedTimeMs: 0,
        },
        observedTimeMs: now,
        retentionPushedMs: 0,
        retentionAttemptMs: 0,
        crashIntervalAttemptMs: 0,
      };
      this.disks.set(disk.diskId, live);
    }
    live.health.machineName = machine.name;
    live.health.rpoThresholdMs = policy.rpoThresholdMs;
    return live;
  }

  private fromSession(machine: MachineRecord, disk: DiskRecord, policy: PolicyRecord, status: ReplicationStatus__Output, now: number): void {
    const live = this.live(machine, disk, policy, now);
    const health = live.health;
    health.replicationState = status.state;
    health.stateReason = status.stateReason;
    health.backlogBytes = Number(status.backlogBytes);
    health.applyBytesPerSecond = status.applyBytesPerSecond;
    health.etaMs = Number(status.etaMs);
    health.reportedTimeMs = Number(status.updatedTimeMs) || now;
    const pointTimeMs = Number(status.latestRecoveryPointTimeMs);
    if (status.latestRecoveryPointId) health.latestRecoveryPointId = status.latestRecoveryPointId;
    if (pointTimeMs > 0) {
      health.latestRecoveryPointTimeMs = pointTimeMs;
      // The process server's own RPO: computed on its clock, at the time it answered.
      health.rpoMs = Math.max(0, Number(status.rpoMs) || now - pointTimeMs);
    } else if (health.latestRecoveryPointTimeMs > 0) {
      // A restarted process server does not know the newest point until the master target answers it:
      // the point we knew is still the newest, so the RPO keeps growing from it.
      health.rpoMs = Math.max(0, now - health.latestRecoveryPointTimeMs);
    }
    live.observedTimeMs = now;
    this.judge(machine, disk, live, policy, status);
    if (machine.state === 'PROTECTED') this.repushPolicy(machine, disk, live, policy, status, now);
  }

  /** Nothing new is known: the RPO grows from the last value seen, as the source keeps moving away from the newest point. */
  private unknown(machine: MachineRecord, disk: DiskRecord, policy: PolicyRecord, state: string, reason: string, now: number): void {
    const live = this.live(machine, disk, policy, now);
    live.health.replicationState = state;
    live.health.stateReason = reason;
    if (live.health.latestRecoveryPointTimeMs > 0) {
      live.health.rpoMs += Math.max(0, now - live.observedTimeMs);
      live.observedTimeMs = now;
    }
    this.judge(machine, disk, live, policy, undefined);
  }

  /** Raises and clears the events of one disk. */
  private judge(machine: MachineRecord, disk: DiskRecord, live: LiveDisk, policy: PolicyRecord, status: ReplicationStatus__Output | undefined): void {
    const { rpoMs } = live.health;
    // An RPO exists once the disk has a point; until the machine is protected it is still in its initial sync.
    const replicated = machine.state === 'PROTECTED' || machine.state === 'RESYNC_REQUIRED';
    if (replicated && live.health.latestRecoveryPointTimeMs > 0 && rpoMs > policy.rpoThresholdMs) {
      this.events.raise({
        code: HealthCode.RpoThresholdExceeded,
        subject: disk.diskId,
        machineId: machine.machineId,
        severity: 'HEALTH_WARNING',
        message: `the RPO of ${disk.diskId} (machine ${machine.name}) reached ${formatMs(Math.round(rpoMs / 1000) * 1000)}, over the threshold of ${formatMs(policy.rpoThresholdMs)} (policy ${policy.name}): ${live.health.stateReason || `replication is ${live.health.replicationState}`}`,
      });
    } else if (rpoMs <= policy.rpoThresholdMs || !replicated) {
      this.events.clear(HealthCode.RpoThresholdExceeded, disk.diskId);
    }
    if (!status) return;
    if (status.state === 'REPLICATION_FAILED') {
      this.events.raise({ code: HealthCode.ReplicationFailed, subject: disk.diskId, machineId: machine.machineId, severity: 'HEALTH_ERROR', message: `replication of ${disk.diskId} (machine ${machine.name}) failed: ${status.stateReason || 'no reason given'}` });
    } else this.events.clear(HealthCode.ReplicationFailed, disk.diskId);
    if (cacheFullPattern.test(status.stateReason)) {
      this.events.raise({ code: HealthCode.CacheFull, subject: disk.diskId, machineId: machine.machineId, severity: 'HEALTH_WARNING', message: `the process server's cache is full for ${disk.diskId} (machine ${machine.name}): ${status.stateReason}` });
    } else this.events.clear(HealthCode.CacheFull, disk.diskId);
    const aheadMs = Number(status.sourceClockAheadMs);
    if (aheadMs > 0) {
      this.events.raise({
        code: HealthCode.SourceClockSkew,
        subject: disk.diskId,
        machineId: machine.machineId,
        severity: 'HEALTH_WARNING',
        message: `the clock of ${machine.name}'s agent is ${formatMs(Math.round(aheadMs / 1000) * 1000)} ahead of its process server's, more than ${formatMs(sourceClockSkewMsMax)}: the points of ${disk.diskId} are dated with the process server's clock; fix the agent's time (NTP)`,
      });
    } else this.events.clear(HealthCode.SourceClockSkew, disk.diskId);
  }

  /** A session or replica that missed a policy change (its peer was away) gets it again. */
  private repushPolicy(machine: MachineRecord, disk: DiskRecord, live: LiveDisk, policy: PolicyRecord, status: ReplicationStatus__Output, now: number): void {
    const log = this.log.child({ machine: machine.name, diskId: disk.diskId, policy: policy.name });
    const reported = Number(status.crashConsistentIntervalMs);
    if (reported > 0 && reported !== policy.crashConsistentIntervalMs && now - live.crashIntervalAttemptMs >= policyRepushIntervalMs && Number(status.epoch) === disk.epoch) {
      live.crashIntervalAttemptMs = now;
      void this.sessions.startSession(machine, disk, 'SYNC_MODE_DELTA').then(
        () => log.info({ from: reported, to: policy.crashConsistentIntervalMs }, 'crash-consistent interval pushed again to the process server'),
        (error: unknown) => log.warn({ err: errorMessage(error) }, 'could not push the crash-consistent interval'),
      );
    }
    if (live.retentionPushedMs !== policy.retentionMs && now - live.retentionAttemptMs >= policyRepushIntervalMs) {
      live.retentionAttemptMs = now;
      const retentionMs = policy.retentionMs;
      void this.sessions.configureRetention(machine, disk.diskId, retentionMs).then(
        () => {
          live.retentionPushedMs = retentionMs;
          log.debug({ retentionMs }, 'retention window confirmed on the master target');
        },
        (error: unknown) => log.warn({ err: errorMessage(error) }, 'could not set the retention window on the master target'),
      );
    }
  }
}
