// The steps that give a machine's disks their replicas and replication
// sessions, shared by enable and resync (replication.ts), reprotect and
// failback. Each step is idempotent so that a job resumes after a restart:
// - an epoch is persisted before any peer hears of it, and issued once per job;
// - CreateReplica answering ALREADY_EXISTS for the same disk counts as done;
// - StartReplication is idempotent for the same disk and epoch.
// Then the sessions are polled (docs/continuous-replication.md) until each
// disk has its first recovery point, or a newer one after a resync.
import path from 'node:path';
import { DrplaneError, ErrorCode, failedPrecondition, limitExceeded } from '../../../shared/errors';
import { unary } from '../../../shared/grpc';
import { disksPerMasterTargetMax } from '../../../shared/limits';
import { formatBytes } from '../../../shared/sizes';
import type { CaptureStatus__Output } from '../../../generated/drplane/v1/CaptureStatus';
import type { ReplicationStatus__Output } from '../../../generated/drplane/v1/ReplicationStatus';
import type { SyncMode__Output } from '../../../generated/drplane/v1/SyncMode';
import { callPeer, peerName } from '../entities/peers';
import { defaultPolicyName } from '../entities/policies';
import { pointSequence } from '../entities/recovery-points';
import { peerCallTimeoutMs, retryUnavailable } from '../jobs/peer-calls';
import type { RunningJob } from '../jobs/running-job';
import type { WorkflowContext } from '../jobs/workflow-context';
import type { MachineRecord, PolicyRecord, ServerRecord, StepRecord } from '../store/records';
import { initialSyncTag, replicaSeedTimeoutMs, replicationPollIntervalMs, type ReplicationDisk, type ReplicationParams, resyncJobKind, scanProgressAskTimeoutMs } from './replication-jobs';

export class ReplicationSessions {
  constructor(private readonly context: WorkflowContext) {}

  /**
   * Starts (or updates: the same disk and epoch) a disk's replication session
   * with the machine's current policy. Used by the jobs, and to push a policy
   * change (a new crash-consistent interval) to a running session.
   */
  async startSession(machine: MachineRecord, disk: { diskId: string; sourcePath: string; epoch: number }, initialSync: SyncMode__Output, tag = ''): Promise<ReplicationStatus__Output> {
    const processServer = this.context.servers.require(machine.processServerId, 'process server');
    const masterTarget = this.context.servers.require(machine.masterTargetId, 'master target');
    const agent = this.context.servers.require(machine.agentId, 'agent');
    const policy = this.policyOf(machine);
    const client = this.context.peers.processServer(processServer);
    return callPeer(processServer, () =>
      unary(
        client,
        client.startReplication,
        {
          diskId: disk.diskId,
          epoch: disk.epoch,
          agentAddress: agent.address,
          sourcePath: disk.sourcePath,
          masterTargetAddress: masterTarget.address,
          captureMode: machine.captureMode ?? 'CAPTURE_SCAN',
          scanIntervalMs: machine.scanIntervalMs ?? 0,
          crashConsistentIntervalMs: policy.crashConsistentIntervalMs,
          initialSync,
          tag,
        },
        { timeoutMs: peerCallTimeoutMs },
      ),
    );
  }

  /** Sets a replica's retention window on its master target. */
  async configureRetention(machine: MachineRecord, diskId: string, retentionMs: number): Promise<void> {
    const masterTarget = this.context.servers.require(machine.masterTargetId, 'master target');
    const client = this.context.peers.masterTarget(masterTarget);
    await callPeer(masterTarget, () => unary(client, client.configureReplica, { diskId, retentionWindowMs: retentionMs }, { timeoutMs: peerCallTimeoutMs }));
  }

  /** The machine's policy (the default one for a machine enabled before policies existed). */
  policyOf(machine: MachineRecord): PolicyRecord {
    return this.context.policies.find(machine.policyId) ?? this.context.policies.get(defaultPolicyName);
  }

