// Failover and change of recovery point (docs/failover.md); commit and test
// failover are in commit.ts and test-failover.ts, the steps in
// failover-steps.ts. Each is a job whose steps are idempotent, so a job
// resumes after a restart of the configuration server and continues from its
// stopped or failed step when the operator restarts it.
//
// The invariant the steps keep: before the `fence` step nothing has changed
// owner (a failure there releases the source and the machine is PROTECTED
// again); from the first SetEpoch on, the old source can no longer write to
// the target site, and the failover only goes forward (a failure leaves it
// FAILOVER_IN_PROGRESS, to be restarted). Each disk's new epoch is written,
// with the job, before any peer hears of it.
import { invalidArgument, failedPrecondition, DrplaneError, ErrorCode } from '../../../shared/errors';
import { unary } from '../../../shared/grpc';
import type { PointSelector__Output } from '../../../generated/drplane/v1/PointSelector';
import { recoveredDiskPath, totalBytes, withSites } from '../entities/machines';
import { callPeer } from '../entities/peers';
import { parsePointReference } from '../entities/recovery-points';
import { finishJob } from '../jobs/endings';
import { peerCallTimeoutMs } from '../jobs/peer-calls';
import { refuseBusyOrUnfinished, stateRefusal, whatNext } from '../jobs/refusals';
import { JobInterrupted, JobStopped, type RunningJob } from '../jobs/running-job';
import type { WorkflowContext } from '../jobs/workflow-context';
import type { FailoverRecord, JobRecord, MachineRecord } from '../store/records';
import { changePointJobKind, type ChangePointParams, failoverDisks, type FailoverOptions, type FailoverParams, failoverJobKind, failoverSteps, hasPoints, type PointRequest } from './failover-jobs';
import type { FailoverSteps } from './failover-steps';

export class Failovers {
  constructor(
    private readonly context: WorkflowContext,
    private readonly steps: FailoverSteps,
  ) {
    this.context.jobs.register<FailoverParams>(failoverJobKind, {
      run: async (job) => {
        await this.runFailover(job, job.params);
      },
      ended: (job, error, stopped) => {
        const machine = this.context.machines.current(job.machineId);
        if (this.endFailover(machine, job, job.params, error, stopped)) return;
        finishJob(this.context.machines, machine, job, error, 'FAILED_OVER');
      },
    });
    this.context.jobs.register<ChangePointParams>(changePointJobKind, {
      run: async (job) => {
        const p = job.params;
        const machine = this.context.machines.current(job.record.machineId);
        await job.runStep('select-point', (step) => this.steps.selectPoints(job, step, { ...machine, masterTargetId: p.masterTargetId }, p));
        await job.runStep('materialise', (step) => this.steps.materialise(job, step, p.masterTargetId, p.disks));
        await job.runStep('start-target', (step) => this.steps.startTarget(job, step, p.masterTargetId, p.disks, p.noStart));
      },
      ended: (job, error) => {
        const machine = this.context.machines.current(job.machineId);
        if (!error && machine.failover) {
          machine.failover = { ...machine.failover, selector: job.params.selector, recoveryPointIds: job.params.disks.map((disk) => disk.pointId), timeMs: Date.now() };
        }
        finishJob(this.context.machines, machine, job, error, 'FAILED_OVER');
      },
    });
  }

  /** Fails a machine over (planned: no data loss; unplanned: the selected point). */
  async failover(request: { machine: string; planned: boolean; synchronizeFirst: boolean; selector: PointSelector__Output; pointIds: string[]; timeMs: number; noStart: boolean }): Promise<JobRecord> {
    const machine = withSites(this.context.machines.get(request.machine));
    refuseBusyOrUnfinished(this.context.store, machine);
    this.refuseFailoverState(machine, request.planned);
    if (request.synchronizeFirst && !request.planned) throw invalidArgument('synchronize_first: only a planned failover synchronizes first (the source must still run)');
    const point = request.planned ? { selector: 'LATEST' as const, pointIds: [], timeMs: 0 } : this.checkPointRequest(machine, { selector: request.selector === 'POINT_SELECTOR_UNSPECIFIED' ? 'LATEST' : request.selector, pointIds: request.pointIds, timeMs: request.timeMs });
    this.requireFailoverPeers(machine, request.planned);
    await this.requirePoints(machine);
    const params = this.planFailover(machine, { planned: request.planned, synchronizeFirst: request.synchronizeFirst, noStart: request.noStart, point });
    const job = this.context.store.write(() => {
      const current = withSites(this.context.machines.current(machine.machineId));
      refuseBusyOrUnfinished(this.context.store, current);
      this.refuseFailoverState(current, request.planned);
      const record = this.context.jobs.create(failoverJobKind, current.machineId, failoverSteps(params.planned, params.synchronizeFirst, totalBytes(params.disks)), { ...params, stateBefore: current.state });
      this.context.machines.put({
        ...current,
        state: 'FAILOVER_IN_PROGRESS',
        stateReason: `${failoverJobKind} ${record.jobId}`,
        activeJobId: record.jobId,
        restartableJobId: '',
        failover: this.failoverRecord(record.jobId, params),
      });
      return record;
    });
    this.context.log.info({ jobId: job.jobId, machine: machine.name, planned: params.planned, selector: params.selector, toSite: params.toSite, noStart: params.noStart }, 'failover started');
    this.context.jobs.start(job as JobRecord);
    return job as JobRecord;
  }

