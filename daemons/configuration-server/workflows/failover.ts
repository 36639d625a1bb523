// Failover, change of recovery point, commit, test failover and its cleanup
// (docs/failover.md). Each is a job whose steps are idempotent, so a job
// resumes after a restart of the configuration server and continues from its
// stopped or failed step when the operator restarts it.
//
// The invariant the steps keep: before the `fence` step nothing has changed
// owner (a failure there releases the source and the machine is PROTECTED
// again); from the first SetEpoch on, the old source can no longer write to
// the target site, and the failover only goes forward (a failure leaves it
// FAILOVER_IN_PROGRESS, to be restarted). Each disk's new epoch is written,
// with the job, before any peer hears of it.
import path from 'node:path';
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument } from '../../../shared/errors';
import { unary } from '../../../shared/grpc';
import { formatBytes } from '../../../shared/sizes';
import { hookTimeoutMaxMs, startHookTimeoutMaxMs } from '../../../shared/limits';
import type { Logger } from '../../../shared/log';
import type { PointSelector__Output } from '../../../generated/drplane/v1/PointSelector';
import type { Jobs } from '../jobs/jobs';
import { type Machines, recoveredDiskPath, totalBytes, withSites } from '../entities/machines';
import { callPeer, peerName, type Peers } from '../entities/peers';
import { flushTimeoutMs, masterTargetMaterialiseProgress, materialiseTimeoutMs, parsePointReference, pointCallTimeoutMs, type PointChoice, pointSequence, type RecoveryPoints } from '../entities/recovery-points';
import type { Replication } from './replication';
import type { Servers } from '../entities/servers';
import type { Store } from '../store/store';
import type { FailoverRecord, JobRecord, MachineRecord, MachineState, StepRecord } from '../store/records';
import { jobEnded, JobInterrupted, JobStopped, type RunningJob } from '../jobs/running-job';
import { errorMessage, peerCallTimeoutMs, progressPollIntervalMs, retryUnavailable, whileReporting } from '../jobs/peer-calls';
import { refuseBusyOrUnfinished, stateRefusal, whatNext } from '../jobs/refusals';
import { finishJob } from '../jobs/endings';

export const failoverJobKind = 'failover';
export const changePointJobKind = 'change-recovery-point';
export const commitJobKind = 'commit';
export const testFailoverJobKind = 'test-failover';
export const cleanupTestFailoverJobKind = 'cleanup-test-failover';

/** Deadline of OpenHashTree over a whole disk (the agent reads the source, the master target the replica). */
export const hashTreeTimeoutMs = 60 * 60_000;
/** Deadline of ShutdownSource: the agent's shutdown hook runs first. */
export const shutdownSourceTimeoutMs = hookTimeoutMaxMs + peerCallTimeoutMs;
/** Deadline of StartMachine: the master target's start hook may take minutes (a machine boots). */
export const startMachineTimeoutMs = startHookTimeoutMaxMs + peerCallTimeoutMs;
/** A test failover's disks: <datastore>/test-failover/<disk_id>.img on the target's master target. */
export const testFailoverFolder = 'test-failover';
/** Hook output quoted on a step (the rest is in the daemon's log). */
const hookOutputQuotedMax = 200;

/** One disk of a failover (or a change of point, or a test failover). */
export interface FailoverDisk {
  diskId: string;
  diskBytes: number;
  /** The machine's disk at the source site (what its agent reads). */
  sourcePath: string;
  /** Where the point lands: the machine's disk at the target site (or a test disk). */
  targetPath: string;
  /** BY_ID: the point asked for this disk. */
  requestedPointId: string;
  /** The point materialised: drained (planned) or selected (unplanned). */
  pointId: string;
  synchronized: boolean;
  drained: boolean;
  verified: boolean;
  /** The fence's epoch, written with the machine before any peer hears of it (0 until issued). */
  fenceEpoch: number;
  epochSet: boolean;
  replicationStopped: boolean;
  materialised: boolean;
}

export interface FailoverParams {
  planned: boolean;
  synchronizeFirst: boolean;
  selector: PointSelector__Output;
  timeMs: number;
  noStart: boolean;
  /** The site the machine moves to: the recovery site (FORWARD), or home (REVERSE: a failback). */
  toSite: 'recovery' | 'home';
  /** The machine's state before, to return to when it fails before its fence. */
  stateBefore: MachineState;
  /** The source site's agent and process server, the target site's master target (the flat fields at the start). */
  agentId: string;
  processServerId: string;
  masterTargetId: string;
  disks: FailoverDisk[];
  /** ShutdownSource was asked: a failure before the fence releases the source. */
  sourceShutDown: boolean;
  /** Set before the first SetEpoch: from here on the failover only goes forward. */
  fenced: boolean;
}

export interface CommitParams {
  /** The master target that held the replicas the machine failed over from. */
  masterTargetId: string;
  disks: { diskId: string; epoch: number; retired: boolean }[];
  /** The flat fields moved to the other site (one transaction). */
  switched: boolean;
  /** The agent of the site the machine now runs on, and the disks it released ('' when none is known there). */
  releaseAgentId: string;
  releasePaths: string[];
  released: boolean;
}

export interface ChangePointParams {
  selector: PointSelector__Output;
  timeMs: number;
  masterTargetId: string;
  noStart: boolean;
  disks: FailoverDisk[];
}

export interface TestFailoverParams {
  selector: PointSelector__Output;
  timeMs: number;
  processServerId: string;
  masterTargetId: string;
  disks: FailoverDisk[];
}

export interface CleanupParams {
  masterTargetId: string;
  paths: string[];
  deleted: boolean[];
}

/** How a point is chosen: the selector, and per disk the point asked (BY_ID). */
export interface PointRequest {
  selector: PointSelector__Output;
  pointIds: string[];
  timeMs: number;
}

export interface FailoverOptions {
  planned: boolean;
  synchronizeFirst: boolean;
  noStart: boolean;
  point: PointRequest;
  /** Where the failover lands, per disk (default: the machine's disks at the target site). */
  targetPaths?: string[];
}

/** The steps of a failover, in order (docs/failover.md, "Jobs"). */
export function failoverSteps(planned: boolean, synchronizeFirst: boolean, diskBytes: number): { name: string; bytesTotal?: number }[] {
  if (!planned) return [{ name: 'check' }, { name: 'select-point' }, { name: 'fence' }, { name: 'materialise', bytesTotal: diskBytes }, { name: 'start-target' }];
  return [
    { name: 'check' },
    ...(synchronizeFirst ? [{ name: 'synchronize' }] : []),
    { name: 'shutdown-source' },
    { name: 'drain' },
    { name: 'verify', bytesTotal: diskBytes },
    { name: 'fence' },
    { name: 'materialise', bytesTotal: diskBytes },
    { name: 'start-target' },
  ];
}

