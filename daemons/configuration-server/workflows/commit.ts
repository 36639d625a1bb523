// Commit: ends a failover. The replicas the machine failed over from are
// retired, and in one transaction the machine's flat fields move to the site
// it now runs on (its direction flips); that site's agent, if one is known,
// releases the disks an earlier failover shut down.
import { DrplaneError, ErrorCode } from '../../../shared/errors';
import { unary } from '../../../shared/grpc';
import { withSites } from '../entities/machines';
import { callPeer, peerName } from '../entities/peers';
import { finishJob } from '../jobs/endings';
import { peerCallTimeoutMs, retryUnavailable } from '../jobs/peer-calls';
import { refuseBusyOrUnfinished, stateRefusal } from '../jobs/refusals';
import type { RunningJob } from '../jobs/running-job';
import type { WorkflowContext } from '../jobs/workflow-context';
import type { JobRecord, MachineRecord, StepRecord } from '../store/records';
import { commitJobKind, type CommitParams, commitSteps } from './failover-jobs';

export class Commits {
  constructor(private readonly context: WorkflowContext) {
    this.context.jobs.register<CommitParams>(commitJobKind, {
      run: async (job) => {
        await this.runCommit(job, job.params);
      },
      ended: (job, error) => finishJob(this.context.machines, this.context.machines.current(job.machineId), job, error, 'COMMITTED'),
    });
  }

  /** Ends a failover: the replicas it came from are retired, the machine runs at the other site. */
  async commit(machineName: string): Promise<JobRecord> {
    const machine = withSites(this.context.machines.get(machineName));
    refuseBusyOrUnfinished(this.context.store, machine);
    if (machine.state !== 'FAILED_OVER' || !machine.failover) throw stateRefusal(machine);
    this.context.servers.require(machine.failover.masterTargetId, 'master target');
    const job = this.context.store.write(() => {
      const current = this.context.machines.current(machine.machineId);
      refuseBusyOrUnfinished(this.context.store, current);
      if (current.state !== 'FAILED_OVER' || !current.failover) throw stateRefusal(current);
      const record = this.context.jobs.create(commitJobKind, current.machineId, commitSteps, this.planCommit(current));
      this.context.machines.put({ ...current, state: 'COMMIT_IN_PROGRESS', stateReason: `${commitJobKind} ${record.jobId}`, activeJobId: record.jobId, restartableJobId: '' });
      return record;
    });
    this.context.log.info({ jobId: job.jobId, machine: machine.name }, 'committing the failover');
    this.context.jobs.start(job as JobRecord);
    return job as JobRecord;
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

  private async retireReplicas(job: RunningJob<unknown>, step: StepRecord, p: CommitParams): Promise<void> {
    const masterTarget = this.context.servers.require(p.masterTargetId, 'master target');
    const client = this.context.peers.masterTarget(masterTarget);
    for (const disk of p.disks) {
      if (disk.retired) continue;
      // The failover's fence epoch (a failback plans its commit before its fence: the machine's is the one).
      const owned = this.context.machines.current(job.record.machineId).disks.find((candidate) => candidate.diskId === disk.diskId);
      if (owned && owned.epoch > disk.epoch) job.save(() => (disk.epoch = owned.epoch));
      try {
        await retryUnavailable(this.context.log, job, step, () => callPeer(masterTarget, () => unary(client, client.retireReplica, { diskId: disk.diskId, epoch: disk.epoch }, { timeoutMs: peerCallTimeoutMs })));
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
        const machine = switchSite(this.context.machines.current(job.record.machineId));
        onSwitch?.(machine);
        this.context.machines.put(machine);
        p.switched = true;
        p.releaseAgentId = machine.agentId;
        p.releasePaths = machine.disks.map((disk) => disk.sourcePath);
        step.message = `the machine runs at its ${machine.direction === 'REVERSE' ? 'recovery' : 'home'} site now (direction ${machine.direction})`;
      });
    }
    const agent = p.releaseAgentId ? this.context.servers.get(p.releaseAgentId) : undefined;
    if (!agent || p.released) return;
    const client = this.context.peers.agent(agent);
    await retryUnavailable(this.context.log, job, step, () => callPeer(agent, () => unary(client, client.releaseSource, { paths: p.releasePaths }, { timeoutMs: peerCallTimeoutMs })));
    job.save(() => {
      p.released = true;
      step.message = `${step.message}; ${peerName(agent)} released its disks`;
    });
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