  /** Before commit: materialise another point onto the failed-over disks. */
  async changeRecoveryPoint(request: { machine: string; selector: PointSelector__Output; pointIds: string[]; timeMs: number }): Promise<JobRecord> {
    const machine = withSites(this.context.machines.get(request.machine));
    refuseBusyOrUnfinished(this.context.store, machine);
    if (machine.state !== 'FAILED_OVER' || !machine.failover) throw stateRefusal(machine);
    if (request.selector === 'POINT_SELECTOR_UNSPECIFIED') throw invalidArgument('selector: required (LATEST_PROCESSED, LATEST_APP_CONSISTENT, LATEST_CRASH_CONSISTENT, BY_ID or AT_OR_BEFORE)');
    // After the fence nothing more reaches the replica: the latest point is the latest one applied.
    const selector = request.selector === 'LATEST' ? 'LATEST_PROCESSED' : request.selector;
    const point = this.checkPointRequest(machine, { selector, pointIds: request.pointIds, timeMs: request.timeMs });
    const failover = machine.failover;
    this.context.servers.require(failover.masterTargetId, 'master target');
    const disks = failoverDisks(machine, point, failover.diskPaths);
    const job = this.context.store.write(() => {
      const current = this.context.machines.current(machine.machineId);
      refuseBusyOrUnfinished(this.context.store, current);
      if (current.state !== 'FAILED_OVER') throw stateRefusal(current);
      const params: ChangePointParams = { selector, timeMs: point.timeMs, masterTargetId: failover.masterTargetId, noStart: Boolean(failover.noStart), disks };
      const record = this.context.jobs.create(changePointJobKind, current.machineId, [{ name: 'select-point' }, { name: 'materialise', bytesTotal: totalBytes(disks) }, { name: 'start-target' }], params);
      this.context.machines.put({ ...current, stateReason: `${changePointJobKind} ${record.jobId}`, activeJobId: record.jobId, restartableJobId: '' });
      return record;
    });
    this.context.log.info({ jobId: job.jobId, machine: machine.name, selector }, 'changing the recovery point of a failed-over machine');
    this.context.jobs.start(job as JobRecord);
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
    this.context.servers.require(machine.masterTargetId, 'master target');
    if (!planned) return;
    this.context.servers.require(machine.agentId, 'agent');
    this.context.servers.require(machine.processServerId, 'process server');
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
    const masterTarget = this.context.servers.require(machine.masterTargetId, 'master target');
    const client = this.context.peers.masterTarget(masterTarget);
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
      disks: failoverDisks(machine, options.point, targetPaths),
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
      await job.runStep('check', (step) => this.steps.check(job, step, p));
      if (p.planned) {
        if (p.synchronizeFirst) await job.runStep('synchronize', (step) => this.steps.drain(job, step, p, 'synchronize'));
        await job.runStep('shutdown-source', (step) => this.steps.shutdownSource(job, step, p));
        await job.runStep('drain', (step) => this.steps.drain(job, step, p, 'drain'));
        await job.runStep('verify', (step) => this.steps.verify(job, step, p));
      } else {
        const machine = this.context.machines.current(job.record.machineId);
        await job.runStep('select-point', (step) => this.steps.selectPoints(job, step, { ...machine, processServerId: p.processServerId, masterTargetId: p.masterTargetId }, p, true));
      }
      await job.runStep('fence', (step) => this.steps.fence(job, step, p));
    } catch (error) {
      const interrupted = error instanceof JobStopped || error instanceof JobInterrupted || job.stopRequested;
      if (interrupted || p.fenced) throw error;
      throw await this.steps.releaseAfterFailure(job, p, error);
    }
    await job.runStep('materialise', (step) => this.steps.materialise(job, step, p.masterTargetId, p.disks));
    await job.runStep('start-target', (step) => this.steps.startTarget(job, step, p.masterTargetId, p.disks, p.noStart));
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
    this.context.machines.put(machine);
    return true;
  }
}