export const commitSteps = [{ name: 'retire-replicas' }, { name: 'switch-site' }];

/** The machine has a recovery point on every disk, judging by its state. */
function hasPoints(state: MachineState): boolean {
  return state !== 'UNPROTECTED' && state !== 'INITIAL_SYNC' && state !== 'ERROR';
}

export class Failovers {
  constructor(
    private readonly store: Store,
    private readonly machines: Machines,
    private readonly servers: Servers,
    private readonly peers: Peers,
    private readonly recoveryPoints: RecoveryPoints,
    private readonly replication: Replication,
    private readonly jobs: Jobs,
    private readonly log: Logger,
  ) {
    jobs.register<FailoverParams>(failoverJobKind, {
      run: async (job) => {
        await this.runFailover(job, job.params);
      },
      ended: (job, error, stopped) => {
        const machine = this.machines.current(job.machineId);
        if (this.endFailover(machine, job, job.params, error, stopped)) return;
        this.finish(machine, job, error, 'FAILED_OVER');
      },
    });
    jobs.register<ChangePointParams>(changePointJobKind, {
      run: async (job) => {
        const p = job.params;
        const machine = this.machines.current(job.record.machineId);
        await job.runStep('select-point', (step) => this.selectPoints(job, step, { ...machine, masterTargetId: p.masterTargetId }, p));
        await job.runStep('materialise', (step) => this.materialise(job, step, p.masterTargetId, p.disks));
        await job.runStep('start-target', (step) => this.startTarget(job, step, p.masterTargetId, p.disks, p.noStart));
      },
      ended: (job, error) => {
        const machine = this.machines.current(job.machineId);
        if (!error && machine.failover) {
          machine.failover = { ...machine.failover, selector: job.params.selector, recoveryPointIds: job.params.disks.map((disk) => disk.pointId), timeMs: Date.now() };
        }
        this.finish(machine, job, error, 'FAILED_OVER');
      },
    });
    jobs.register<CommitParams>(commitJobKind, {
      run: async (job) => {
        await this.runCommit(job, job.params);
      },
      ended: (job, error) => this.finish(this.machines.current(job.machineId), job, error, 'COMMITTED'),
    });
    jobs.register<TestFailoverParams>(testFailoverJobKind, {
      run: async (job) => {
        const p = job.params;
        const machine = this.machines.current(job.record.machineId);
        await job.runStep('select-point', (step) => this.selectPoints(job, step, { ...machine, processServerId: p.processServerId, masterTargetId: p.masterTargetId }, p));
        await job.runStep('materialise', (step) => this.materialise(job, step, p.masterTargetId, p.disks));
      },
      ended: (job, error) => {
        const machine = this.machines.current(job.machineId);
        if (machine.testFailover?.jobId === job.jobId) {
          machine.testFailover = { ...machine.testFailover, selector: job.params.selector, recoveryPointIds: job.params.disks.map((disk) => disk.pointId) };
        }
        // Replication went on: the machine keeps its state; a failed test failover is restarted or cleaned up.
        this.finish(machine, job, error, machine.state);
      },
    });
    jobs.register<CleanupParams>(cleanupTestFailoverJobKind, {
      run: async (job) => {
        await job.runStep('delete-disks', (step) => this.deleteDisks(job, step, job.params));
      },
      ended: (job, error) => {
        const machine = this.machines.current(job.machineId);
        if (!error) machine.testFailover = undefined;
        this.finish(machine, job, error, machine.state);
      },
    });
  }

  /** Fails a machine over (planned: no data loss; unplanned: the selected point). */
  async failover(request: { machine: string; planned: boolean; synchronizeFirst: boolean; selector: PointSelector__Output; pointIds: string[]; timeMs: number; noStart: boolean }): Promise<JobRecord> {
    const machine = withSites(this.machines.get(request.machine));
    refuseBusyOrUnfinished(this.store, machine);
    this.refuseFailoverState(machine, request.planned);
    if (request.synchronizeFirst && !request.planned) throw invalidArgument('synchronize_first: only a planned failover synchronizes first (the source must still run)');
    const point = request.planned ? { selector: 'LATEST' as const, pointIds: [], timeMs: 0 } : this.checkPointRequest(machine, { selector: request.selector === 'POINT_SELECTOR_UNSPECIFIED' ? 'LATEST' : request.selector, pointIds: request.pointIds, timeMs: request.timeMs });
    this.requireFailoverPeers(machine, request.planned);
    await this.requirePoints(machine);
    const params = this.planFailover(machine, { planned: request.planned, synchronizeFirst: request.synchronizeFirst, noStart: request.noStart, point });
    const job = this.store.write(() => {
      const current = withSites(this.machines.current(machine.machineId));
      refuseBusyOrUnfinished(this.store, current);
      this.refuseFailoverState(current, request.planned);
      const record = this.jobs.create(failoverJobKind, current.machineId, failoverSteps(params.planned, params.synchronizeFirst, totalBytes(params.disks)), { ...params, stateBefore: current.state });
      this.machines.put({
        ...current,
        state: 'FAILOVER_IN_PROGRESS',
        stateReason: `${failoverJobKind} ${record.jobId}`,
        activeJobId: record.jobId,
        restartableJobId: '',
        failover: this.failoverRecord(record.jobId, params),
      });
      return record;
    });
    this.log.info({ jobId: job.jobId, machine: machine.name, planned: params.planned, selector: params.selector, toSite: params.toSite, noStart: params.noStart }, 'failover started');
    this.jobs.start(job as JobRecord);
    return job as JobRecord;
  }

  /** Before commit: materialise another point onto the failed-over disks. */
  async changeRecoveryPoint(request: { machine: string; selector: PointSelector__Output; pointIds: string[]; timeMs: number }): Promise<JobRecord> {
    const machine = withSites(this.machines.get(request.machine));
    refuseBusyOrUnfinished(this.store, machine);
    if (machine.state !== 'FAILED_OVER' || !machine.failover) throw stateRefusal(machine);
    if (request.selector === 'POINT_SELECTOR_UNSPECIFIED') throw invalidArgument('selector: required (LATEST_PROCESSED, LATEST_APP_CONSISTENT, LATEST_CRASH_CONSISTENT, BY_ID or AT_OR_BEFORE)');
    // After the fence nothing more reaches the replica: the latest point is the latest one applied.
    const selector = request.selector === 'LATEST' ? 'LATEST_PROCESSED' : request.selector;
    const point = this.checkPointRequest(machine, { selector, pointIds: request.pointIds, timeMs: request.timeMs });
    const failover = machine.failover;
    this.servers.require(failover.masterTargetId, 'master target');
    const disks = this.failoverDisks(machine, point, failover.diskPaths);
    const job = this.store.write(() => {
      const current = this.machines.current(machine.machineId);
      refuseBusyOrUnfinished(this.store, current);
      if (current.state !== 'FAILED_OVER') throw stateRefusal(current);
      const params: ChangePointParams = { selector, timeMs: point.timeMs, masterTargetId: failover.masterTargetId, noStart: Boolean(failover.noStart), disks };
      const record = this.jobs.create(changePointJobKind, current.machineId, [{ name: 'select-point' }, { name: 'materialise', bytesTotal: totalBytes(disks) }, { name: 'start-target' }], params);
      this.machines.put({ ...current, stateReason: `${changePointJobKind} ${record.jobId}`, activeJobId: record.jobId, restartableJobId: '' });
      return record;
    });
    this.log.info({ jobId: job.jobId, machine: machine.name, selector }, 'changing the recovery point of a failed-over machine');
    this.jobs.start(job as JobRecord);
    return job as JobRecord;
  }

