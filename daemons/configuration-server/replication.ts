// The replication workflows: enabling replication of a machine (create the
// replicas, then a full initial sync of every disk) and resyncing it (delta or
// full). Each step is idempotent so that a job resumes after a restart:
// - an epoch is persisted before any peer hears of it, and issued once per job;
// - CreateReplica answering ALREADY_EXISTS for the same disk counts as done;
// - a sync id is persisted in the job, and StartSync with the same id resumes
//   the sync from where the master target's replica got to.
import path from 'node:path';
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument, limitExceeded } from '../../shared/errors';
import { unary } from '../../shared/grpc';
import { disksPerMasterTargetMax, pathLengthMax } from '../../shared/limits';
import type { Logger } from '../../shared/log';
import type { SyncMode__Output } from '../../generated/drplane/v1/SyncMode';
import type { SyncStatus__Output } from '../../generated/drplane/v1/SyncStatus';
import type { Jobs, JobRecord, RunningJob, StepRecord } from './jobs';
import type { MachineRecord, Machines } from './machines';
import { callPeer, peerName, type Peers } from './peers';
import type { ServerRecord, Servers } from './servers';
import type { Store } from './store';

/** How often a running sync's progress is asked of the process server. */
export const syncPollIntervalMs = 300;
/** First wait before calling an unreachable peer again; doubles up to the max. */
export const peerRetryIntervalMs = 1_000;
export const peerRetryIntervalMaxMs = 5_000;

export const enableJobKind = 'enable-replication';
export const resyncJobKind = 'resync';

export interface ReplicationDisk {
  diskId: string;
  sourcePath: string;
  diskBytes: number;
  replicaPath: string;
  /** The epoch this job uses; 0 until issued (enable) or copied (resync). */
  epoch: number;
  /** Stable across restarts, so StartSync resumes rather than starts over. */
  syncId: string;
  replicaReady: boolean;
  completed: boolean;
  bytesScanned: number;
  bytesSent: number;
  recoveryPointId: string;
}

export interface ReplicationParams {
  processServerId: string;
  masterTargetId: string;
  datastore: string;
  mode: SyncMode__Output;
  /** Put on the recovery point that closes each disk's sync. */
  tag: string;
  disks: ReplicationDisk[];
}

/** "job-7-disk0": unique per job and disk, short enough for any machine name. */
export const syncIdFor = (jobId: string, diskIndex: number) => `${jobId}-disk${diskIndex}`;

export class Replication {
  constructor(
    private readonly store: Store,
    private readonly machines: Machines,
    private readonly servers: Servers,
    private readonly peers: Peers,
    private readonly jobs: Jobs,
    private readonly log: Logger,
  ) {
    jobs.register<ReplicationParams>(enableJobKind, {
      run: async (job) => {
        await job.runStep('create-replicas', (step) => this.createReplicas(job, step));
        await job.runStep('initial-sync', (step) => this.sync(job, step));
      },
      ended: (job, error) => this.ended(job, error, error ? 'ERROR' : 'PROTECTED'),
    });
    jobs.register<ReplicationParams>(resyncJobKind, {
      run: async (job) => {
        await job.runStep('sync', (step) => this.sync(job, step));
      },
      ended: (job, error) => this.ended(job, error, error ? 'RESYNC_REQUIRED' : 'PROTECTED'),
    });
  }

