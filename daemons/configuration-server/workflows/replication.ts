// The replication workflows. Enabling replication of a machine creates its
// replicas, starts a continuous replication session per disk on the process
// server (docs/continuous-replication.md), and waits for the first recovery
// point after the initial sync; resyncing asks the sessions to sync again
// under their running captures. Reprotect and failback (reprotect.ts,
// failback.ts) run the same three steps toward the other site; the steps are
// in replication-sessions.ts.
import path from 'node:path';
import { failedPrecondition, invalidArgument } from '../../../shared/errors';
import { unary } from '../../../shared/grpc';
import { pathLengthMax, scanIntervalMsMax, scanIntervalMsMin } from '../../../shared/limits';
import type { CaptureMode__Output } from '../../../generated/drplane/v1/CaptureMode';
import { recoveredDiskPath, replicaDiskPath, replicating, withSites } from '../entities/machines';
import { callPeer } from '../entities/peers';
import { defaultPolicyName } from '../entities/policies';
import { errorMessage, peerCallTimeoutMs } from '../jobs/peer-calls';
import { refuseBusyOrUnfinished } from '../jobs/refusals';
import type { WorkflowContext } from '../jobs/workflow-context';
import type { JobRecord, MachineRecord, PolicyRecord, ServerRecord } from '../store/records';
import { enableJobKind, newReplicationDisk, type ReplicationParams, resyncJobKind } from './replication-jobs';
import type { ReplicationSessions } from './replication-sessions';

export interface EnableRequest {
  machine: string;
  processServer: string;
  masterTarget: string;
  datastore: string;
  policy: string;
  captureMode: CaptureMode__Output;
  scanIntervalMs: number;
}

export class Replication {
  constructor(
    private readonly context: WorkflowContext,
    private readonly sessions: ReplicationSessions,
  ) {
    this.context.jobs.register<ReplicationParams>(enableJobKind, {
      run: async (job) => {
        await job.runStep('create-replicas', (step) => this.sessions.createReplicas(job, job.params, step));
        await job.runStep('start-replication', (step) => this.sessions.startSessions(job, job.params, step));
        await job.runStep('initial-sync', (step) => this.sessions.waitForFirstPoints(job, job.params, step));
      },
      ended: (job, error) => this.ended(job, error, error ? 'ERROR' : 'PROTECTED'),
      restarted: (job) => this.restarted(job, 'INITIAL_SYNC'),
    });
    this.context.jobs.register<ReplicationParams>(resyncJobKind, {
      run: async (job) => {
        await job.runStep('resync', (step) => this.sessions.resyncSessions(job, step));
      },
      ended: (job, error) => this.ended(job, error, error ? 'RESYNC_REQUIRED' : 'PROTECTED'),
    });
  }