  /** Ends a failover: the replicas it came from are retired, the machine runs at the other site. */
  async commit(machineName: string): Promise<JobRecord> {
    const machine = withSites(this.machines.get(machineName));
    refuseBusyOrUnfinished(this.store, machine);
    if (machine.state !== 'FAILED_OVER' || !machine.failover) throw stateRefusal(machine);
    this.servers.require(machine.failover.masterTargetId, 'master target');
    const job = this.store.write(() => {
      const current = this.machines.current(machine.machineId);
      refuseBusyOrUnfinished(this.store, current);
      if (current.state !== 'FAILED_OVER' || !current.failover) throw stateRefusal(current);
      const record = this.jobs.create(commitJobKind, current.machineId, commitSteps, this.planCommit(current));
      this.machines.put({ ...current, state: 'COMMIT_IN_PROGRESS', stateReason: `${commitJobKind} ${record.jobId}`, activeJobId: record.jobId, restartableJobId: '' });
      return record;
    });
    this.log.info({ jobId: job.jobId, machine: machine.name }, 'committing the failover');
    this.jobs.start(job as JobRecord);
    return job as JobRecord;
  }

  /** Materialises a point to separate disks on the target's master target while replication goes on. */
  async testFailover(request: { machine: string; selector: PointSelector__Output; pointIds: string[]; timeMs: number }): Promise<JobRecord> {
    const machine = withSites(this.machines.get(request.machine));
    refuseBusyOrUnfinished(this.store, machine);
    if (machine.testFailover) {
      throw failedPrecondition(`machine ${machine.name} has a test failover already (${machine.testFailover.jobId}, disks ${machine.testFailover.diskPaths.join(', ')}): clean it up first (drctl cleanup ${machine.name})`);
    }
    if (!hasPoints(machine.state)) throw failedPrecondition(`machine ${machine.name} has no recovery point yet: ${whatNext(machine)}`);
    if (machine.state !== 'PROTECTED' && machine.state !== 'RESYNC_REQUIRED') throw stateRefusal(machine);
    const point = this.checkPointRequest(machine, { selector: request.selector === 'POINT_SELECTOR_UNSPECIFIED' ? 'LATEST' : request.selector, pointIds: request.pointIds, timeMs: request.timeMs });
    this.servers.require(machine.masterTargetId, 'master target');
    await this.requirePoints(machine);
    const disks = this.failoverDisks(machine, point, machine.disks.map((disk) => path.posix.join(machine.datastore, testFailoverFolder, `${disk.diskId}.img`)));
    const job = this.store.write(() => {
      const current = this.machines.current(machine.machineId);
      refuseBusyOrUnfinished(this.store, current);
      if (current.testFailover) throw failedPrecondition(`machine ${current.name} has a test failover already: clean it up first (drctl cleanup ${current.name})`);
      const params: TestFailoverParams = { selector: point.selector, timeMs: point.timeMs, processServerId: current.processServerId, masterTargetId: current.masterTargetId, disks };
      const record = this.jobs.create(testFailoverJobKind, current.machineId, [{ name: 'select-point' }, { name: 'materialise', bytesTotal: totalBytes(disks) }], params);
      const testFailover: FailoverRecord = { jobId: record.jobId, planned: false, selector: point.selector, recoveryPointIds: [], diskPaths: disks.map((disk) => disk.targetPath), masterTargetId: current.masterTargetId, timeMs: Date.now() };
      this.machines.put({ ...current, activeJobId: record.jobId, restartableJobId: '', testFailover });
      return record;
    });
    this.log.info({ jobId: job.jobId, machine: machine.name, selector: point.selector }, 'test failover started');
    this.jobs.start(job as JobRecord);
    return job as JobRecord;
  }

  /** Deletes a test failover's disks. */
  async cleanupTestFailover(machineName: string): Promise<JobRecord> {
    const machine = this.machines.get(machineName);
    const active = machine.activeJobId ? this.store.jobs.get(machine.activeJobId) : undefined;
    if (active && !jobEnded(active.state)) throw failedPrecondition(`machine ${machine.name} is busy with ${active.kind} ${active.jobId}: wait for it (drctl job watch ${active.jobId}) or stop it (drctl job stop ${active.jobId})`);
    if (!machine.testFailover) throw failedPrecondition(`machine ${machine.name} has no test failover to clean up (drctl test-failover ${machine.name} makes one)`);
    const testFailover = machine.testFailover;
    this.servers.require(testFailover.masterTargetId, 'master target');
    const job = this.store.write(() => {
      const current = this.machines.current(machine.machineId);
      const params: CleanupParams = { masterTargetId: testFailover.masterTargetId, paths: [...testFailover.diskPaths], deleted: testFailover.diskPaths.map(() => false) };
      const record = this.jobs.create(cleanupTestFailoverJobKind, current.machineId, [{ name: 'delete-disks' }], params);
      // The test failover's own failed job is superseded by its cleanup; any other stays restartable.
      const restartableJobId = current.restartableJobId === testFailover.jobId ? '' : current.restartableJobId;
      this.machines.put({ ...current, activeJobId: record.jobId, restartableJobId });
      return record;
    });
    this.log.info({ jobId: job.jobId, machine: machine.name, paths: testFailover.diskPaths }, 'cleaning up a test failover');
    this.jobs.start(job as JobRecord);
    return job as JobRecord;
  }

  // ----- Pieces a failback (failback.ts) runs as well -----

  /** A failover is possible from this state: PROTECTED from home (planned or not), RESYNC_REQUIRED (unplanned). */
  refuseFailoverState(machine: MachineRecord, planned: boolean): void {
    if (!hasPoints(machine.state)) throw failedPrecondition(`machine ${machine.name} has no recovery point yet: ${whatNext(machine)}`);
    if ((machine.state === 'PROTECTED' || machine.state === 'RESYNC_REQUIRED') && machine.direction === 'REVERSE') {
      throw failedPrecondition(`machine ${machine.name} is ${machine.state} in the reverse direction (it runs at its recovery site): bring it home with drctl failback ${machine.name}`);
    }
    if (machine.state === 'RESYNC_REQUIRED' && planned) {
      throw failedPrecondition(`machine ${machine.name} is RESYNC_REQUIRED: a planned failover needs its replica in sync; resync it first (drctl resync ${machine.name}), or fail over unplanned to a recovery point it has`);
    }
    if (machine.state !== 'PROTECTED' && machine.state !== 'RESYNC_REQUIRED') throw stateRefusal(machine);
  }

