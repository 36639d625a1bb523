// Failback: a machine that runs at its recovery site, protected toward home
// (PROTECTED, REVERSE), goes home in one job: the failover steps toward home
// (planned by default: shutdown hook, drain, hash proof), the commit steps,
// then the reprotect steps toward the recovery site again, to the original
// location (its disks there seed the new replicas) with its forward policy.
// At most concurrentFailbacksMax failbacks run at once: the others wait in
// JOB_QUEUED (step wait-for-slot), oldest first. The home site must be in this
// configuration server's database: its agent, process server and master target.
import { failedPrecondition, invalidArgument } from '../../../shared/errors';
import { concurrentFailbacksMax } from '../../../shared/limits';
import type { PointSelector__Output } from '../../../generated/drplane/v1/PointSelector';
import type { ReprotectLocation__Output } from '../../../generated/drplane/v1/ReprotectLocation';
import type { Commits } from './commit';
import type { Failovers } from './failover';
import { commitSteps, failoverSteps, type CommitParams, type FailoverParams } from './failover-jobs';
import { recoveredDiskPath, replicaDiskPath, totalBytes, withSites } from '../entities/machines';
import { forwardPolicyOf, type Reprotects } from './reprotect';
import { newReplicationDisk, type ReplicationParams } from './replication-jobs';
import type { ReplicationSessions } from './replication-sessions';
import type { JobRecord, MachineRecord } from '../store/records';
import type { RunningJob } from '../jobs/running-job';
import { blockingJobKinds, refuseBusyOrUnfinished, stateRefusal } from '../jobs/refusals';
import type { WorkflowContext } from '../jobs/workflow-context';
import { finishJob } from '../jobs/endings';

export const failbackJobKind = 'failback';
export const failbackSlotStep = 'wait-for-slot';

export interface FailbackRequest {
  machine: string;
  unplanned: boolean;
  selector: PointSelector__Output;
  pointIds: string[];
  timeMs: number;
  synchronizeFirst: boolean;
  location: ReprotectLocation__Output;
}

export interface FailbackParams {
  failover: FailoverParams;
  commit: CommitParams;
  /** The reprotect toward the recovery site, planned in the transaction that switches the machine home. */
  replication?: ReplicationParams;
}

export class Failbacks {
  constructor(
    private readonly context: WorkflowContext,
    private readonly sessions: ReplicationSessions,
    private readonly failovers: Failovers,
    private readonly commits: Commits,
    private readonly reprotects: Reprotects,
  ) {
    if (!blockingJobKinds.has(failbackJobKind)) throw new Error('failback must be a blocking job kind');
    this.context.jobs.register<FailbackParams>(failbackJobKind, {
      slot: { name: failbackJobKind, max: concurrentFailbacksMax, step: failbackSlotStep, label: 'failback' },
      run: async (job) => {
        const p = job.params;
        this.begin(job);
        await this.failovers.runFailover(job, p.failover);
        this.setState(job, 'FAILOVER_IN_PROGRESS', 'COMMIT_IN_PROGRESS');
        await this.commits.runCommit(job, p.commit, (machine) => this.planReprotect(job, machine));
        const replication = p.replication!;
        await job.runStep('create-replicas', (step) => this.sessions.createReplicas(job, replication, step));
        await job.runStep('start-replication', (step) => this.sessions.startSessions(job, replication, step));
        await job.runStep('initial-sync', (step) => this.sessions.waitForFirstPoints(job, replication, step));
      },
      ended: (job, error, stopped) => {
        const machine = this.context.machines.current(job.machineId);
        // Stopped before it ever got a slot: nothing happened, there is nothing to continue.
        if (stopped && job.steps[0]?.state !== 'JOB_SUCCEEDED') {
          if (machine.activeJobId === job.jobId) machine.activeJobId = '';
          machine.stateReason = `${job.kind} ${job.jobId} was stopped before it got a failback slot: nothing changed`;
          this.context.machines.put(machine);
          return;
        }
        // Failed before its fence: nothing changed owner, the machine is protected in reverse again.
        if (this.failovers.endFailover(machine, job, job.params.failover, error, stopped)) return;
        if (!error && job.params.replication) this.sessions.recordFirstPoints(machine, job.params.replication);
        finishJob(this.context.machines, machine, job, error, 'PROTECTED');
      },
    });
  }