  async enable(request: { machine: string; processServer: string; masterTarget: string; datastore: string }): Promise<JobRecord> {
    const machine = this.machines.get(request.machine);
    this.refuseBusy(machine);
    if (machine.state !== 'UNPROTECTED' && machine.state !== 'ERROR') {
      throw failedPrecondition(`machine ${machine.name} is ${machine.state}: replication is already enabled${machine.state === 'PROTECTED' || machine.state === 'RESYNC_REQUIRED' ? `; drctl resync ${machine.name} syncs it again` : ''}`);
    }
    const datastore = request.datastore;
    if (!datastore) throw invalidArgument('datastore: required (a directory on the master target, under one of its datastore roots)');
    if (datastore.length > pathLengthMax) throw invalidArgument(`datastore: at most ${pathLengthMax} characters`);
    if (!path.posix.isAbsolute(datastore)) throw invalidArgument(`datastore: must be an absolute path on the master target, got ${datastore}`);
    const processServer = this.servers.choose('PROCESS_SERVER', request.processServer, '--process-server');
    const masterTarget = this.servers.choose('MASTER_TARGET', request.masterTarget, '--master-target');
    this.servers.require(machine.agentId, 'agent');

    // Both peers must answer now, and the master target must have room for the disks it does not hold yet.
    const psClient = this.peers.processServer(processServer);
    await callPeer(processServer, () => unary(psClient, psClient.getStatus, {}));
    const mtClient = this.peers.masterTarget(masterTarget);
    const [status, replicas] = await callPeer(masterTarget, () => Promise.all([unary(mtClient, mtClient.getStatus, {}), unary(mtClient, mtClient.listReplicas, {})]));
    const held = new Set(replicas.replicas.map((replica) => replica.diskId));
    const adding = machine.disks.filter((disk) => !held.has(disk.diskId)).length;
    const capacity = Math.min(disksPerMasterTargetMax, status.replicaCountMax || disksPerMasterTargetMax);
    if (status.replicaCount + adding > capacity) {
      throw limitExceeded(`${peerName(masterTarget)} holds ${status.replicaCount} replica disks and serves at most ${capacity}; machine ${machine.name} needs ${adding} more: choose another master target with --master-target`);
    }

    const job = this.store.write(() => {
      const current = this.machines.current(machine.machineId);
      this.refuseBusy(current);
      if (current.state !== 'UNPROTECTED' && current.state !== 'ERROR') throw failedPrecondition(`machine ${current.name} is ${current.state}: replication is already enabled`);
      const params: ReplicationParams = {
        processServerId: processServer.serverId,
        masterTargetId: masterTarget.serverId,
        datastore,
        mode: 'SYNC_MODE_FULL',
        tag: 'initial-sync',
        disks: current.disks.map((disk) => ({
          diskId: disk.diskId,
          sourcePath: disk.sourcePath,
          diskBytes: disk.diskBytes,
          replicaPath: path.posix.join(datastore, `${disk.diskId}.img`),
          epoch: 0,
          syncId: '',
          replicaReady: false,
          completed: false,
          bytesScanned: 0,
          bytesSent: 0,
          recoveryPointId: '',
        })),
      };
      const totalBytes = params.disks.reduce((sum, disk) => sum + disk.diskBytes, 0);
      const record = this.jobs.create(enableJobKind, current.machineId, [{ name: 'create-replicas' }, { name: 'initial-sync', bytesTotal: totalBytes }], params);
      for (const [index, disk] of record.params.disks.entries()) disk.syncId = syncIdFor(record.jobId, index);
      this.store.jobs.putSync(record.jobId, record as JobRecord);
      this.machines.put({
        ...current,
        state: 'INITIAL_SYNC',
        stateReason: `${enableJobKind} ${record.jobId}`,
        processServerId: processServer.serverId,
        masterTargetId: masterTarget.serverId,
        datastore,
        activeJobId: record.jobId,
        disks: current.disks.map((disk) => ({ ...disk, replicaPath: path.posix.join(datastore, `${disk.diskId}.img`) })),
      });
      return record;
    });
    this.log.info({ jobId: job.jobId, machine: machine.name, processServer: processServer.name, masterTarget: masterTarget.name, datastore }, 'enabling replication');
    this.jobs.start(job as JobRecord);
    return job as JobRecord;
  }

  resync(request: { machine: string; full: boolean }): JobRecord {
    const machine = this.machines.get(request.machine);
    this.refuseBusy(machine);
    if (machine.state !== 'PROTECTED' && machine.state !== 'RESYNC_REQUIRED') {
      throw failedPrecondition(`machine ${machine.name} is ${machine.state}: only a protected machine can be resynced${machine.state === 'UNPROTECTED' || machine.state === 'ERROR' ? `; drctl enable ${machine.name} --datastore DIR enables replication` : ''}`);
    }
    this.servers.require(machine.processServerId, 'process server');
    this.servers.require(machine.masterTargetId, 'master target');
    const mode: SyncMode__Output = request.full ? 'SYNC_MODE_FULL' : 'SYNC_MODE_DELTA';
    const job = this.store.write(() => {
      const current = this.machines.current(machine.machineId);
      this.refuseBusy(current);
      const params: ReplicationParams = {
        processServerId: current.processServerId,
        masterTargetId: current.masterTargetId,
        datastore: current.datastore,
        mode,
        tag: request.full ? 'full-resync' : 'resync',
        disks: current.disks.map((disk) => ({
          diskId: disk.diskId,
          sourcePath: disk.sourcePath,
          diskBytes: disk.diskBytes,
          replicaPath: disk.replicaPath,
          // Same owner, same direction: the epoch does not change.
          epoch: disk.epoch,
          syncId: '',
          replicaReady: true,
          completed: false,
          bytesScanned: 0,
          bytesSent: 0,
          recoveryPointId: '',
        })),
      };
      const totalBytes = params.disks.reduce((sum, disk) => sum + disk.diskBytes, 0);
      const record = this.jobs.create(resyncJobKind, current.machineId, [{ name: 'sync', bytesTotal: totalBytes }], params);
      for (const [index, disk] of record.params.disks.entries()) disk.syncId = syncIdFor(record.jobId, index);
      this.store.jobs.putSync(record.jobId, record as JobRecord);
      this.machines.put({ ...current, stateReason: `${resyncJobKind} ${record.jobId}`, activeJobId: record.jobId });
      return record;
    });
    this.log.info({ jobId: job.jobId, machine: machine.name, mode }, 'resyncing');
    this.jobs.start(job as JobRecord);
    return job as JobRecord;
  }

