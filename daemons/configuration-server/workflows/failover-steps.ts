// The steps of the failover family's jobs (failover-jobs.ts): each is
// idempotent and records what it did with the job, so a resumed or restarted
// job skips what is done. Before the fence nothing changes owner; from the
// first SetEpoch on, the old source can no longer write to the target site.
import { DrplaneError, ErrorCode, failedPrecondition } from '../../../shared/errors';
import { unary } from '../../../shared/grpc';
import { formatBytes } from '../../../shared/sizes';
import type { PointSelector__Output } from '../../../generated/drplane/v1/PointSelector';
import { totalBytes } from '../entities/machines';
import { callPeer, peerName } from '../entities/peers';
import { flushTimeoutMs, masterTargetMaterialiseProgress, materialiseTimeoutMs, parsePointReference, pointCallTimeoutMs, type PointChoice, pointSequence, type RecoveryPoints } from '../entities/recovery-points';
import { errorMessage, peerCallTimeoutMs, progressPollIntervalMs, retryUnavailable, whileReporting } from '../jobs/peer-calls';
import { JobInterrupted, JobStopped, type RunningJob } from '../jobs/running-job';
import type { WorkflowContext } from '../jobs/workflow-context';
import type { MachineRecord, StepRecord } from '../store/records';
import { describeEpochs, describeSelector, type FailoverDisk, type FailoverParams, hashTreeTimeoutMs, hookOutputQuotedMax, shutdownSourceTimeoutMs, startMachineTimeoutMs } from './failover-jobs';
import type { ReplicationSessions } from './replication-sessions';

export class FailoverSteps {
  constructor(
    private readonly context: WorkflowContext,
    private readonly recoveryPoints: RecoveryPoints,
    /** A fence's epoch is above the master target's. */
    private readonly sessions: ReplicationSessions,
  ) {}

  async check(job: RunningJob<unknown>, step: StepRecord, p: FailoverParams): Promise<void> {
    const masterTarget = this.context.servers.require(p.masterTargetId, 'master target');
    if (p.planned) {
      this.context.servers.require(p.agentId, 'agent');
      this.context.servers.require(p.processServerId, 'process server');
    }
    const machine = this.context.machines.current(job.record.machineId);
    const client = this.context.peers.masterTarget(masterTarget);
    for (const disk of p.disks) {
      const replica = await retryUnavailable(this.context.log, job, step, () => callPeer(masterTarget, () => unary(client, client.getReplica, { diskId: disk.diskId }, { timeoutMs: peerCallTimeoutMs })));
      if (replica.retired) throw failedPrecondition(`${peerName(masterTarget)} retired the replica of ${disk.diskId} (a commit): there is nothing to fail over from; reprotect the machine first (drctl reprotect ${machine.name} ...)`);
      if (!replica.latestRecoveryPointId) throw failedPrecondition(`machine ${machine.name} has no recovery point yet on ${disk.diskId}: wait for its initial sync`);
    }
    job.progress(step, { message: `${p.disks.length} disk${p.disks.length === 1 ? '' : 's'} with recovery points on ${peerName(masterTarget)}; failing over to the ${p.toSite} site` });
  }