  /**
   * Step create-replicas: one replica disk per source disk on the master
   * target, at a new epoch (a reprotect's is above the master target's too),
   * seeded from the machine's disk there for a reprotect to the original location.
   */
  async createReplicas(job: RunningJob<unknown>, params: ReplicationParams, step: StepRecord): Promise<void> {
    for (const disk of params.disks) {
      if (disk.replicaReady) continue;
      const masterTarget = this.context.servers.require(params.masterTargetId, 'master target');
      if (disk.epoch === 0) {
        const targetEpoch = params.epochAboveTarget ? await retryUnavailable(this.context.log, job, step, () => this.replicaEpoch(masterTarget, disk.diskId)) : 0;
        // Issued once per job and on disk before the master target hears of it.
        job.save(() => (disk.epoch = this.context.machines.issueEpoch(job.record.machineId, disk.diskId, targetEpoch)));
      }
      const created = await retryUnavailable(this.context.log, job, step, () => this.createReplica(masterTarget, disk, this.context.policies.find(params.policyId)?.retentionMs ?? 0));
      job.save(() => {
        disk.replicaReady = true;
        disk.replicaAdopted = created.adopted;
        disk.replicaSeeded = created.seeded;
        step.message = `${params.disks.filter((candidate) => candidate.replicaReady).length} of ${params.disks.length} replicas ready${params.disks.some((candidate) => candidate.seedPath) ? ' (seeded from the disks there)' : ''}`;
      });
    }
  }

  /** The epoch a master target holds a disk at (a retired replica keeps its epoch); 0 when it does not know the disk. */
  async replicaEpoch(masterTarget: ServerRecord, diskId: string): Promise<number> {
    const client = this.context.peers.masterTarget(masterTarget);
    try {
      const replica = await callPeer(masterTarget, () => unary(client, client.getReplica, { diskId }, { timeoutMs: peerCallTimeoutMs }));
      return Number(replica.epoch);
    } catch (error) {
      if (error instanceof DrplaneError && error.code === ErrorCode.NotFound) return 0;
      throw error;
    }
  }

  /** Creates the replica, or adopts the one an earlier attempt made; answers whether it existed, and whether it was made as a copy of the seed. */
  private async createReplica(masterTarget: ServerRecord, disk: ReplicationDisk, retentionWindowMs: number): Promise<{ adopted: boolean; seeded: boolean }> {
    const client = this.context.peers.masterTarget(masterTarget);
    const seedPath = disk.seedPath ?? '';
    try {
      const replica = await callPeer(masterTarget, () =>
        unary(client, client.createReplica, { diskId: disk.diskId, path: disk.replicaPath, diskBytes: disk.diskBytes, epoch: disk.epoch, retentionWindowMs, seedPath }, { timeoutMs: seedPath ? replicaSeedTimeoutMs : peerCallTimeoutMs }),
      );
      // An identical CreateReplica after a restart answers the replica as it is: a session may have applied to it already.
      return { adopted: Boolean(replica.syncId) || Number(replica.appliedSequence) > 0, seeded: Boolean(seedPath) || replica.seeded };
    } catch (error) {
      if (!(error instanceof DrplaneError) || error.code !== ErrorCode.AlreadyExists) throw error;
      // Created before a restart, or by an earlier attempt that failed later: adopt it if it is this disk's.
      let replica;
      try {
        replica = await callPeer(masterTarget, () => unary(client, client.getReplica, { diskId: disk.diskId }, { timeoutMs: peerCallTimeoutMs }));
      } catch (lookup) {
        if (lookup instanceof DrplaneError && lookup.code === ErrorCode.NotFound) throw error;
        throw lookup;
      }
      if (path.posix.normalize(replica.path) !== path.posix.normalize(disk.replicaPath) || Number(replica.diskBytes) !== disk.diskBytes) {
        throw failedPrecondition(`${peerName(masterTarget)} already has a replica of ${disk.diskId} at ${replica.path} (${replica.diskBytes} bytes), not at ${disk.replicaPath} (${disk.diskBytes} bytes): enable again with --datastore ${path.posix.dirname(replica.path)}`);
      }
      const epoch = Number(replica.epoch);
      if (epoch > disk.epoch) throw new DrplaneError(ErrorCode.StaleEpoch, `${peerName(masterTarget)} holds ${disk.diskId} at epoch ${epoch}, newer than ours (${disk.epoch}): another owner took it over`);
      if (epoch < disk.epoch) await callPeer(masterTarget, () => unary(client, client.setEpoch, { diskId: disk.diskId, epoch: disk.epoch }, { timeoutMs: peerCallTimeoutMs }));
      if (retentionWindowMs) await callPeer(masterTarget, () => unary(client, client.configureReplica, { diskId: disk.diskId, retentionWindowMs }, { timeoutMs: peerCallTimeoutMs }));
      // A replica a session already applied to holds older data of the disk: sync it by hashes.
      return { adopted: Boolean(replica.syncId) || Number(replica.appliedSequence) > 0, seeded: replica.seeded };
    }
  }

