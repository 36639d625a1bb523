// Test failover: a recovery point materialised to separate disks on the
// target's master target while replication goes on, and its cleanup, which
// deletes those disks.
import path from 'node:path';
import { DrplaneError, ErrorCode, failedPrecondition } from '../../../shared/errors';
import { unary } from '../../../shared/grpc';
import type { PointSelector__Output } from '../../../generated/drplane/v1/PointSelector';
import { totalBytes, withSites } from '../entities/machines';
import { callPeer, peerName } from '../entities/peers';
import { finishJob } from '../jobs/endings';
import { peerCallTimeoutMs, retryUnavailable } from '../jobs/peer-calls';
import { refuseBusyOrUnfinished, stateRefusal, whatNext } from '../jobs/refusals';
import { jobEnded, type RunningJob } from '../jobs/running-job';
import type { WorkflowContext } from '../jobs/workflow-context';
import type { FailoverRecord, JobRecord, StepRecord } from '../store/records';
import type { Failovers } from './failover';
import { cleanupTestFailoverJobKind, type CleanupParams, failoverDisks, hasPoints, testFailoverFolder, testFailoverJobKind, type TestFailoverParams } from './failover-jobs';
import type { FailoverSteps } from './failover-steps';

export class TestFailovers {
  constructor(
    private readonly context: WorkflowContext,
    /** A test failover checks its point request as a failover does. */
    private readonly failovers: Failovers,
    private readonly steps: FailoverSteps,
  ) {
    this.context.jobs.register<TestFailoverParams>(testFailoverJobKind, {
      run: async (job) => {
        const p = job.params;
        const machine = this.context.machines.current(job.record.machineId);
        await job.runStep('select-point', (step) => this.steps.selectPoints(job, step, { ...machine, processServerId: p.processServerId, masterTargetId: p.masterTargetId }, p));
        await job.runStep('materialise', (step) => this.steps.materialise(job, step, p.masterTargetId, p.disks));
      },
      ended: (job, error) => {
        const machine = this.context.machines.current(job.machineId);
        if (machine.testFailover?.jobId === job.jobId) {
          machine.testFailover = { ...machine.testFailover, selector: job.params.selector, recoveryPointIds: job.params.disks.map((disk) => disk.pointId) };
        }
        // Replication went on: the machine keeps its state; a failed test failover is restarted or cleaned up.
        finishJob(this.context.machines, machine, job, error, machine.state);
      },
    });
    this.context.jobs.register<CleanupParams>(cleanupTestFailoverJobKind, {
      run: async (job) => {
        await job.runStep('delete-disks', (step) => this.deleteDisks(job, step, job.params));
      },
      ended: (job, error) => {
        const machine = this.context.machines.current(job.machineId);
        if (!error) machine.testFailover = undefined;
        finishJob(this.context.machines, machine, job, error, machine.state);
      },
    });
  }