  /** The peers a failover needs registered: the target's master target; planned, the source's agent and process server too. */
  requireFailoverPeers(machine: MachineRecord, planned: boolean): void {
    this.servers.require(machine.masterTargetId, 'master target');
    if (!planned) return;
    this.servers.require(machine.agentId, 'agent');
    this.servers.require(machine.processServerId, 'process server');
  }

  /** Validates a selector and its point ids (BY_ID: one per disk, or one for a one-disk machine). */
  checkPointRequest(machine: MachineRecord, point: PointRequest): PointRequest {
    switch (point.selector) {
      case 'POINT_SELECTOR_UNSPECIFIED':
        throw invalidArgument('selector: required');
      case 'AT_OR_BEFORE':
        if (!(point.timeMs > 0)) throw invalidArgument('time_ms: required with AT_OR_BEFORE (unix milliseconds)');
        return { selector: point.selector, pointIds: [], timeMs: point.timeMs };
      case 'BY_ID': {
        if (point.pointIds.length === 0) throw invalidArgument(`point_ids: required with BY_ID, one per disk (<disk_id>@<sequence>; drctl points ${machine.name} lists them)`);
        const byDisk = new Map<string, string>();
        for (const pointId of point.pointIds) {
          const parsed = parsePointReference(pointId);
          if (parsed.choice.selector !== 'BY_ID') throw invalidArgument(`point_ids: ${JSON.stringify(pointId)} is not a point id (<disk_id>@<sequence>)`);
          if (!machine.disks.some((disk) => disk.diskId === parsed.diskId)) throw invalidArgument(`point_ids: ${pointId} is not a point of machine ${machine.name} (its disks: ${machine.disks.map((disk) => disk.diskId).join(', ')})`);
          if (byDisk.has(parsed.diskId)) throw invalidArgument(`point_ids: two points for ${parsed.diskId}`);
          byDisk.set(parsed.diskId, pointId);
        }
        const missing = machine.disks.filter((disk) => !byDisk.has(disk.diskId));
        if (missing.length) throw invalidArgument(`point_ids: one point per disk; none given for ${missing.map((disk) => disk.diskId).join(', ')}`);
        return { selector: 'BY_ID', pointIds: machine.disks.map((disk) => byDisk.get(disk.diskId)!), timeMs: 0 };
      }
      default:
        return { selector: point.selector, pointIds: [], timeMs: 0 };
    }
  }

  /** "No failover before a recovery point": every disk has one (asked of the master target when the record has none). */
  async requirePoints(machine: MachineRecord): Promise<void> {
    const missing = machine.disks.filter((disk) => !disk.latestRecoveryPointId);
    if (missing.length === 0) return;
    const masterTarget = this.servers.require(machine.masterTargetId, 'master target');
    const client = this.peers.masterTarget(masterTarget);
    for (const disk of missing) {
      let pointId = '';
      try {
        pointId = (await callPeer(masterTarget, () => unary(client, client.getReplica, { diskId: disk.diskId }, { timeoutMs: peerCallTimeoutMs }))).latestRecoveryPointId;
      } catch (error) {
        if (!(error instanceof DrplaneError) || error.code !== ErrorCode.NotFound) throw error;
      }
      if (!pointId) throw failedPrecondition(`machine ${machine.name} has no recovery point yet on ${disk.diskId}: wait for its initial sync`);
    }
  }

  /** The parameters of a failover of the machine toward its target site (the flat fields name both ends). */
  planFailover(machine: ReturnType<typeof withSites>, options: FailoverOptions): FailoverParams {
    const toSite = machine.direction === 'REVERSE' ? 'home' : 'recovery';
    const target = machine[toSite];
    const targetPaths = options.targetPaths ?? machine.disks.map((disk, index) => target.diskPaths[index] || recoveredDiskPath(machine.datastore, disk.diskId));
    return {
      planned: options.planned,
      synchronizeFirst: options.planned && options.synchronizeFirst,
      selector: options.point.selector,
      timeMs: options.point.timeMs,
      noStart: options.noStart,
      toSite,
      stateBefore: machine.state,
      agentId: machine.agentId,
      processServerId: machine.processServerId,
      masterTargetId: machine.masterTargetId,
      disks: this.failoverDisks(machine, options.point, targetPaths),
      sourceShutDown: false,
      fenced: false,
    };
  }

  failoverRecord(jobId: string, params: FailoverParams): FailoverRecord {
    return {
      jobId,
      planned: params.planned,
      selector: params.selector,
      recoveryPointIds: params.disks.map((disk) => disk.pointId).filter(Boolean),
      diskPaths: params.disks.map((disk) => disk.targetPath),
      masterTargetId: params.masterTargetId,
      timeMs: Date.now(),
      noStart: params.noStart,
    };
  }

  /**
   * The failover's steps. A failure before the fence releases the source it
   * shut down (the machine returns to its state before, in ended()); a stop
   * leaves everything as it is, for a restart.
   */
  async runFailover(job: RunningJob<unknown>, p: FailoverParams): Promise<void> {
    try {
      await job.runStep('check', (step) => this.check(job, step, p));
      if (p.planned) {
        if (p.synchronizeFirst) await job.runStep('synchronize', (step) => this.drain(job, step, p, 'synchronize'));
        await job.runStep('shutdown-source', (step) => this.shutdownSource(job, step, p));
        await job.runStep('drain', (step) => this.drain(job, step, p, 'drain'));
        await job.runStep('verify', (step) => this.verify(job, step, p));
      } else {
        const machine = this.machines.current(job.record.machineId);
        await job.runStep('select-point', (step) => this.selectPoints(job, step, { ...machine, processServerId: p.processServerId, masterTargetId: p.masterTargetId }, p, true));
      }
      await job.runStep('fence', (step) => this.fence(job, step, p));
    } catch (error) {
      const interrupted = error instanceof JobStopped || error instanceof JobInterrupted || job.stopRequested;
      if (interrupted || p.fenced) throw error;
      throw await this.releaseAfterFailure(job, p, error);
    }
    await job.runStep('materialise', (step) => this.materialise(job, step, p.masterTargetId, p.disks));
    await job.runStep('start-target', (step) => this.startTarget(job, step, p.masterTargetId, p.disks, p.noStart));
  }