  async enable(request: EnableRequest): Promise<JobRecord> {
    const machine = this.context.machines.get(request.machine);
    refuseBusyOrUnfinished(this.context.store, machine);
    if (machine.state !== 'UNPROTECTED' && machine.state !== 'ERROR') {
      throw failedPrecondition(`machine ${machine.name} is ${machine.state}: replication is already enabled${machine.state === 'PROTECTED' || machine.state === 'RESYNC_REQUIRED' ? `; drctl resync ${machine.name} syncs it again` : ''}`);
    }
    const datastore = request.datastore;
    if (!datastore) throw invalidArgument('datastore: required (a directory on the master target, under one of its datastore roots)');
    if (datastore.length > pathLengthMax) throw invalidArgument(`datastore: at most ${pathLengthMax} characters`);
    if (!path.posix.isAbsolute(datastore)) throw invalidArgument(`datastore: must be an absolute path on the master target, got ${datastore}`);
    const policy = this.context.policies.get(request.policy || defaultPolicyName);
    const captureMode: CaptureMode__Output = request.captureMode === 'CAPTURE_MODE_UNSPECIFIED' ? 'CAPTURE_SCAN' : request.captureMode;
    const scanIntervalMs = request.scanIntervalMs;
    if (scanIntervalMs !== 0 && (scanIntervalMs < scanIntervalMsMin || scanIntervalMs > scanIntervalMsMax)) {
      throw invalidArgument(`scan_interval_ms: must be from ${scanIntervalMsMin} to ${scanIntervalMsMax}, or 0 for the agent's default, got ${scanIntervalMs}`);
    }
    const processServer = this.context.servers.choose('PROCESS_SERVER', request.processServer, '--process-server');
    const masterTarget = this.chooseMasterTarget(machine, request.masterTarget);
    this.context.servers.require(machine.agentId, 'agent');

    // Both peers must answer now, and the master target must have room for the disks it does not hold yet.
    const psClient = this.context.peers.processServer(processServer);
    await callPeer(processServer, () => unary(psClient, psClient.getStatus, {}, { timeoutMs: peerCallTimeoutMs }));
    await this.sessions.checkMasterTargetRoom(masterTarget, machine.disks.map((disk) => disk.diskId), `machine ${machine.name}`);

    const job = this.context.store.write(() => {
      const current = this.context.machines.current(machine.machineId);
      refuseBusyOrUnfinished(this.context.store, current);
      if (current.state !== 'UNPROTECTED' && current.state !== 'ERROR') throw failedPrecondition(`machine ${current.name} is ${current.state}: replication is already enabled`);
      // Checked again inside the transaction: another member of the group may have been enabled meanwhile.
      this.claimGroupMasterTarget(current, masterTarget);
      if (current.groupId && captureMode === 'CAPTURE_SCAN') {
        throw failedPrecondition(`machine ${current.name} belongs to a replication group, whose common points hold every member's writes at a barrier: enable it with --capture write-through (a scan cannot hold writes)`);
      }
      if (!this.context.store.policies.get(policy.policyId)) throw failedPrecondition(`policy ${policy.name} was deleted meanwhile: choose another with --policy`);
      const sites = withSites(current);
      const params: ReplicationParams = {
        processServerId: processServer.serverId,
        masterTargetId: masterTarget.serverId,
        datastore,
        policyId: policy.policyId,
        captureMode,
        scanIntervalMs,
        full: true,
        disks: current.disks.map((disk) => ({
          ...newReplicationDisk(disk),
          replicaPath: replicaDiskPath(datastore, disk.diskId),
          epoch: 0,
          replicaReady: false,
        })),
      };
      const totalBytes = params.disks.reduce((sum, disk) => sum + disk.diskBytes, 0);
      const record = this.context.jobs.create(enableJobKind, current.machineId, [{ name: 'create-replicas' }, { name: 'start-replication' }, { name: 'initial-sync', bytesTotal: totalBytes }], params);
      this.context.machines.put({
        ...current,
        state: 'INITIAL_SYNC',
        stateReason: `${enableJobKind} ${record.jobId}`,
        processServerId: processServer.serverId,
        masterTargetId: masterTarget.serverId,
        datastore,
        activeJobId: record.jobId,
        policyId: policy.policyId,
        captureMode,
        scanIntervalMs,
        disks: current.disks.map((disk) => ({ ...disk, replicaPath: replicaDiskPath(datastore, disk.diskId) })),
        // Enabled from home to the recovery site (docs/failover.md, "Two sites per machine").
        direction: 'FORWARD',
        home: { ...sites.home, agentId: current.agentId, processServerId: processServer.serverId, diskPaths: current.disks.map((disk) => disk.sourcePath) },
        recovery: {
          ...sites.recovery,
          masterTargetId: masterTarget.serverId,
          datastore,
          diskPaths: current.disks.map((disk) => recoveredDiskPath(datastore, disk.diskId)),
          replicaPaths: current.disks.map((disk) => replicaDiskPath(datastore, disk.diskId)),
        },
        restartableJobId: '',
      });
      return record;
    });
    this.context.log.info({ jobId: job.jobId, machine: machine.name, processServer: processServer.name, masterTarget: masterTarget.name, datastore, policy: policy.name, captureMode, scanIntervalMs }, 'enabling replication');
    this.context.jobs.start(job as JobRecord);
    return job as JobRecord;
  }

  resync(request: { machine: string; full: boolean }): JobRecord {
    const machine = this.context.machines.get(request.machine);
    refuseBusyOrUnfinished(this.context.store, machine);
    if (machine.state !== 'PROTECTED' && machine.state !== 'RESYNC_REQUIRED') {
      throw failedPrecondition(`machine ${machine.name} is ${machine.state}: only a protected machine can be resynced${machine.state === 'UNPROTECTED' || machine.state === 'ERROR' ? `; drctl enable ${machine.name} --datastore DIR enables replication` : ''}`);
    }
    this.context.servers.require(machine.processServerId, 'process server');
    this.context.servers.require(machine.masterTargetId, 'master target');
    const job = this.context.store.write(() => {
      const current = this.context.machines.current(machine.machineId);
      refuseBusyOrUnfinished(this.context.store, current);
      const params: ReplicationParams = {
        processServerId: current.processServerId,
        masterTargetId: current.masterTargetId,
        datastore: current.datastore,
        policyId: current.policyId ?? '',
        captureMode: current.captureMode ?? 'CAPTURE_SCAN',
        scanIntervalMs: current.scanIntervalMs ?? 0,
        full: request.full,
        // Same owner, same direction: the epoch does not change.
        disks: current.disks.map((disk) => ({ ...newReplicationDisk(disk), replicaPath: disk.replicaPath, epoch: disk.epoch, replicaReady: true })),
      };
      const totalBytes = params.disks.reduce((sum, disk) => sum + disk.diskBytes, 0);
      const record = this.context.jobs.create(resyncJobKind, current.machineId, [{ name: 'resync', bytesTotal: totalBytes }], params);
      this.context.machines.put({ ...current, stateReason: `${resyncJobKind} ${record.jobId}`, activeJobId: record.jobId, restartableJobId: '' });
      return record;
    });
    this.context.log.info({ jobId: job.jobId, machine: machine.name, full: request.full }, 'resyncing');
    this.context.jobs.start(job as JobRecord);
    return job as JobRecord;
  }