  private refuseBusy(machine: MachineRecord): void {
    if (!machine.activeJobId) return;
    const active = this.store.jobs.get(machine.activeJobId);
    if (active && (active.state === 'JOB_RUNNING' || active.state === 'JOB_QUEUED')) {
      throw failedPrecondition(`machine ${machine.name} is busy with ${active.kind} ${active.jobId}: wait for it (drctl job watch ${active.jobId})`);
    }
  }

  /** Step create-replicas: one replica disk per source disk on the master target, at a new epoch. */
  private async createReplicas(job: RunningJob<ReplicationParams>, step: StepRecord): Promise<void> {
    const params = job.params;
    for (const disk of params.disks) {
      if (disk.replicaReady) continue;
      if (disk.epoch === 0) {
        // Issued once per job and on disk before the master target hears of it:
        // a restart reuses it, and no two owners can ever share an epoch.
        job.save(() => {
          const machine = this.machines.current(job.record.machineId);
          const owned = machine.disks.find((candidate) => candidate.diskId === disk.diskId);
          if (!owned) throw failedPrecondition(`disk ${disk.diskId} is no longer part of machine ${machine.name}`);
          owned.epoch += 1;
          disk.epoch = owned.epoch;
          this.machines.put(machine);
        });
      }
      const masterTarget = this.servers.require(params.masterTargetId, 'master target');
      await this.retryUnavailable(job, step, () => this.createReplica(masterTarget, disk));
      job.save(() => {
        disk.replicaReady = true;
        step.message = `${params.disks.filter((candidate) => candidate.replicaReady).length} of ${params.disks.length} replicas ready`;
      });
    }
  }

  private async createReplica(masterTarget: ServerRecord, disk: ReplicationDisk): Promise<void> {
    const client = this.peers.masterTarget(masterTarget);
    try {
      await callPeer(masterTarget, () => unary(client, client.createReplica, { diskId: disk.diskId, path: disk.replicaPath, diskBytes: disk.diskBytes, epoch: disk.epoch }));
      return;
    } catch (error) {
      if (!(error instanceof DrplaneError) || error.code !== ErrorCode.AlreadyExists) throw error;
      // Created before a restart, or by an earlier attempt that failed later: adopt it if it is this disk's.
      let replica;
      try {
        replica = await callPeer(masterTarget, () => unary(client, client.getReplica, { diskId: disk.diskId }));
      } catch (lookup) {
        if (lookup instanceof DrplaneError && lookup.code === ErrorCode.NotFound) throw error;
        throw lookup;
      }
      if (path.posix.normalize(replica.path) !== path.posix.normalize(disk.replicaPath) || Number(replica.diskBytes) !== disk.diskBytes) {
        throw failedPrecondition(`${peerName(masterTarget)} already has a replica of ${disk.diskId} at ${replica.path} (${replica.diskBytes} bytes), not at ${disk.replicaPath} (${disk.diskBytes} bytes): enable again with --datastore ${path.posix.dirname(replica.path)}`);
      }
      const epoch = Number(replica.epoch);
      if (epoch > disk.epoch) throw new DrplaneError(ErrorCode.StaleEpoch, `${peerName(masterTarget)} holds ${disk.diskId} at epoch ${epoch}, newer than ours (${disk.epoch}): another owner took it over`);
      if (epoch < disk.epoch) await callPeer(masterTarget, () => unary(client, client.setEpoch, { diskId: disk.diskId, epoch: disk.epoch }));
    }
  }

  /** Step initial-sync / sync: every disk's sync on the process server, polled until all completed. */
  private async sync(job: RunningJob<ReplicationParams>, step: StepRecord): Promise<void> {
    const params = job.params;
    const machine = this.machines.current(job.record.machineId);
    const pending = () => params.disks.filter((disk) => !disk.completed);
    for (const disk of pending()) await this.retryUnavailable(job, step, async () => this.record(job, step, disk, await this.startSync(params, machine, disk)));

    while (pending().length > 0) {
      await job.wait(syncPollIntervalMs);
      const processServer = this.servers.require(params.processServerId, 'process server');
      const client = this.peers.processServer(processServer);
      for (const disk of pending()) {
        try {
          let status: SyncStatus__Output;
          try {
            status = await callPeer(processServer, () => unary(client, client.getSync, { diskId: disk.diskId }));
          } catch (error) {
            // The process server restarted and forgot the sync: the same sync id resumes it where the replica got to.
            if (!(error instanceof DrplaneError) || error.code !== ErrorCode.NotFound) throw error;
            job.progress(step, { message: `${peerName(processServer)} does not know sync ${disk.syncId}: resuming it` });
            status = await this.startSync(params, machine, disk);
          }
          if (status.syncId !== disk.syncId) {
            job.progress(step, { message: `${peerName(processServer)} reports sync ${status.syncId || '(none)'} for ${disk.diskId}: starting ${disk.syncId}` });
            status = await this.startSync(params, machine, disk);
          }
          this.record(job, step, disk, status);
        } catch (error) {
          if (!(error instanceof DrplaneError) || error.code !== ErrorCode.Unavailable) throw error;
          job.progress(step, { message: `${error.message}; retrying` });
        }
      }
    }
  }