  /**
   * Inside the transaction that ends a failover (or a failback's failover
   * part): a failure before the fence returns the machine to its state before
   * (nothing changed owner). Answers whether it did.
   */
  endFailover(machine: MachineRecord, job: JobRecord, p: FailoverParams, error: string, stopped: boolean): boolean {
    if (!error || stopped || p.fenced) return false;
    if (machine.activeJobId === job.jobId) machine.activeJobId = '';
    machine.state = p.stateBefore;
    machine.failover = undefined;
    machine.restartableJobId = '';
    machine.stateReason = `${job.kind} ${job.jobId} failed before its fence, so nothing changed owner (the machine is ${p.stateBefore} again): ${error}`;
    this.machines.put(machine);
    return true;
  }

  /** Inside the transaction that ends a job (see finishJob). */
  finish(machine: MachineRecord, job: JobRecord, error: string, state: MachineState): void {
    finishJob(this.machines, machine, job, error, state);
  }

  planCommit(machine: MachineRecord): CommitParams {
    return {
      masterTargetId: machine.failover?.masterTargetId || machine.masterTargetId,
      disks: machine.disks.map((disk) => ({ diskId: disk.diskId, epoch: disk.epoch, retired: false })),
      switched: false,
      releaseAgentId: '',
      releasePaths: [],
      released: false,
    };
  }

  /** The commit's steps; `onSwitch` runs inside the transaction that moves the machine to the other site. */
  async runCommit(job: RunningJob<unknown>, p: CommitParams, onSwitch?: (machine: MachineRecord) => void): Promise<void> {
    await job.runStep('retire-replicas', (step) => this.retireReplicas(job, step, p));
    await job.runStep('switch-site', (step) => this.switchSite(job, step, p, onSwitch));
  }

  // ----- Steps -----

  private async check(job: RunningJob<unknown>, step: StepRecord, p: FailoverParams): Promise<void> {
    const masterTarget = this.servers.require(p.masterTargetId, 'master target');
    if (p.planned) {
      this.servers.require(p.agentId, 'agent');
      this.servers.require(p.processServerId, 'process server');
    }
    const machine = this.machines.current(job.record.machineId);
    const client = this.peers.masterTarget(masterTarget);
    for (const disk of p.disks) {
      const replica = await retryUnavailable(this.log, job, step, () => callPeer(masterTarget, () => unary(client, client.getReplica, { diskId: disk.diskId }, { timeoutMs: peerCallTimeoutMs })));
      if (replica.retired) throw failedPrecondition(`${peerName(masterTarget)} retired the replica of ${disk.diskId} (a commit): there is nothing to fail over from; reprotect the machine first (drctl reprotect ${machine.name} ...)`);
      if (!replica.latestRecoveryPointId) throw failedPrecondition(`machine ${machine.name} has no recovery point yet on ${disk.diskId}: wait for its initial sync`);
    }
    job.progress(step, { message: `${p.disks.length} disk${p.disks.length === 1 ? '' : 's'} with recovery points on ${peerName(masterTarget)}; failing over to the ${p.toSite} site` });
  }

  /** Steps synchronize (the source still runs) and drain (it is shut down): FlushReplication per disk. */
  private async drain(job: RunningJob<unknown>, step: StepRecord, p: FailoverParams, which: 'synchronize' | 'drain'): Promise<void> {
    const processServer = this.servers.require(p.processServerId, 'process server');
    const client = this.peers.processServer(processServer);
    for (const disk of p.disks) {
      if (which === 'drain' ? disk.drained : disk.synchronized) continue;
      const response = await retryUnavailable(this.log, job, step, () =>
        whileReporting(
          callPeer(processServer, () => unary(client, client.flushReplication, { diskId: disk.diskId, timeoutMs: flushTimeoutMs }, { timeoutMs: flushTimeoutMs + pointCallTimeoutMs })),
          async (pending) => {
            // What is left to drain is the process server's backlog; the step moves no bytes of its own (no bar).
            const status = await callPeer(processServer, () => unary(client, client.getReplication, { diskId: disk.diskId }, { timeoutMs: progressPollIntervalMs * 4 }));
            if (!pending() || job.signal.aborted) return;
            const backlog = Number(status.backlogBytes);
            const rate = status.applyBytesPerSecond;
            job.progress(step, { message: `${disk.diskId}: ${backlog ? `${formatBytes(backlog)} to apply${rate > 0 ? ` at ${formatBytes(Math.round(rate))}/s` : ''}` : 'everything received is applied'}; waiting for its recovery point` });
          },
        ),
      );
      const pointId = response.recoveryPoint?.id;
      if (!pointId) throw new DrplaneError(ErrorCode.Internal, `${peerName(processServer)} flushed ${disk.diskId} but named no recovery point`);
      job.save(() => {
        if (which === 'drain') {
          disk.drained = true;
          disk.pointId = pointId;
        } else disk.synchronized = true;
        const done = p.disks.filter((candidate) => (which === 'drain' ? candidate.drained : candidate.synchronized)).length;
        step.message = `${done} of ${p.disks.length} disks ${which === 'drain' ? 'drained' : 'synchronized'} (${disk.diskId} to ${pointId})`;
      });
    }
    if (which === 'drain') this.recordPoints(job, p);
  }

  private async shutdownSource(job: RunningJob<unknown>, step: StepRecord, p: FailoverParams): Promise<void> {
    const agent = this.servers.require(p.agentId, 'agent');
    const machine = this.machines.current(job.record.machineId);
    const client = this.peers.agent(agent);
    // Recorded before asking: the agent may shut the disks down even if its answer is lost.
    if (!p.sourceShutDown) job.save(() => (p.sourceShutDown = true));
    const response = await retryUnavailable(this.log, job, step, () =>
      callPeer(agent, () => unary(client, client.shutdownSource, { paths: p.disks.map((disk) => disk.sourcePath), machine: machine.name, reason: `planned ${job.record.kind} ${job.record.jobId}` }, { timeoutMs: shutdownSourceTimeoutMs })),
    );
    const output = response.hookOutput.trim();
    job.progress(step, {
      message: response.hookRan
        ? `shutdown hook ran on ${peerName(agent)}${output ? `: ${output.slice(-hookOutputQuotedMax)}` : ''}; the disks take no more writes`
        : `${peerName(agent)} shut the disks down (no shutdown hook ran: none is configured, or it ran before); they take no more writes`,
    });
  }