  /**
   * Pushes a changed policy to the machines that use it: the retention window
   * to their master targets, the crash-consistent interval to their sessions.
   * A peer that does not answer is left to the health monitor, which compares
   * and pushes again.
   */
  async pushPolicy(policy: PolicyRecord, previous: PolicyRecord): Promise<void> {
    const calls: Promise<void>[] = [];
    for (const machine of this.context.machines.list()) {
      // A reprotect starts its sessions with the policy as it is then (and the health monitor pushes again what they missed).
      if (machine.policyId !== policy.policyId || !replicating(machine) || machine.state === 'REPROTECTING') continue;
      for (const disk of machine.disks) {
        if (disk.epoch === 0) continue;
        const log = this.context.log.child({ machine: machine.name, diskId: disk.diskId, policy: policy.name });
        if (policy.retentionMs !== previous.retentionMs) {
          calls.push(this.sessions.configureRetention(machine, disk.diskId, policy.retentionMs).then(
            () => log.info({ retentionMs: policy.retentionMs }, 'retention window pushed to the master target'),
            (error: unknown) => log.warn({ err: errorMessage(error) }, 'could not push the retention window; the health monitor retries'),
          ));
        }
        if (policy.crashConsistentIntervalMs !== previous.crashConsistentIntervalMs) {
          calls.push(this.sessions.startSession(machine, disk, 'SYNC_MODE_DELTA').then(
            () => log.info({ crashConsistentIntervalMs: policy.crashConsistentIntervalMs }, 'crash-consistent interval pushed to the process server'),
            (error: unknown) => log.warn({ err: errorMessage(error) }, 'could not push the crash-consistent interval; the health monitor retries'),
          ));
        }
      }
    }
    await Promise.all(calls);
  }

  /** The master target a machine must use: its group's, when the group has one. */
  private chooseMasterTarget(machine: MachineRecord, requested: string): ServerRecord {
    const group = machine.groupId ? this.context.store.groups.get(machine.groupId) : undefined;
    if (!group?.masterTargetId) return this.context.servers.choose('MASTER_TARGET', requested, '--master-target');
    const groupTarget = this.context.servers.require(group.masterTargetId, `master target of replication group ${group.name}`);
    if (requested) {
      const chosen = this.context.servers.resolve('MASTER_TARGET', requested);
      if (chosen.serverId !== groupTarget.serverId) {
        throw failedPrecondition(`machine ${machine.name} belongs to replication group ${group.name}, whose machines replicate to master target ${groupTarget.name}: a replication group shares one master target (use --master-target ${groupTarget.name}, or leave it out)`);
      }
    }
    return groupTarget;
  }

  /** Records the group's master target when this is its first member to be enabled; call inside store.write(). */
  private claimGroupMasterTarget(machine: MachineRecord, masterTarget: ServerRecord): void {
    if (!machine.groupId) return;
    const group = this.context.store.groups.get(machine.groupId);
    if (!group) return;
    if (group.masterTargetId && group.masterTargetId !== masterTarget.serverId) {
      throw failedPrecondition(`machine ${machine.name} belongs to replication group ${group.name}, whose machines replicate to ${group.masterTargetId}: a replication group shares one master target`);
    }
    if (!group.masterTargetId) this.context.store.groups.putSync(group.groupId, { ...group, masterTargetId: masterTarget.serverId });
  }

  /** Inside the transaction that ends the job: the machine's new state and its recovery points. */
  private ended(job: JobRecord<ReplicationParams>, error: string, state: MachineRecord['state']): void {
    const machine = this.context.machines.current(job.machineId);
    this.sessions.recordFirstPoints(machine, job.params);
    if (machine.activeJobId === job.jobId) machine.activeJobId = '';
    machine.state = state;
    machine.stateReason = error ? `${job.kind} ${job.jobId} failed: ${error}` : '';
    // drctl job restart continues it; enabling or resyncing again starts anew.
    machine.restartableJobId = error ? job.jobId : '';
    this.context.machines.put(machine);
  }

  /** Inside the transaction that restarts a job: the machine is in its in-progress state again. */
  private restarted(job: JobRecord<ReplicationParams>, state: MachineRecord['state']): void {
    const machine = this.context.machines.current(job.machineId);
    this.context.machines.put({ ...machine, state });
  }

}