  /** Materialises a point to separate disks on the target's master target while replication goes on. */
  async testFailover(request: { machine: string; selector: PointSelector__Output; pointIds: string[]; timeMs: number }): Promise<JobRecord> {
    const machine = withSites(this.context.machines.get(request.machine));
    refuseBusyOrUnfinished(this.context.store, machine);
    if (machine.testFailover) {
      throw failedPrecondition(`machine ${machine.name} has a test failover already (${machine.testFailover.jobId}, disks ${machine.testFailover.diskPaths.join(', ')}): clean it up first (drctl cleanup ${machine.name})`);
    }
    if (!hasPoints(machine.state)) throw failedPrecondition(`machine ${machine.name} has no recovery point yet: ${whatNext(machine)}`);
    if (machine.state !== 'PROTECTED' && machine.state !== 'RESYNC_REQUIRED') throw stateRefusal(machine);
    const point = this.failovers.checkPointRequest(machine, { selector: request.selector === 'POINT_SELECTOR_UNSPECIFIED' ? 'LATEST' : request.selector, pointIds: request.pointIds, timeMs: request.timeMs });
    this.context.servers.require(machine.masterTargetId, 'master target');
    await this.failovers.requirePoints(machine);
    const disks = failoverDisks(machine, point, machine.disks.map((disk) => path.posix.join(machine.datastore, testFailoverFolder, `${disk.diskId}.img`)));
    const job = this.context.store.write(() => {
      const current = this.context.machines.current(machine.machineId);
      refuseBusyOrUnfinished(this.context.store, current);
      if (current.testFailover) throw failedPrecondition(`machine ${current.name} has a test failover already: clean it up first (drctl cleanup ${current.name})`);
      const params: TestFailoverParams = { selector: point.selector, timeMs: point.timeMs, processServerId: current.processServerId, masterTargetId: current.masterTargetId, disks };
      const record = this.context.jobs.create(testFailoverJobKind, current.machineId, [{ name: 'select-point' }, { name: 'materialise', bytesTotal: totalBytes(disks) }], params);
      const testFailover: FailoverRecord = { jobId: record.jobId, planned: false, selector: point.selector, recoveryPointIds: [], diskPaths: disks.map((disk) => disk.targetPath), masterTargetId: current.masterTargetId, timeMs: Date.now() };
      this.context.machines.put({ ...current, activeJobId: record.jobId, restartableJobId: '', testFailover });
      return record;
    });
    this.context.log.info({ jobId: job.jobId, machine: machine.name, selector: point.selector }, 'test failover started');
    this.context.jobs.start(job as JobRecord);
    return job as JobRecord;
  }

  /** Deletes a test failover's disks. */
  async cleanupTestFailover(machineName: string): Promise<JobRecord> {
    const machine = this.context.machines.get(machineName);
    const active = machine.activeJobId ? this.context.store.jobs.get(machine.activeJobId) : undefined;
    if (active && !jobEnded(active.state)) throw failedPrecondition(`machine ${machine.name} is busy with ${active.kind} ${active.jobId}: wait for it (drctl job watch ${active.jobId}) or stop it (drctl job stop ${active.jobId})`);
    if (!machine.testFailover) throw failedPrecondition(`machine ${machine.name} has no test failover to clean up (drctl test-failover ${machine.name} makes one)`);
    const testFailover = machine.testFailover;
    this.context.servers.require(testFailover.masterTargetId, 'master target');
    const job = this.context.store.write(() => {
      const current = this.context.machines.current(machine.machineId);
      const params: CleanupParams = { masterTargetId: testFailover.masterTargetId, paths: [...testFailover.diskPaths], deleted: testFailover.diskPaths.map(() => false) };
      const record = this.context.jobs.create(cleanupTestFailoverJobKind, current.machineId, [{ name: 'delete-disks' }], params);
      // The test failover's own failed job is superseded by its cleanup; any other stays restartable.
      const restartableJobId = current.restartableJobId === testFailover.jobId ? '' : current.restartableJobId;
      this.context.machines.put({ ...current, activeJobId: record.jobId, restartableJobId });
      return record;
    });
    this.context.log.info({ jobId: job.jobId, machine: machine.name, paths: testFailover.diskPaths }, 'cleaning up a test failover');
    this.context.jobs.start(job as JobRecord);
    return job as JobRecord;
  }

  private async deleteDisks(job: RunningJob<unknown>, step: StepRecord, p: CleanupParams): Promise<void> {
    const masterTarget = this.context.servers.require(p.masterTargetId, 'master target');
    const client = this.context.peers.masterTarget(masterTarget);
    for (const [index, diskPath] of p.paths.entries()) {
      if (p.deleted[index]) continue;
      try {
        await retryUnavailable(this.context.log, job, step, () => callPeer(masterTarget, () => unary(client, client.deleteDisk, { path: diskPath }, { timeoutMs: peerCallTimeoutMs })));
      } catch (error) {
        if (!(error instanceof DrplaneError && error.code === ErrorCode.NotFound)) throw error;
      }
      job.save(() => {
        p.deleted[index] = true;
        step.message = `${p.deleted.filter(Boolean).length} of ${p.paths.length} test disks deleted on ${peerName(masterTarget)}`;
      });
    }
  }
}