  /** Step verify: the agent's hash tree of each source disk and the master target's of its replica (read again) must have equal roots. */
  private async verify(job: RunningJob<unknown>, step: StepRecord, p: FailoverParams): Promise<void> {
    const agent = this.servers.require(p.agentId, 'agent');
    const masterTarget = this.servers.require(p.masterTargetId, 'master target');
    const agentClient = this.peers.agent(agent);
    const mtClient = this.peers.masterTarget(masterTarget);
    for (const disk of p.disks) {
      if (disk.verified) continue;
      job.progress(step, { message: `hashing ${disk.diskId} at the source and on ${peerName(masterTarget)}` });
      const getReplica = () => retryUnavailable(this.log, job, step, () => callPeer(masterTarget, () => unary(mtClient, mtClient.getReplica, { diskId: disk.diskId }, { timeoutMs: peerCallTimeoutMs })));
      const before = await getReplica();
      const [source, replica] = await retryUnavailable(this.log, job, step, () =>
        Promise.all([
          callPeer(agent, () => unary(agentClient, agentClient.openHashTree, { diskId: disk.diskId, path: disk.sourcePath }, { timeoutMs: hashTreeTimeoutMs })),
          callPeer(masterTarget, () => unary(mtClient, mtClient.openHashTree, { diskId: disk.diskId, rescan: true }, { timeoutMs: hashTreeTimeoutMs })),
        ]),
      );
      const after = await getReplica();
      // Only the roots are compared: the trees are closed again at once.
      void unary(agentClient, agentClient.closeHashTree, { treeId: source.treeId }, { timeoutMs: peerCallTimeoutMs }).catch(() => {});
      void unary(mtClient, mtClient.closeHashTree, { treeId: replica.treeId }, { timeoutMs: peerCallTimeoutMs }).catch(() => {});
      if (Number(source.diskBytes) !== Number(replica.diskBytes) || !Buffer.from(source.rootHash).equals(Buffer.from(replica.rootHash))) {
        throw new DrplaneError(
          ErrorCode.Corrupt,
          `the replica of ${disk.diskId} differs from the source after the drain (root hash ${Buffer.from(source.rootHash).toString('hex')} at the source, ${Buffer.from(replica.rootHash).toString('hex')} on ${peerName(masterTarget)}): resync the machine (drctl resync ${this.machines.current(job.record.machineId).name}) and ${job.record.kind === 'failback' ? 'fail back' : 'fail over'} again`,
        );
      }
      // What is proven is the replica as it was hashed: its data must have stood still meanwhile, and
      // the failover materialises the point it stands at (not an earlier drained one). A shut-down source's
      // capture keeps closing batches that only make a point (an idle disk's watermark, a quiet scan pass):
      // they write no byte, so what must stand still is the last batch that wrote data, not the last batch.
      const sequence = Number(after.appliedSequence);
      if (Number(before.dataSequence) !== Number(after.dataSequence) || !after.latestRecoveryPointId || pointSequence(after.latestRecoveryPointId) !== sequence) {
        throw failedPrecondition(
          `the replica of ${disk.diskId} still changed after the drain (last batch with data ${before.dataSequence} -> ${after.dataSequence}, batch ${before.appliedSequence} -> ${after.appliedSequence}, newest point ${after.latestRecoveryPointId || 'none'}): the source is not shut down (is a shutdown hook configured on its agent?); stop the machine and fail over again`,
        );
      }
      job.save(() => {
        disk.verified = true;
        disk.pointId = after.latestRecoveryPointId;
      });
      const verified = p.disks.filter((candidate) => candidate.verified);
      job.progress(step, { bytesDone: totalBytes(verified), message: `${verified.length} of ${p.disks.length} replicas equal their source (hash trees)` });
    }
    this.recordPoints(job, p);
  }

  /** Step select-point: the configuration server's selectors (LATEST drains the process server first and fails if it cannot). */
  private async selectPoints(job: RunningJob<unknown>, step: StepRecord, machine: MachineRecord, p: { selector: PointSelector__Output; timeMs: number; disks: FailoverDisk[] }, failover = false): Promise<void> {
    for (const disk of p.disks) {
      if (disk.pointId) continue;
      let pointId = disk.requestedPointId;
      if (p.selector !== 'BY_ID') {
        const choice: PointChoice = { selector: p.selector, pointId: '', timeMs: p.timeMs };
        try {
          pointId = (await retryUnavailable(this.log, job, step, () => (p.selector === 'LATEST' ? this.drainForLatest(machine, disk.diskId, choice) : this.recoveryPoints.selectDisk(machine, disk.diskId, choice)))).id;
        } catch (error) {
          if (error instanceof DrplaneError && error.code === ErrorCode.NotFound) throw failedPrecondition(`no recovery point of ${disk.diskId} matches ${describeSelector(p.selector, p.timeMs)}: ${error.message}`);
          throw error;
        }
      } else {
        // A point named by id must exist on the master target.
        const parsed = parsePointReference(pointId);
        pointId = (await retryUnavailable(this.log, job, step, () => this.recoveryPoints.selectDisk(machine, parsed.diskId, parsed.choice))).id;
      }
      job.save(() => {
        disk.pointId = pointId;
        step.message = `${p.disks.filter((candidate) => candidate.pointId).length} of ${p.disks.length} points chosen (${describeSelector(p.selector, p.timeMs)})`;
      });
    }
    job.setDetail(`selector ${describeSelector(p.selector, p.timeMs)}: ${p.disks.map((disk) => disk.pointId).join(', ')}`);
    if (failover) this.recordPoints(job, p);
  }

  /** LATEST: the process server drains first; if it cannot, the failover cannot promise the latest point. */
  private async drainForLatest(machine: MachineRecord, diskId: string, choice: PointChoice) {
    try {
      return await this.recoveryPoints.selectDisk(machine, diskId, choice);
    } catch (error) {
      const server = this.servers.get(machine.processServerId);
      throw failedPrecondition(`LATEST drains ${server ? peerName(server) : machine.processServerId} first, and it could not (${errorMessage(error)}): fail over to the newest point already applied with --select latest-processed`);
    }
  }

  /** The chosen points onto the machine's failover record (and the job's detail), with the job, in one transaction. */
  private recordPoints(job: RunningJob<unknown>, p: { selector: PointSelector__Output; planned?: boolean; disks: FailoverDisk[] }): void {
    const pointIds = p.disks.map((disk) => disk.pointId);
    job.save(() => {
      if (p.planned) job.record.detail = `planned: drained to ${pointIds.join(', ')}`;
      const machine = this.machines.current(job.record.machineId);
      if (machine.failover?.jobId === job.record.jobId) this.machines.put({ ...machine, failover: { ...machine.failover, selector: p.selector, recoveryPointIds: pointIds } });
    });
  }