  /** The initial sync of a session: by hashes for a replica that holds data already (adopted or seeded), in full for a new one. */
  private initialSyncMode(disk: ReplicationDisk): SyncMode__Output {
    return disk.replicaAdopted || disk.replicaSeeded ? 'SYNC_MODE_DELTA' : 'SYNC_MODE_FULL';
  }

  /** Step start-replication: a session per disk on the process server (capture, journal, initial sync). */
  async startSessions(job: RunningJob<unknown>, params: ReplicationParams, step: StepRecord): Promise<void> {
    for (const disk of params.disks) {
      if (disk.started) continue;
      await retryUnavailable(this.context.log, job, step, () => this.startSession(this.context.machines.current(job.record.machineId), disk, this.initialSyncMode(disk), initialSyncTag));
      job.save(() => {
        disk.started = true;
        step.message = `${params.disks.filter((candidate) => candidate.started).length} of ${params.disks.length} sessions started`;
      });
    }
  }

  /** Step initial-sync: polls the sessions until every disk has its first recovery point and replicates. */
  async waitForFirstPoints(job: RunningJob<unknown>, params: ReplicationParams, step: StepRecord): Promise<void> {
    await this.pollSessions(
      job,
      params,
      step,
      async (_disk, status) => (status.state === 'REPLICATION_REPLICATING' && status.latestRecoveryPointId ? status.latestRecoveryPointId : undefined),
      (disk) => this.initialSyncMode(disk),
    );
  }