  async failback(request: FailbackRequest): Promise<JobRecord> {
    const machine = withSites(this.context.machines.get(request.machine));
    refuseBusyOrUnfinished(this.context.store, machine);
    const planned = !request.unplanned;
    if ((machine.state === 'PROTECTED' || machine.state === 'RESYNC_REQUIRED') && machine.direction !== 'REVERSE') {
      throw failedPrecondition(`machine ${machine.name} is ${machine.state} from its home site already: a failback brings home a machine that runs at its recovery site`);
    }
    if (machine.state === 'RESYNC_REQUIRED' && planned) {
      throw failedPrecondition(`machine ${machine.name} is RESYNC_REQUIRED: a planned failback needs its replica in sync; resync it first (drctl resync ${machine.name}), or fail back unplanned to a recovery point it has (--unplanned)`);
    }
    if (machine.state !== 'PROTECTED' && machine.state !== 'RESYNC_REQUIRED') throw stateRefusal(machine);
    // The home site must be known here: the failover lands there, and the machine is protected from there after.
    for (const [role, serverId] of [
      ['agent', machine.home.agentId],
      ['process server', machine.home.processServerId],
      ['master target', machine.home.masterTargetId],
    ] as const) {
      if (!serverId || !this.context.servers.get(serverId)) {
        throw failedPrecondition(`a failback needs machine ${machine.name}'s home site in this configuration server's database, and its ${role} ${serverId || '(unknown)'} is not registered: start it with --configuration-server and --passphrase-file so it registers`);
      }
    }
    const recoveryTarget = this.context.servers.require(machine.recovery.masterTargetId, 'master target of the recovery site');
    if (!machine.recovery.datastore) throw failedPrecondition(`machine ${machine.name} has no datastore at its recovery site to be protected to after the failback`);
    if (request.synchronizeFirst && !planned) throw invalidArgument('synchronize_first: only a planned failback synchronizes first (the source must still run)');
    const point = planned
      ? { selector: 'LATEST' as const, pointIds: [], timeMs: 0 }
      : this.failovers.checkPointRequest(machine, { selector: request.selector === 'POINT_SELECTOR_UNSPECIFIED' ? 'LATEST' : request.selector, pointIds: request.pointIds, timeMs: request.timeMs });
    this.failovers.requireFailoverPeers(machine, planned);
    await this.failovers.requirePoints(machine);
    // The reprotect back to the recovery site needs room there (the replicas retired at the first commit do not count).
    await this.reprotects.checkMasterTarget(recoveryTarget, machine.disks.map((disk) => disk.diskId), `machine ${machine.name}`);
    const alternate = request.location === 'ALTERNATE_LOCATION';
    const failover = this.failovers.planFailover(machine, {
      planned,
      synchronizeFirst: request.synchronizeFirst,
      noStart: false,
      point,
      targetPaths: alternate ? machine.disks.map((disk) => recoveredDiskPath(machine.home.datastore || machine.datastore, disk.diskId)) : undefined,
    });
    const job = this.context.store.write(() => {
      const current = withSites(this.context.machines.current(machine.machineId));
      refuseBusyOrUnfinished(this.context.store, current);
      if (current.state !== machine.state || current.direction !== 'REVERSE') throw stateRefusal(current);
      const params: FailbackParams = { failover, commit: this.commits.planCommit(current) };
      const diskBytes = totalBytes(current.disks);
      const steps = [{ name: failbackSlotStep }, ...failoverSteps(failover.planned, failover.synchronizeFirst, diskBytes), ...commitSteps, { name: 'create-replicas' }, { name: 'start-replication' }, { name: 'initial-sync', bytesTotal: diskBytes }];
      const record = this.context.jobs.create(failbackJobKind, current.machineId, steps, params);
      // Protected (in reverse) until it gets a slot: the failover starts then.
      this.context.machines.put({ ...current, stateReason: `${failbackJobKind} ${record.jobId}`, activeJobId: record.jobId, restartableJobId: '' });
      return record;
    });
    this.context.log.info({ jobId: job.jobId, machine: machine.name, planned, selector: point.selector, alternate }, 'failback requested');
    this.context.jobs.start(job as JobRecord);
    return job as JobRecord;
  }

  /** Admitted: the machine is failing over (unless it went further before a restart). */
  private begin(job: RunningJob<FailbackParams>): void {
    const p = job.params;
    const machine = this.context.machines.current(job.record.machineId);
    if (machine.state !== p.failover.stateBefore || p.commit.switched) return;
    job.save(() => {
      const current = this.context.machines.current(job.record.machineId);
      this.context.machines.put({ ...current, state: 'FAILOVER_IN_PROGRESS', failover: this.failovers.failoverRecord(job.record.jobId, p.failover) });
    });
  }

  private setState(job: RunningJob<FailbackParams>, from: MachineRecord['state'], to: MachineRecord['state']): void {
    const machine = this.context.machines.current(job.record.machineId);
    if (machine.state !== from) return;
    job.save(() => this.context.machines.put({ ...this.context.machines.current(job.record.machineId), state: to }));
  }

  /**
   * Inside the transaction that switches the machine home: its reprotect
   * toward the recovery site, to the original location there (the disks it
   * ran on seed the new replicas), with its forward policy.
   */
  private planReprotect(job: RunningJob<FailbackParams>, machine: MachineRecord): void {
    const sited = withSites(machine);
    const target = sited.recovery;
    const datastore = target.datastore;
    const policy = forwardPolicyOf(this.context.policies, machine);
    const replicaPaths = machine.disks.map((disk, index) => target.replicaPaths[index] || replicaDiskPath(datastore, disk.diskId));
    job.params.replication = {
      processServerId: machine.processServerId,
      masterTargetId: target.masterTargetId,
      datastore,
      policyId: policy.policyId,
      captureMode: machine.captureMode ?? 'CAPTURE_SCAN',
      scanIntervalMs: machine.scanIntervalMs ?? 0,
      full: true,
      epochAboveTarget: true,
      disks: machine.disks.map((disk, index) => ({ ...newReplicationDisk(disk), replicaPath: replicaPaths[index]!, seedPath: target.diskPaths[index] ?? '', epoch: 0 })),
    };
    machine.state = 'REPROTECTING';
    machine.policyId = policy.policyId;
    machine.masterTargetId = target.masterTargetId;
    machine.datastore = datastore;
    machine.recovery = { ...target, replicaPaths };
    machine.disks = machine.disks.map((disk, index) => ({ ...disk, replicaPath: replicaPaths[index]! }));
  }
}