  private async startSync(params: ReplicationParams, machine: MachineRecord, disk: ReplicationDisk): Promise<SyncStatus__Output> {
    const processServer = this.servers.require(params.processServerId, 'process server');
    const masterTarget = this.servers.require(params.masterTargetId, 'master target');
    const agent = this.servers.require(machine.agentId, 'agent');
    const client = this.peers.processServer(processServer);
    return callPeer(processServer, () =>
      unary(client, client.startSync, {
        diskId: disk.diskId,
        syncId: disk.syncId,
        mode: params.mode,
        epoch: disk.epoch,
        agentAddress: agent.address,
        sourcePath: disk.sourcePath,
        masterTargetAddress: masterTarget.address,
        tag: params.tag,
      }),
    );
  }

  /** Folds one disk's sync status into the job; a completed or failed sync is persisted at once. */
  private record(job: RunningJob<ReplicationParams>, step: StepRecord, disk: ReplicationDisk, status: SyncStatus__Output): void {
    if (status.syncId && status.syncId !== disk.syncId) return;
    disk.bytesScanned = Math.min(disk.diskBytes, Number(status.bytesScanned));
    disk.bytesSent = Number(status.bytesSent);
    if (status.state === 'SYNC_STATE_FAILED') throw new DrplaneError(ErrorCode.Aborted, `sync of ${disk.diskId} failed: ${status.error || 'no reason given'}`);
    if (status.state === 'SYNC_STATE_STOPPED') throw new DrplaneError(ErrorCode.Aborted, `sync of ${disk.diskId} was stopped on the process server${status.error ? `: ${status.error}` : ''}`);
    const params = job.params;
    const totals = () => ({
      bytesDone: params.disks.reduce((sum, candidate) => sum + candidate.bytesScanned, 0),
      bytesSent: params.disks.reduce((sum, candidate) => sum + candidate.bytesSent, 0),
    });
    if (status.state === 'SYNC_STATE_COMPLETED') {
      job.save(() => {
        disk.completed = true;
        disk.bytesScanned = disk.diskBytes;
        disk.recoveryPointId = status.recoveryPointId;
        const { bytesDone, bytesSent } = totals();
        step.bytesDone = bytesDone;
        job.record.bytesSent = bytesSent;
        const done = params.disks.filter((candidate) => candidate.completed).length;
        step.message = `${done} of ${params.disks.length} disks synced`;
      });
      return;
    }
    job.progress(step, { ...totals(), message: '' });
  }

  /** Calls a peer until it answers: an unreachable peer is waited for, with the reason on the step. */
  private async retryUnavailable<T>(job: RunningJob<ReplicationParams>, step: StepRecord, call: () => Promise<T>): Promise<T> {
    for (let intervalMs = peerRetryIntervalMs; ; intervalMs = Math.min(intervalMs * 2, peerRetryIntervalMaxMs)) {
      job.throwIfInterrupted();
      try {
        return await call();
      } catch (error) {
        if (!(error instanceof DrplaneError) || error.code !== ErrorCode.Unavailable) throw error;
        this.log.warn({ jobId: job.record.jobId, err: error.message }, 'peer unreachable; retrying');
        job.progress(step, { message: `${error.message}; retrying` });
        await job.wait(intervalMs);
      }
    }
  }

  /** Inside the transaction that ends the job: the machine's new state and its recovery points. */
  private ended(job: JobRecord<ReplicationParams>, error: string, state: MachineRecord['state']): void {
    const machine = this.machines.current(job.machineId);
    for (const disk of job.params.disks) {
      const owned = machine.disks.find((candidate) => candidate.diskId === disk.diskId);
      if (owned && disk.recoveryPointId) owned.latestRecoveryPointId = disk.recoveryPointId;
    }
    if (machine.activeJobId === job.jobId) machine.activeJobId = '';
    machine.state = state;
    machine.stateReason = error ? `${job.kind} ${job.jobId} failed: ${error}` : '';
    this.machines.put(machine);
  }
}