  /**
   * Step fence: per disk a new epoch above the machine's and the master
   * target's, written before the master target hears of it; SetEpoch on each
   * replica; then StopReplication on the old process server (planned: it must
   * answer; unplanned: an unreachable one is noted, its batches are refused by
   * epoch anyway).
   */
  private async fence(job: RunningJob<unknown>, step: StepRecord, p: FailoverParams): Promise<void> {
    const masterTarget = this.servers.require(p.masterTargetId, 'master target');
    const client = this.peers.masterTarget(masterTarget);
    for (const disk of p.disks) {
      if (disk.fenceEpoch === 0) {
        const replicaEpoch = await retryUnavailable(this.log, job, step, () => this.replication.replicaEpoch(masterTarget, disk.diskId));
        job.save(() => {
          const machine = this.machines.current(job.record.machineId);
          const owned = machine.disks.find((candidate) => candidate.diskId === disk.diskId);
          if (!owned) throw failedPrecondition(`disk ${disk.diskId} is no longer part of machine ${machine.name}`);
          owned.epoch = Math.max(owned.epoch, replicaEpoch) + 1;
          disk.fenceEpoch = owned.epoch;
          this.machines.put(machine);
        });
      }
    }
    if (!p.fenced) job.save(() => (p.fenced = true));
    for (const disk of p.disks) {
      if (disk.epochSet) continue;
      await retryUnavailable(this.log, job, step, () => callPeer(masterTarget, () => unary(client, client.setEpoch, { diskId: disk.diskId, epoch: disk.fenceEpoch }, { timeoutMs: peerCallTimeoutMs })));
      job.save(() => {
        disk.epochSet = true;
        step.message = `${p.disks.filter((candidate) => candidate.epochSet).length} of ${p.disks.length} replicas at their new epoch on ${peerName(masterTarget)}`;
      });
    }
    const epochs = describeEpochs(p.disks);
    const processServer = this.servers.get(p.processServerId);
    if (!processServer) {
      job.progress(step, { message: `${epochs}; the old process server ${p.processServerId} is no longer registered (its batches are refused by epoch)` });
      return;
    }
    const psClient = this.peers.processServer(processServer);
    const notes: string[] = [];
    for (const disk of p.disks) {
      if (disk.replicationStopped) continue;
      const stop = () => callPeer(processServer, () => unary(psClient, psClient.stopReplication, { diskId: disk.diskId }, { timeoutMs: peerCallTimeoutMs }));
      try {
        await (p.planned ? retryUnavailable(this.log, job, step, stop) : job.abortable(stop()));
      } catch (error) {
        if (error instanceof JobStopped || error instanceof JobInterrupted) throw error;
        const missing = error instanceof DrplaneError && error.code === ErrorCode.NotFound;
        if (!missing) {
          if (p.planned) throw error;
          // Unplanned: the source site may be gone. The fence holds without it.
          notes.push(`${peerName(processServer)} did not stop ${disk.diskId} (${errorMessage(error)}): its batches are refused by epoch ${disk.fenceEpoch} anyway`);
          this.log.warn({ jobId: job.record.jobId, diskId: disk.diskId, err: errorMessage(error) }, 'unplanned failover: the old process server did not stop replicating; fenced by epoch');
        }
      }
      job.save(() => (disk.replicationStopped = true));
    }
    job.progress(step, { message: notes.length ? `${epochs}; ${notes.join('; ')}` : `${epochs}; replication stopped on ${peerName(processServer)}` });
  }

  /** Step materialise: each chosen point onto its target path (a temporary file renamed over it: the old disk or the whole point). */
  private async materialise(job: RunningJob<unknown>, step: StepRecord, masterTargetId: string, disks: FailoverDisk[]): Promise<void> {
    const masterTarget = this.servers.require(masterTargetId, 'master target');
    const client = this.peers.masterTarget(masterTarget);
    for (const disk of disks) {
      if (disk.materialised) continue;
      job.progress(step, { message: `materialising ${disk.pointId} to ${disk.targetPath}` });
      const before = totalBytes(disks.filter((candidate) => candidate.materialised));
      const response = await retryUnavailable(this.log, job, step, () =>
        whileReporting(
          callPeer(masterTarget, () => unary(client, client.materialiseRecoveryPoint, { recoveryPointId: disk.pointId, path: disk.targetPath, replaceExisting: true }, { timeoutMs: materialiseTimeoutMs })),
          async (pending) => {
            const progress = await masterTargetMaterialiseProgress(this.peers, masterTarget, disk.targetPath);
            if (!progress.running || !pending() || job.signal.aborted) return;
            const copied = Math.min(disk.diskBytes, Number(progress.bytesCopied));
            const writtenBack = Number(progress.beforeImageBytes);
            job.progress(step, { bytesDone: before + copied, message: `materialising ${disk.pointId} to ${disk.targetPath}: ${formatBytes(copied)} of the replica copied${writtenBack ? `, ${formatBytes(writtenBack)} written back from before-images` : ''}` });
          },
        ),
      );
      job.save(() => (disk.materialised = true));
      const materialised = disks.filter((candidate) => candidate.materialised);
      job.progress(step, { bytesDone: totalBytes(materialised), message: `${materialised.length} of ${disks.length} disks materialised (${disk.pointId} to ${response.path}, ${response.beforeImageBytes} bytes from before-images)` });
    }
  }

  /** Step start-target: the master target's start hook, unless no_start. */
  private async startTarget(job: RunningJob<unknown>, step: StepRecord, masterTargetId: string, disks: FailoverDisk[], noStart: boolean): Promise<void> {
    const paths = disks.map((disk) => disk.targetPath);
    if (noStart) {
      job.progress(step, { message: `not started (no_start): start the machine from ${paths.join(', ')}` });
      return;
    }
    const masterTarget = this.servers.require(masterTargetId, 'master target');
    const client = this.peers.masterTarget(masterTarget);
    const machine = this.machines.current(job.record.machineId);
    const epoch = Math.max(...disks.map((disk) => disk.fenceEpoch), ...machine.disks.map((disk) => disk.epoch));
    const response = await retryUnavailable(this.log, job, step, () =>
      callPeer(masterTarget, () => unary(client, client.startMachine, { machine: machine.name, diskPaths: paths, epoch, recoveryPointIds: disks.map((disk) => disk.pointId) }, { timeoutMs: startMachineTimeoutMs })),
    );
    const output = response.output.trim();
    job.progress(step, {
      message: response.hookRan ? `start hook ran on ${peerName(masterTarget)}${output ? `: ${output.slice(-hookOutputQuotedMax)}` : ''}` : `no start hook on ${peerName(masterTarget)}: start the machine from ${paths.join(', ')}`,
    });
  }