  /** Step resync: ResyncReplication per disk, then polls until each replicates again with a newer point. */
  async resyncSessions(job: RunningJob<ReplicationParams>, step: StepRecord): Promise<void> {
    const params = job.params;
    const mode: SyncMode__Output = params.full ? 'SYNC_MODE_FULL' : 'SYNC_MODE_DELTA';
    const processServer = this.context.servers.require(params.processServerId, 'process server');
    const client = this.context.peers.processServer(processServer);
    for (const disk of params.disks) {
      if (disk.started) continue;
      const machine = this.context.machines.current(job.record.machineId);
      const answered = await retryUnavailable(this.context.log, job, step, async () => {
        try {
          const before = await callPeer(processServer, () => unary(client, client.getReplication, { diskId: disk.diskId }, { timeoutMs: peerCallTimeoutMs }));
          const after = await callPeer(processServer, () => unary(client, client.resyncReplication, { diskId: disk.diskId, full: params.full }, { timeoutMs: peerCallTimeoutMs }));
          // The process server stops sending before it answers, so every point after the answer's newest
          // comes after the resync (or after the sync already running, which serves the request as well).
          return { pointSequenceBefore: Math.max(pointSequence(before.latestRecoveryPointId), pointSequence(after.latestRecoveryPointId)), resyncsBefore: before.resyncs, sessionBytesSentBefore: Number(before.bytesSent), captureIdBefore: before.captureId };
        } catch (error) {
          if (!(error instanceof DrplaneError) || error.code !== ErrorCode.NotFound) throw error;
          // The process server has no session for the disk: a new one syncs it under a new capture.
          this.context.log.warn({ jobId: job.record.jobId, diskId: disk.diskId }, 'no replication session to resync: starting one');
          await this.startSession(machine, disk, mode, params.full ? 'full-resync' : 'resync');
          return { pointSequenceBefore: pointSequence(machine.disks.find((owned) => owned.diskId === disk.diskId)?.latestRecoveryPointId ?? ''), resyncsBefore: -1, sessionBytesSentBefore: 0, captureIdBefore: '' };
        }
      });
      job.save(() => {
        disk.started = true;
        disk.pointSequenceBefore = answered.pointSequenceBefore;
        disk.resyncsBefore = answered.resyncsBefore;
        disk.sessionBytesSentBefore = answered.sessionBytesSentBefore;
        disk.captureIdBefore = answered.captureIdBefore;
        step.message = `${params.disks.filter((candidate) => candidate.started).length} of ${params.disks.length} resyncs started`;
      });
    }
    await this.pollSessions(job, params, step, async (disk, status) => {
      // Not `resyncs` alone: a delta resync asked for while a sync runs is served by that sync and counts no new one.
      const resynced = pointSequence(status.latestRecoveryPointId) > disk.pointSequenceBefore;
      return status.state === 'REPLICATION_REPLICATING' && resynced ? status.latestRecoveryPointId : undefined;
    }, () => mode);
  }

  /**
   * Polls every pending disk's session until `done` answers its point. A
   * session the process server forgot is started again (same epoch); a failed
   * or stopped one fails the job with its reason; an unreachable process
   * server is waited for.
   */
  private async pollSessions(
    job: RunningJob<unknown>,
    params: ReplicationParams,
    step: StepRecord,
    done: (disk: ReplicationDisk, status: ReplicationStatus__Output) => Promise<string | undefined>,
    restartMode: (disk: ReplicationDisk) => SyncMode__Output,
  ): Promise<void> {
    const pending = () => params.disks.filter((disk) => !disk.completed);
    while (pending().length > 0) {
      const processServer = this.context.servers.require(params.processServerId, 'process server');
      const client = this.context.peers.processServer(processServer);
      // One ListCaptures per agent per round, however many of its disks are pending.
      const round: PollRound = { captures: new Map() };
      for (const disk of pending()) {
        try {
          let status: ReplicationStatus__Output;
          try {
            status = await callPeer(processServer, () => unary(client, client.getReplication, { diskId: disk.diskId }, { timeoutMs: peerCallTimeoutMs }));
          } catch (error) {
            if (!(error instanceof DrplaneError) || error.code !== ErrorCode.NotFound) throw error;
            job.progress(step, { message: `${peerName(processServer)} has no session for ${disk.diskId}: starting it again` });
            status = await this.startSession(this.context.machines.current(job.record.machineId), disk, restartMode(disk), initialSyncTag);
          }
          const epoch = Number(status.epoch);
          if (epoch > disk.epoch) throw new DrplaneError(ErrorCode.StaleEpoch, `${peerName(processServer)} replicates ${disk.diskId} at epoch ${epoch}, newer than ours (${disk.epoch}): another owner took it over`);
          if (epoch < disk.epoch) {
            job.progress(step, { message: `${peerName(processServer)} replicates ${disk.diskId} at an older epoch (${epoch}): starting epoch ${disk.epoch}` });
            status = await this.startSession(this.context.machines.current(job.record.machineId), disk, restartMode(disk), initialSyncTag);
          }
          if (status.state === 'REPLICATION_FAILED') throw new DrplaneError(ErrorCode.Aborted, `replication of ${disk.diskId} failed on ${peerName(processServer)}: ${status.stateReason || 'no reason given'}`);
          if (status.state === 'REPLICATION_STOPPED') throw new DrplaneError(ErrorCode.Aborted, `replication of ${disk.diskId} was stopped on ${peerName(processServer)}${status.stateReason ? `: ${status.stateReason}` : ''}`);
          await this.record(job, params, step, disk, status, await done(disk, status), round);
        } catch (error) {
          if (!(error instanceof DrplaneError) || error.code !== ErrorCode.Unavailable) throw error;
          job.progress(step, { message: `${error.message}; retrying` });
        }
      }
      if (pending().length > 0) await job.wait(replicationPollIntervalMs);
    }
  }