  /** Steps synchronize (the source still runs) and drain (it is shut down): FlushReplication per disk. */
  async drain(job: RunningJob<unknown>, step: StepRecord, p: FailoverParams, which: 'synchronize' | 'drain'): Promise<void> {
    const processServer = this.context.servers.require(p.processServerId, 'process server');
    const client = this.context.peers.processServer(processServer);
    for (const disk of p.disks) {
      if (which === 'drain' ? disk.drained : disk.synchronized) continue;
      const response = await retryUnavailable(this.context.log, job, step, () =>
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

  async shutdownSource(job: RunningJob<unknown>, step: StepRecord, p: FailoverParams): Promise<void> {
    const agent = this.context.servers.require(p.agentId, 'agent');
    const machine = this.context.machines.current(job.record.machineId);
    const client = this.context.peers.agent(agent);
    // Recorded before asking: the agent may shut the disks down even if its answer is lost.
    if (!p.sourceShutDown) job.save(() => (p.sourceShutDown = true));
    const response = await retryUnavailable(this.context.log, job, step, () =>
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
  async verify(job: RunningJob<unknown>, step: StepRecord, p: FailoverParams): Promise<void> {
    const agent = this.context.servers.require(p.agentId, 'agent');
    const masterTarget = this.context.servers.require(p.masterTargetId, 'master target');
    const agentClient = this.context.peers.agent(agent);
    const mtClient = this.context.peers.masterTarget(masterTarget);
    for (const disk of p.disks) {
      if (disk.verified) continue;
      job.progress(step, { message: `hashing ${disk.diskId} at the source and on ${peerName(masterTarget)}` });
      const getReplica = () => retryUnavailable(this.context.log, job, step, () => callPeer(masterTarget, () => unary(mtClient, mtClient.getReplica, { diskId: disk.diskId }, { timeoutMs: peerCallTimeoutMs })));
      const before = await getReplica();
      const [source, replica] = await retryUnavailable(this.context.log, job, step, () =>
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
          `the replica of ${disk.diskId} differs from the source after the drain (root hash ${Buffer.from(source.rootHash).toString('hex')} at the source, ${Buffer.from(replica.rootHash).toString('hex')} on ${peerName(masterTarget)}): resync the machine (drctl resync ${this.context.machines.current(job.record.machineId).name}) and ${job.record.kind === 'failback' ? 'fail back' : 'fail over'} again`,
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
  async selectPoints(job: RunningJob<unknown>, step: StepRecord, machine: MachineRecord, p: { selector: PointSelector__Output; timeMs: number; disks: FailoverDisk[] }, failover = false): Promise<void> {
    for (const disk of p.disks) {
      if (disk.pointId) continue;
      let pointId = disk.requestedPointId;
      if (p.selector !== 'BY_ID') {
        const choice: PointChoice = { selector: p.selector, pointId: '', timeMs: p.timeMs };
        try {
          pointId = (await retryUnavailable(this.context.log, job, step, () => (p.selector === 'LATEST' ? this.drainForLatest(machine, disk.diskId, choice) : this.recoveryPoints.selectDisk(machine, disk.diskId, choice)))).id;
        } catch (error) {
          if (error instanceof DrplaneError && error.code === ErrorCode.NotFound) throw failedPrecondition(`no recovery point of ${disk.diskId} matches ${describeSelector(p.selector, p.timeMs)}: ${error.message}`);
          throw error;
        }
      } else {
        // A point named by id must exist on the master target.
        const parsed = parsePointReference(pointId);
        pointId = (await retryUnavailable(this.context.log, job, step, () => this.recoveryPoints.selectDisk(machine, parsed.diskId, parsed.choice))).id;
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
      const server = this.context.servers.get(machine.processServerId);
      throw failedPrecondition(`LATEST drains ${server ? peerName(server) : machine.processServerId} first, and it could not (${errorMessage(error)}): fail over to the newest point already applied with --select latest-processed`);
    }
  }

  /** The chosen points onto the machine's failover record (and the job's detail), with the job, in one transaction. */
  private recordPoints(job: RunningJob<unknown>, p: { selector: PointSelector__Output; planned?: boolean; disks: FailoverDisk[] }): void {
    const pointIds = p.disks.map((disk) => disk.pointId);
    job.save(() => {
      if (p.planned) job.record.detail = `planned: drained to ${pointIds.join(', ')}`;
      const machine = this.context.machines.current(job.record.machineId);
      if (machine.failover?.jobId === job.record.jobId) this.context.machines.put({ ...machine, failover: { ...machine.failover, selector: p.selector, recoveryPointIds: pointIds } });
    });
  }

  /**
   * Step fence: per disk a new epoch above the machine's and the master
   * target's, written before the master target hears of it; SetEpoch on each
   * replica; then StopReplication on the old process server (planned: it must
   * answer; unplanned: an unreachable one is noted, its batches are refused by
   * epoch anyway).
   */
  async fence(job: RunningJob<unknown>, step: StepRecord, p: FailoverParams): Promise<void> {
    const masterTarget = this.context.servers.require(p.masterTargetId, 'master target');
    const client = this.context.peers.masterTarget(masterTarget);
    for (const disk of p.disks) {
      if (disk.fenceEpoch === 0) {
        const replicaEpoch = await retryUnavailable(this.context.log, job, step, () => this.sessions.replicaEpoch(masterTarget, disk.diskId));
        job.save(() => (disk.fenceEpoch = this.context.machines.issueEpoch(job.record.machineId, disk.diskId, replicaEpoch)));
      }
    }
    if (!p.fenced) job.save(() => (p.fenced = true));
    for (const disk of p.disks) {
      if (disk.epochSet) continue;
      await retryUnavailable(this.context.log, job, step, () => callPeer(masterTarget, () => unary(client, client.setEpoch, { diskId: disk.diskId, epoch: disk.fenceEpoch }, { timeoutMs: peerCallTimeoutMs })));
      job.save(() => {
        disk.epochSet = true;
        step.message = `${p.disks.filter((candidate) => candidate.epochSet).length} of ${p.disks.length} replicas at their new epoch on ${peerName(masterTarget)}`;
      });
    }
    const epochs = describeEpochs(p.disks);
    const processServer = this.context.servers.get(p.processServerId);
    if (!processServer) {
      job.progress(step, { message: `${epochs}; the old process server ${p.processServerId} is no longer registered (its batches are refused by epoch)` });
      return;
    }
    const psClient = this.context.peers.processServer(processServer);
    const notes: string[] = [];
    for (const disk of p.disks) {
      if (disk.replicationStopped) continue;
      const stop = () => callPeer(processServer, () => unary(psClient, psClient.stopReplication, { diskId: disk.diskId }, { timeoutMs: peerCallTimeoutMs }));
      try {
        await (p.planned ? retryUnavailable(this.context.log, job, step, stop) : job.abortable(stop()));
      } catch (error) {
        if (error instanceof JobStopped || error instanceof JobInterrupted) throw error;
        const missing = error instanceof DrplaneError && error.code === ErrorCode.NotFound;
        if (!missing) {
          if (p.planned) throw error;
          // Unplanned: the source site may be gone. The fence holds without it.
          notes.push(`${peerName(processServer)} did not stop ${disk.diskId} (${errorMessage(error)}): its batches are refused by epoch ${disk.fenceEpoch} anyway`);
          this.context.log.warn({ jobId: job.record.jobId, diskId: disk.diskId, err: errorMessage(error) }, 'unplanned failover: the old process server did not stop replicating; fenced by epoch');
        }
      }
      job.save(() => (disk.replicationStopped = true));
    }
    job.progress(step, { message: notes.length ? `${epochs}; ${notes.join('; ')}` : `${epochs}; replication stopped on ${peerName(processServer)}` });
  }

  /** Step materialise: each chosen point onto its target path (a temporary file renamed over it: the old disk or the whole point). */
  async materialise(job: RunningJob<unknown>, step: StepRecord, masterTargetId: string, disks: FailoverDisk[]): Promise<void> {
    const masterTarget = this.context.servers.require(masterTargetId, 'master target');
    const client = this.context.peers.masterTarget(masterTarget);
    for (const disk of disks) {
      if (disk.materialised) continue;
      job.progress(step, { message: `materialising ${disk.pointId} to ${disk.targetPath}` });
      const before = totalBytes(disks.filter((candidate) => candidate.materialised));
      const response = await retryUnavailable(this.context.log, job, step, () =>
        whileReporting(
          callPeer(masterTarget, () => unary(client, client.materialiseRecoveryPoint, { recoveryPointId: disk.pointId, path: disk.targetPath, replaceExisting: true }, { timeoutMs: materialiseTimeoutMs })),
          async (pending) => {
            const progress = await masterTargetMaterialiseProgress(this.context.peers, masterTarget, disk.targetPath);
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
  async startTarget(job: RunningJob<unknown>, step: StepRecord, masterTargetId: string, disks: FailoverDisk[], noStart: boolean): Promise<void> {
    const paths = disks.map((disk) => disk.targetPath);
    if (noStart) {
      job.progress(step, { message: `not started (no_start): start the machine from ${paths.join(', ')}` });
      return;
    }
    const masterTarget = this.context.servers.require(masterTargetId, 'master target');
    const client = this.context.peers.masterTarget(masterTarget);
    const machine = this.context.machines.current(job.record.machineId);
    const epoch = Math.max(...disks.map((disk) => disk.fenceEpoch), ...machine.disks.map((disk) => disk.epoch));
    const response = await retryUnavailable(this.context.log, job, step, () =>
      callPeer(masterTarget, () => unary(client, client.startMachine, { machine: machine.name, diskPaths: paths, epoch, recoveryPointIds: disks.map((disk) => disk.pointId) }, { timeoutMs: startMachineTimeoutMs })),
    );
    const output = response.output.trim();
    job.progress(step, {
      message: response.hookRan ? `start hook ran on ${peerName(masterTarget)}${output ? `: ${output.slice(-hookOutputQuotedMax)}` : ''}` : `no start hook on ${peerName(masterTarget)}: start the machine from ${paths.join(', ')}`,
    });
  }

  /**
   * Asks the agent to release the source a failed failover shut down; the
   * answer is the error to fail the job with, saying what happened.
   */
  async releaseAfterFailure(job: RunningJob<unknown>, p: FailoverParams, error: unknown): Promise<Error> {
    const message = errorMessage(error);
    const code = error instanceof DrplaneError ? error.code : ErrorCode.Internal;
    if (!p.sourceShutDown) return error instanceof Error ? error : new Error(message);
    const agent = this.context.servers.get(p.agentId);
    let note: string;
    try {
      if (!agent) throw new Error(`agent ${p.agentId} is no longer registered`);
      const client = this.context.peers.agent(agent);
      await callPeer(agent, () => unary(client, client.releaseSource, { paths: p.disks.map((disk) => disk.sourcePath) }, { timeoutMs: peerCallTimeoutMs }));
      job.save(() => (p.sourceShutDown = false));
      note = `${peerName(agent)} released the source disks: they take writes again`;
    } catch (releaseError) {
      this.context.log.warn({ jobId: job.record.jobId, err: errorMessage(releaseError) }, 'could not release the source after a failed failover');
      note = `the source disks could not be released (${errorMessage(releaseError)}): they take no writes until their agent releases them (ReleaseSource)`;
    }
    return new DrplaneError(code, `${message}; ${note}`);
  }
}