  private async retireReplicas(job: RunningJob<unknown>, step: StepRecord, p: CommitParams): Promise<void> {
    const masterTarget = this.servers.require(p.masterTargetId, 'master target');
    const client = this.peers.masterTarget(masterTarget);
    for (const disk of p.disks) {
      if (disk.retired) continue;
      // The failover's fence epoch (a failback plans its commit before its fence: the machine's is the one).
      const owned = this.machines.current(job.record.machineId).disks.find((candidate) => candidate.diskId === disk.diskId);
      if (owned && owned.epoch > disk.epoch) job.save(() => (disk.epoch = owned.epoch));
      try {
        await retryUnavailable(this.log, job, step, () => callPeer(masterTarget, () => unary(client, client.retireReplica, { diskId: disk.diskId, epoch: disk.epoch }, { timeoutMs: peerCallTimeoutMs })));
      } catch (error) {
        // No replica of the disk there: nothing to retire.
        if (!(error instanceof DrplaneError && error.code === ErrorCode.NotFound)) throw error;
      }
      job.save(() => {
        disk.retired = true;
        step.message = `${p.disks.filter((candidate) => candidate.retired).length} of ${p.disks.length} replicas retired on ${peerName(masterTarget)}`;
      });
    }
  }

  /**
   * Step switch-site: in one transaction the flat fields move to the site the
   * machine now runs on (its source) and the other one (its target), the
   * direction flips and the failover record ends; then that site's agent, if
   * one is known, releases the disks (ShutdownSource of an earlier failover).
   */
  private async switchSite(job: RunningJob<unknown>, step: StepRecord, p: CommitParams, onSwitch?: (machine: MachineRecord) => void): Promise<void> {
    if (!p.switched) {
      job.save(() => {
        const machine = switchSite(this.machines.current(job.record.machineId));
        onSwitch?.(machine);
        this.machines.put(machine);
        p.switched = true;
        p.releaseAgentId = machine.agentId;
        p.releasePaths = machine.disks.map((disk) => disk.sourcePath);
        step.message = `the machine runs at its ${machine.direction === 'REVERSE' ? 'recovery' : 'home'} site now (direction ${machine.direction})`;
      });
    }
    const agent = p.releaseAgentId ? this.servers.get(p.releaseAgentId) : undefined;
    if (!agent || p.released) return;
    const client = this.peers.agent(agent);
    await retryUnavailable(this.log, job, step, () => callPeer(agent, () => unary(client, client.releaseSource, { paths: p.releasePaths }, { timeoutMs: peerCallTimeoutMs })));
    job.save(() => {
      p.released = true;
      step.message = `${step.message}; ${peerName(agent)} released its disks`;
    });
  }

  private async deleteDisks(job: RunningJob<unknown>, step: StepRecord, p: CleanupParams): Promise<void> {
    const masterTarget = this.servers.require(p.masterTargetId, 'master target');
    const client = this.peers.masterTarget(masterTarget);
    for (const [index, diskPath] of p.paths.entries()) {
      if (p.deleted[index]) continue;
      try {
        await retryUnavailable(this.log, job, step, () => callPeer(masterTarget, () => unary(client, client.deleteDisk, { path: diskPath }, { timeoutMs: peerCallTimeoutMs })));
      } catch (error) {
        if (!(error instanceof DrplaneError && error.code === ErrorCode.NotFound)) throw error;
      }
      job.save(() => {
        p.deleted[index] = true;
        step.message = `${p.deleted.filter(Boolean).length} of ${p.paths.length} test disks deleted on ${peerName(masterTarget)}`;
      });
    }
  }

  /**
   * Asks the agent to release the source a failed failover shut down; the
   * answer is the error to fail the job with, saying what happened.
   */
  private async releaseAfterFailure(job: RunningJob<unknown>, p: FailoverParams, error: unknown): Promise<Error> {
    const message = errorMessage(error);
    const code = error instanceof DrplaneError ? error.code : ErrorCode.Internal;
    if (!p.sourceShutDown) return error instanceof Error ? error : new Error(message);
    const agent = this.servers.get(p.agentId);
    let note: string;
    try {
      if (!agent) throw new Error(`agent ${p.agentId} is no longer registered`);
      const client = this.peers.agent(agent);
      await callPeer(agent, () => unary(client, client.releaseSource, { paths: p.disks.map((disk) => disk.sourcePath) }, { timeoutMs: peerCallTimeoutMs }));
      job.save(() => (p.sourceShutDown = false));
      note = `${peerName(agent)} released the source disks: they take writes again`;
    } catch (releaseError) {
      this.log.warn({ jobId: job.record.jobId, err: errorMessage(releaseError) }, 'could not release the source after a failed failover');
      note = `the source disks could not be released (${errorMessage(releaseError)}): they take no writes until their agent releases them (ReleaseSource)`;
    }
    return new DrplaneError(code, `${message}; ${note}`);
  }

  private failoverDisks(machine: MachineRecord, point: PointRequest, targetPaths: string[]): FailoverDisk[] {
    return machine.disks.map((disk, index) => ({
      diskId: disk.diskId,
      diskBytes: disk.diskBytes,
      sourcePath: disk.sourcePath,
      targetPath: targetPaths[index]!,
      requestedPointId: point.selector === 'BY_ID' ? point.pointIds[index]! : '',
      pointId: '',
      synchronized: false,
      drained: false,
      verified: false,
      fenceEpoch: 0,
      epochSet: false,
      replicationStopped: false,
      materialised: false,
    }));
  }
}

/**
 * The machine after a commit: the site it failed over to is its source (its
 * disks there are where the failover landed), the other its target; the
 * flat fields name them, and the direction flips. Pure: call inside a transaction.
 */
export function switchSite(stored: MachineRecord): MachineRecord {
  const machine = withSites(stored);
  const toRecovery = machine.direction === 'FORWARD';
  const landed = machine.failover?.diskPaths.length ? machine.failover.diskPaths : (toRecovery ? machine.recovery : machine.home).diskPaths;
  const source = { ...(toRecovery ? machine.recovery : machine.home), diskPaths: [...landed] };
  const target = toRecovery ? machine.home : machine.recovery;
  return {
    ...machine,
    home: toRecovery ? target : source,
    recovery: toRecovery ? source : target,
    direction: toRecovery ? 'REVERSE' : 'FORWARD',
    agentId: source.agentId,
    processServerId: source.processServerId,
    masterTargetId: target.masterTargetId,
    datastore: target.datastore,
    disks: machine.disks.map((disk, index) => ({ ...disk, sourcePath: landed[index] ?? disk.sourcePath, replicaPath: target.replicaPaths[index] ?? '', latestRecoveryPointId: '' })),
    failover: undefined,
  };
}

/** "LATEST_APP_CONSISTENT", "AT_OR_BEFORE 2024-05-01T13:45:00.000Z". */
export function describeSelector(selector: PointSelector__Output, timeMs: number): string {
  return selector === 'AT_OR_BEFORE' ? `AT_OR_BEFORE ${new Date(timeMs).toISOString()}` : selector;
}

function describeEpochs(disks: FailoverDisk[]): string {
  const epochs = [...new Set(disks.map((disk) => disk.fenceEpoch))];
  return epochs.length === 1 ? `fenced at epoch ${epochs[0]}` : `fenced at epochs ${disks.map((disk) => `${disk.diskId} ${disk.fenceEpoch}`).join(', ')}`;
}