  /** Folds one disk's session status into the job; a disk that is done is persisted at once. */
  private async record(job: RunningJob<unknown>, params: ReplicationParams, step: StepRecord, disk: ReplicationDisk, status: ReplicationStatus__Output, pointId: string | undefined, round: PollRound): Promise<void> {
    const sync = status.sync;
    let detail = '';
    if (status.captureMode === 'CAPTURE_SCAN' && !pointId) {
      // A scan capture's first pass is its sync: how far it has read is on the agent, not the process server.
      const pass = await this.scanPassProgress(job, disk, status, round);
      if (pass) {
        disk.bytesScanned = Math.min(disk.diskBytes, pass.bytesRead);
        detail = pass.detail;
      }
    }
    if (sync && status.captureMode !== 'CAPTURE_SCAN') {
      disk.bytesScanned = Math.min(disk.diskBytes, Number(sync.bytesScanned));
      disk.bytesSent = Number(sync.bytesSent);
      if (!pointId && sync.state === 'SYNC_STATE_RUNNING') detail = `${sync.mode === 'SYNC_MODE_DELTA' ? 'delta' : 'full'} sync: ${formatBytes(Number(sync.bytesChanged))} of data sent`;
    } else {
      // A scan capture is its own sync (no SyncStatus): a new session's (enable, reprotect) bytes on the wire
      // are this job's; a resync's are those sent since it was asked.
      const sessionBytesSent = Number(status.bytesSent);
      // A process server restarted since counts from 0 again: from then on all it sent is this resync's.
      if (disk.sessionBytesSentBefore !== undefined && sessionBytesSent < disk.sessionBytesSentBefore) disk.sessionBytesSentBefore = 0;
      disk.bytesSent = job.record.kind === resyncJobKind ? sessionBytesSent - (disk.sessionBytesSentBefore ?? sessionBytesSent) : sessionBytesSent;
    }
    const totals = () => ({
      bytesDone: params.disks.reduce((sum, candidate) => sum + candidate.bytesScanned, 0),
      bytesSent: params.disks.reduce((sum, candidate) => sum + candidate.bytesSent, 0),
    });
    if (pointId) {
      job.save(() => {
        disk.completed = true;
        disk.bytesScanned = disk.diskBytes;
        disk.recoveryPointId = pointId;
        const { bytesDone, bytesSent } = totals();
        step.bytesDone = bytesDone;
        job.record.bytesSent = bytesSent;
        const doneCount = params.disks.filter((candidate) => candidate.completed).length;
        step.message = `${doneCount} of ${params.disks.length} disks replicating`;
      });
      return;
    }
    const state = status.state.replace(/^REPLICATION_/, '').toLowerCase();
    const backlog = Number(status.backlogBytes) > 0 ? `, ${formatBytes(Number(status.backlogBytes))} to apply` : '';
    const what = detail || `${state}${status.stateReason ? `: ${status.stateReason}` : ''}`;
    job.progress(step, { ...totals(), message: `${disk.diskId} ${what}${backlog}` });
  }

  /**
   * How far the first pass of a disk's new scan capture has read (its sync's
   * progress), asked of the agent; undefined when the capture the session
   * follows is not known there yet (a restart is pending) or the agent does
   * not answer (progress is best effort: the job waits for the session, not for this).
   */
  private async scanPassProgress(job: RunningJob<unknown>, disk: ReplicationDisk, status: ReplicationStatus__Output, round: PollRound): Promise<{ bytesRead: number; detail: string } | undefined> {
    const machine = this.context.machines.current(job.record.machineId);
    const agent = this.context.servers.get(machine.agentId);
    if (!agent) return undefined;
    let asked = round.captures.get(agent.serverId);
    if (!asked) {
      const client = this.context.peers.agent(agent);
      asked = unary(client, client.listCaptures, {}, { timeoutMs: scanProgressAskTimeoutMs }).then(
        (response) => response.captures,
        () => undefined,
      );
      round.captures.set(agent.serverId, asked);
    }
    const captures = await asked;
    if (!captures) return undefined;
    const sourcePath = path.resolve(disk.sourcePath);
    const capture = captures.find((candidate) => candidate.path === sourcePath);
    // Before a resync's new capture runs, the session still follows the old one, whose passes are not this sync.
    if (!capture || !status.captureId || capture.captureId !== status.captureId || capture.captureId === disk.captureIdBefore) return { bytesRead: 0, detail: 'scan capture (re)starting' };
    if (Number(capture.scanPasses) > 0) return { bytesRead: disk.diskBytes, detail: 'first scan pass read; the next quiet pass makes the first point' };
    return { bytesRead: Number(capture.passBytesRead), detail: `first scan pass: ${formatBytes(Number(capture.passBytesRecorded))} of data found` };
  }

  /** The disks' first points after a sync, onto the machine record (call inside a transaction). */
  recordFirstPoints(machine: MachineRecord, params: ReplicationParams): void {
    for (const disk of params.disks) {
      const owned = machine.disks.find((candidate) => candidate.diskId === disk.diskId);
      if (owned && disk.recoveryPointId) owned.latestRecoveryPointId = disk.recoveryPointId;
    }
  }

  /**
   * A master target may take these disks: it answers, is healthy, its
   * retention volume qualified, and it serves at most disksPerMasterTargetMax
   * replicas counting these (retired replicas do not count; disks it holds
   * already are not added twice).
   */
  async checkMasterTargetRoom(masterTarget: ServerRecord, diskIds: string[], forWhat: string): Promise<void> {
    const client = this.context.peers.masterTarget(masterTarget);
    const [status, replicas] = await callPeer(masterTarget, () => Promise.all([unary(client, client.getStatus, {}, { timeoutMs: peerCallTimeoutMs }), unary(client, client.listReplicas, {}, { timeoutMs: peerCallTimeoutMs })]));
    if (!status.retentionVolumeQualified) {
      throw failedPrecondition(`${peerName(masterTarget)} has no qualified retention volume${status.retentionVolumeProblem ? ` (${status.retentionVolumeProblem})` : ''}: fix it and restart the master target, or choose another with --master-target`);
    }
    const live = replicas.replicas.filter((replica) => !replica.retired);
    const held = new Set(live.map((replica) => replica.diskId));
    const adding = diskIds.filter((diskId) => !held.has(diskId)).length;
    const capacity = Math.min(disksPerMasterTargetMax, status.replicaCountMax || disksPerMasterTargetMax);
    if (live.length + adding > capacity) {
      throw limitExceeded(`${peerName(masterTarget)} holds ${live.length} replica disks and serves at most ${capacity}; ${forWhat} needs ${adding} more: choose another master target with --master-target`);
    }
  }
}

/** What one round of polling the sessions asked once and shares between the disks. */
interface PollRound {
  /** Each agent's captures (undefined: it did not answer), by server id. */
  captures: Map<string, Promise<CaptureStatus__Output[] | undefined>>;
}
