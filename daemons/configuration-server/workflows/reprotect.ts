// Reprotect: after a commit the machine runs at the site it failed over to;
// reprotecting makes its disks there the source and the other site the
// target, with the replication steps of enable (replication.ts): a new epoch
// above both ours and the target master target's, CreateReplica, a session
// per disk, the first points. To the original location the new replicas start
// as copies of the machine's disks at the target site (CreateReplica.seed_path)
// and the sessions sync by hashes (DELTA); to an alternate location they start
// empty and sync in full, and the machine's disks there become
// <datastore>/recovered/<disk_id>.img. A replication group reprotects with one
// master target: a group's reprotect is a job per member under one job.
import path from 'node:path';
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument, notFound } from '../../../shared/errors';
import { unary } from '../../../shared/grpc';
import { pathLengthMax } from '../../../shared/limits';
import type { ReprotectLocation__Output } from '../../../generated/drplane/v1/ReprotectLocation';
import { recoveredDiskPath, replicaDiskPath, totalBytes, withSites } from '../entities/machines';
import { callPeer, peerName } from '../entities/peers';
import { defaultPolicyName, type Policies } from '../entities/policies';
import { newReplicationDisk, type ReplicationParams } from './replication-jobs';
import type { ReplicationSessions } from './replication-sessions';
import type { GroupRecord, JobRecord, MachineRecord, MachineState, PolicyRecord, ServerRecord, SiteRecord, StepRecord } from '../store/records';
import type { RunningJob } from '../jobs/running-job';
import { blockingJobKinds, refuseBusyOrUnfinished, stateRefusal } from '../jobs/refusals';
import { finishJob } from '../jobs/endings';
import { peerCallTimeoutMs, retryUnavailable } from '../jobs/peer-calls';
import type { WorkflowContext } from '../jobs/workflow-context';

export const reprotectJobKind = 'reprotect';
/** A replication group's reprotect: one step per member, each running that machine's reprotect job (Job.child_job_ids). */
export const reprotectGroupJobKind = 'reprotect-group';
/** How often a group's reprotect looks at its members' jobs. */
export const memberJobPollIntervalMs = 500;

/** The states in which a machine replicates in its current direction (its master target counts for its group). */
const replicatingStates: ReadonlySet<MachineState> = new Set(['INITIAL_SYNC', 'PROTECTED', 'RESYNC_REQUIRED', 'REPROTECTING']);

export function reprotectSteps(diskBytes: number): { name: string; bytesTotal?: number }[] {
  return [{ name: 'check' }, { name: 'create-replicas' }, { name: 'start-replication' }, { name: 'initial-sync', bytesTotal: diskBytes }];
}

export interface ReprotectRequest {
  machine: string;
  agent: string;
  processServer: string;
  masterTarget: string;
  datastore: string;
  location: ReprotectLocation__Output;
  policy: string;
  group: string;
}

export interface ReprotectParams {
  replication: ReplicationParams;
  agentId: string;
}

interface GroupMember {
  machineId: string;
  name: string;
  jobId: string;
  /** The parent reported this member's job as failed: a restart of the parent restarts it. */
  failureReported: boolean;
}

export interface ReprotectGroupParams {
  groupId: string;
  members: GroupMember[];
}

/** What a reprotect of one machine chose, resolved before its transaction. */
interface MemberPlan {
  machineId: string;
  agent: ServerRecord;
  processServer: ServerRecord;
  masterTarget: ServerRecord;
  datastore: string;
  original: boolean;
  policy: PolicyRecord;
}

/** A machine's forward policy (a failback policy names it as its pair). */
export function forwardPolicyOf(policies: Policies, machine: MachineRecord): PolicyRecord {
  const policy = policies.find(machine.policyId) ?? policies.get(defaultPolicyName);
  return policy.failback ? (policies.find(policy.pairedPolicyId) ?? policy) : policy;
}

/** The failback policy paired with a machine's forward policy. */
export function failbackPolicyOf(policies: Policies, machine: MachineRecord): PolicyRecord {
  const forward = forwardPolicyOf(policies, machine);
  return policies.find(forward.pairedPolicyId) ?? forward;
}

export class Reprotects {
  constructor(
    private readonly context: WorkflowContext,
    private readonly sessions: ReplicationSessions,
  ) {
    if (!blockingJobKinds.has(reprotectJobKind)) throw new Error('reprotect must be a blocking job kind');
    this.context.jobs.register<ReprotectParams>(reprotectJobKind, {
      run: async (job) => {
        const p = job.params.replication;
        await job.runStep('check', (step) => this.check(job, step, job.params));
        await job.runStep('create-replicas', (step) => this.sessions.createReplicas(job, p, step));
        await job.runStep('start-replication', (step) => this.sessions.startSessions(job, p, step));
        await job.runStep('initial-sync', (step) => this.sessions.waitForFirstPoints(job, p, step));
      },
      ended: (job, error) => {
        const machine = this.context.machines.current(job.machineId);
        if (!error) this.sessions.recordFirstPoints(machine, job.params.replication);
        finishJob(this.context.machines, machine, job, error, 'PROTECTED');
      },
    });
    this.context.jobs.register<ReprotectGroupParams>(reprotectGroupJobKind, {
      run: async (job) => {
        try {
          for (const member of job.params.members) await job.runStep(memberStep(member), (step) => this.waitForMember(job, step, member));
        } catch (error) {
          // Stopping the group's job stops its members' jobs.
          if (job.stopRequested) for (const member of job.params.members) void this.context.jobs.stopJob(member.jobId, 0).catch(() => {});
          throw error;
        }
      },
      ended: () => {},
    });
  }

  /** Reprotects a committed machine (or every member of a group, with one master target). */
  async reprotect(request: ReprotectRequest): Promise<JobRecord> {
    if (request.group) {
      if (request.machine) throw invalidArgument('machine and group: name one of them (a group reprotects every member)');
      return this.reprotectGroup(request);
    }
    const machine = withSites(this.context.machines.get(request.machine));
    refuseBusyOrUnfinished(this.context.store, machine);
    if (machine.state !== 'COMMITTED') throw refuseReprotect(machine);
    const groupTarget = this.groupMasterTarget(machine);
    let masterTarget: ServerRecord;
    if (groupTarget) {
      const group = this.context.store.groups.get(machine.groupId!)!;
      if (request.masterTarget && this.context.servers.resolve('MASTER_TARGET', request.masterTarget).serverId !== groupTarget.serverId) {
        throw failedPrecondition(`machine ${machine.name} belongs to replication group ${group.name}, whose machines replicate to master target ${groupTarget.name}: a replication group reprotects with one master target (use --master-target ${groupTarget.name}, or leave it out; drctl reprotect --group ${group.name} reprotects them all)`);
      }
      masterTarget = groupTarget;
    } else masterTarget = this.chooseMasterTarget(machine, request.masterTarget);
    await this.checkMasterTarget(masterTarget, machine.disks.map((disk) => disk.diskId), `machine ${machine.name}`);
    const plan = await this.planMember(machine, request, masterTarget);
    const job = this.context.store.write(() => {
      const current = withSites(this.context.machines.current(machine.machineId));
      refuseBusyOrUnfinished(this.context.store, current);
      if (current.state !== 'COMMITTED') throw refuseReprotect(current);
      const again = this.groupMasterTarget(current);
      if (again && again.serverId !== masterTarget.serverId) throw failedPrecondition(`machine ${current.name}'s replication group now replicates to master target ${again.name}: a replication group reprotects with one master target`);
      this.claimGroup(current, masterTarget);
      return this.createJob(current, plan);
    });
    this.context.log.info({ jobId: job.jobId, machine: machine.name, masterTarget: plan.masterTarget.name, datastore: plan.datastore, original: plan.original, policy: plan.policy.name }, 'reprotecting');
    this.context.jobs.start(job as JobRecord);
    return job as JobRecord;
  }

  private async reprotectGroup(request: ReprotectRequest): Promise<JobRecord> {
    const group = this.findGroup(request.group);
    const members = group.machineIds.map((machineId) => withSites(this.context.machines.current(machineId)));
    for (const member of members) refuseBusyOrUnfinished(this.context.store, member);
    const notCommitted = members.filter((member) => member.state !== 'COMMITTED');
    if (notCommitted.length) {
      throw failedPrecondition(`replication group ${group.name} reprotects every member, and each must be COMMITTED: ${notCommitted.map((member) => `${member.name} is ${member.state}`).join(', ')} (fail them over and commit them first, or reprotect the committed ones one by one)`);
    }
    if (new Set(members.map((member) => member.direction)).size > 1) throw failedPrecondition(`replication group ${group.name}: its members run at different sites; reprotect them one by one`);
    const known = [...new Set(members.map((member) => (member.direction === 'REVERSE' ? member.home : member.recovery).masterTargetId).filter(Boolean))];
    const masterTarget = request.masterTarget
      ? this.context.servers.resolve('MASTER_TARGET', request.masterTarget)
      : known.length === 1
        ? this.context.servers.require(known[0]!, 'master target')
        : this.context.servers.choose('MASTER_TARGET', '', '--master-target');
    await this.checkMasterTarget(masterTarget, members.flatMap((member) => member.disks.map((disk) => disk.diskId)), `replication group ${group.name}`);
    const plans: MemberPlan[] = [];
    for (const member of members) plans.push(await this.planMember(member, request, masterTarget));
    const parent = this.context.store.write(() => {
      const children: JobRecord[] = [];
      for (const plan of plans) {
        const current = withSites(this.context.machines.current(plan.machineId));
        refuseBusyOrUnfinished(this.context.store, current);
        if (current.state !== 'COMMITTED') throw refuseReprotect(current);
        children.push(this.createJob(current, plan));
      }
      const current = this.context.store.groups.get(group.groupId);
      if (current) this.context.store.groups.putSync(group.groupId, { ...current, masterTargetId: masterTarget.serverId });
      const params: ReprotectGroupParams = {
        groupId: group.groupId,
        members: children.map((child, index) => ({ machineId: child.machineId, name: members[index]!.name, jobId: child.jobId, failureReported: false })),
      };
      const record = this.context.jobs.create(reprotectGroupJobKind, '', params.members.map((member) => ({ name: memberStep(member) })), params, { detail: `replication group ${group.name} to master target ${masterTarget.name}` });
      record.childJobIds = children.map((child) => child.jobId);
      this.context.store.jobs.putSync(record.jobId, record as JobRecord);
      return { record, children };
    });
    this.context.log.info({ jobId: parent.record.jobId, group: group.name, masterTarget: masterTarget.name, members: parent.children.map((child) => child.jobId) }, 'reprotecting a replication group');
    for (const child of parent.children) this.context.jobs.start(child);
    this.context.jobs.start(parent.record as JobRecord);
    return parent.record as JobRecord;
  }

  /** The master target must be healthy, its retention volume qualified, with room for the disks. */
  async checkMasterTarget(masterTarget: ServerRecord, diskIds: string[], forWhat: string): Promise<void> {
    if (!this.context.servers.healthy(masterTarget)) {
      throw failedPrecondition(`${peerName(masterTarget)} is not healthy (its last heartbeat was ${Math.round((Date.now() - masterTarget.lastHeartbeatTimeMs) / 1000)} s ago): start it, or choose another with --master-target`);
    }
    await this.sessions.checkMasterTargetRoom(masterTarget, diskIds, forWhat);
  }

  /**
   * Resolves one machine's reprotect: its agent and process server at the
   * site it runs on, the datastore and location at the other, its policy;
   * and checks the agent reads its disks there.
   */
  private async planMember(machine: ReturnType<typeof withSites>, request: ReprotectRequest, masterTarget: ServerRecord): Promise<MemberPlan> {
    const { sourceName, source, target } = sitesFor(machine);
    const agent = request.agent
      ? this.context.servers.resolve('AGENT', request.agent)
      : source.agentId
        ? this.context.servers.require(source.agentId, 'agent')
        : (() => {
            throw invalidArgument(`agent: required: no agent is known at ${machine.name}'s ${sourceName} site, where it runs now; name the one that reads ${source.diskPaths.join(', ')} (drctl servers --kind agent lists them)`);
          })();
    const processServer = request.processServer ? this.context.servers.resolve('PROCESS_SERVER', request.processServer) : source.processServerId ? this.context.servers.require(source.processServerId, 'process server') : this.context.servers.choose('PROCESS_SERVER', '', '--process-server');
    const datastore = request.datastore || target.datastore;
    if (!datastore) throw invalidArgument(`datastore: required: a directory on ${peerName(masterTarget)} (under one of its datastore roots) for the replicas of ${machine.name}`);
    if (datastore.length > pathLengthMax) throw invalidArgument(`datastore: at most ${pathLengthMax} characters`);
    if (!path.posix.isAbsolute(datastore)) throw invalidArgument(`datastore: must be an absolute path on the master target, got ${datastore}`);
    const original = request.location !== 'ALTERNATE_LOCATION';
    if (original && machine.disks.some((_disk, index) => !target.diskPaths[index])) {
      throw failedPrecondition(`machine ${machine.name} has no disks at its ${sourceName === 'home' ? 'recovery' : 'home'} site to reprotect to: reprotect to an alternate location (--alternate-location)`);
    }
    const policy = request.policy ? this.context.policies.get(request.policy) : machine.direction === 'REVERSE' ? failbackPolicyOf(this.context.policies, machine) : forwardPolicyOf(this.context.policies, machine);
    // The agent must read the machine's disks where it runs now, at their sizes.
    const agentClient = this.context.peers.agent(agent);
    const described = await callPeer(agent, () => unary(agentClient, agentClient.describeDisks, { paths: source.diskPaths }, { timeoutMs: peerCallTimeoutMs }));
    for (const [index, disk] of machine.disks.entries()) {
      const found = described.disks.find((candidate) => candidate.path === source.diskPaths[index]);
      if (!found) throw new DrplaneError(ErrorCode.Internal, `${peerName(agent)} did not describe ${source.diskPaths[index]}`);
      if (Number(found.diskBytes) !== disk.diskBytes) throw failedPrecondition(`${source.diskPaths[index]} has ${found.diskBytes} bytes on ${peerName(agent)}, but disk ${disk.diskId} has ${disk.diskBytes}: is it the machine's disk?`);
    }
    const psClient = this.context.peers.processServer(processServer);
    await callPeer(processServer, () => unary(psClient, psClient.getStatus, {}, { timeoutMs: peerCallTimeoutMs }));
    return { machineId: machine.machineId, agent, processServer, masterTarget, datastore, original, policy };
  }

  /** Records the reprotect job and the machine's new sites; call inside store.write(). */
  private createJob(current: ReturnType<typeof withSites>, plan: MemberPlan): JobRecord {
    if (!this.context.store.policies.get(plan.policy.policyId)) throw failedPrecondition(`policy ${plan.policy.name} was deleted meanwhile: choose another with --policy`);
    const { sourceName, targetName, source, target } = sitesFor(current);
    const replicaPaths = current.disks.map((disk) => replicaDiskPath(plan.datastore, disk.diskId));
    const targetDiskPaths = plan.original ? [...target.diskPaths] : current.disks.map((disk) => recoveredDiskPath(plan.datastore, disk.diskId));
    const params: ReprotectParams = {
      agentId: plan.agent.serverId,
      replication: {
        processServerId: plan.processServer.serverId,
        masterTargetId: plan.masterTarget.serverId,
        datastore: plan.datastore,
        policyId: plan.policy.policyId,
        captureMode: current.captureMode ?? 'CAPTURE_SCAN',
        scanIntervalMs: current.scanIntervalMs ?? 0,
        full: true,
        epochAboveTarget: true,
        disks: current.disks.map((disk, index) => ({
          ...newReplicationDisk(disk),
          sourcePath: source.diskPaths[index]!,
          replicaPath: replicaPaths[index]!,
          seedPath: plan.original ? target.diskPaths[index]! : '',
          epoch: 0,
        })),
      },
    };
    const record = this.context.jobs.create(reprotectJobKind, current.machineId, reprotectSteps(totalBytes(current.disks)), params);
    const sourceSite: SiteRecord = { ...source, agentId: plan.agent.serverId, processServerId: plan.processServer.serverId };
    const targetSite: SiteRecord = { ...target, masterTargetId: plan.masterTarget.serverId, datastore: plan.datastore, replicaPaths, diskPaths: targetDiskPaths };
    this.context.machines.put({
      ...current,
      [sourceName]: sourceSite,
      [targetName]: targetSite,
      state: 'REPROTECTING',
      stateReason: `${reprotectJobKind} ${record.jobId}`,
      activeJobId: record.jobId,
      restartableJobId: '',
      agentId: plan.agent.serverId,
      processServerId: plan.processServer.serverId,
      masterTargetId: plan.masterTarget.serverId,
      datastore: plan.datastore,
      policyId: plan.policy.policyId,
      disks: current.disks.map((disk, index) => ({ ...disk, sourcePath: source.diskPaths[index]!, replicaPath: replicaPaths[index]!, latestRecoveryPointId: '' })),
    });
    return record as JobRecord;
  }

  /** Step check: the peers are registered and answer (the heavier checks ran when the job was asked for). */
  private async check(job: RunningJob<ReprotectParams>, step: StepRecord, p: ReprotectParams): Promise<void> {
    const agent = this.context.servers.require(p.agentId, 'agent');
    const processServer = this.context.servers.require(p.replication.processServerId, 'process server');
    const masterTarget = this.context.servers.require(p.replication.masterTargetId, 'master target');
    const agentClient = this.context.peers.agent(agent);
    const psClient = this.context.peers.processServer(processServer);
    const mtClient = this.context.peers.masterTarget(masterTarget);
    await retryUnavailable(this.context.log, job, step, () =>
      Promise.all([
        callPeer(agent, () => unary(agentClient, agentClient.getStatus, {}, { timeoutMs: peerCallTimeoutMs })),
        callPeer(processServer, () => unary(psClient, psClient.getStatus, {}, { timeoutMs: peerCallTimeoutMs })),
        callPeer(masterTarget, () => unary(mtClient, mtClient.getStatus, {}, { timeoutMs: peerCallTimeoutMs })),
      ]),
    );
    const seeded = p.replication.disks.some((disk) => disk.seedPath);
    job.progress(step, { message: `from ${peerName(agent)} through ${peerName(processServer)} to ${peerName(masterTarget)}, ${seeded ? 'original location: replicas seeded from the disks there, then only what differs is sent' : 'alternate location: a full sync'}` });
  }

  /** A group member's step: waits for its job; after the parent was restarted, restarts the member's failed job first. */
  private async waitForMember(job: RunningJob<ReprotectGroupParams>, step: StepRecord, member: GroupMember): Promise<void> {
    for (;;) {
      const child = this.context.jobs.get(member.jobId);
      if (child.state === 'JOB_SUCCEEDED') {
        job.progress(step, { message: `${child.jobId} succeeded` });
        return;
      }
      if (child.state === 'JOB_FAILED' || child.state === 'JOB_STOPPED') {
        if (!member.failureReported) {
          job.save(() => (member.failureReported = true));
          throw new DrplaneError(ErrorCode.Aborted, `the reprotect of ${member.name} (${child.jobId}) ${child.state === 'JOB_STOPPED' ? 'was stopped' : `failed: ${child.error}`}; restart this job to restart it`);
        }
        this.context.jobs.restart(child.jobId);
        job.save(() => (member.failureReported = false));
        continue;
      }
      const running = child.steps.find((candidate) => candidate.state === 'JOB_RUNNING');
      job.progress(step, { message: `${child.jobId} ${running ? `${running.name}${running.message ? `: ${running.message}` : ''}` : 'queued'}` });
      await job.wait(memberJobPollIntervalMs);
    }
  }

  /** The master target a member of a group must reprotect to: that of the members already replicating in its direction. */
  private groupMasterTarget(machine: MachineRecord): ServerRecord | undefined {
    const group = machine.groupId ? this.context.store.groups.get(machine.groupId) : undefined;
    if (!group) return undefined;
    for (const machineId of group.machineIds) {
      if (machineId === machine.machineId) continue;
      const other = this.context.store.machines.get(machineId);
      if (other && (other.direction ?? 'FORWARD') === (machine.direction ?? 'FORWARD') && replicatingStates.has(other.state) && other.masterTargetId) {
        return this.context.servers.require(other.masterTargetId, `master target of replication group ${group.name}`);
      }
    }
    return undefined;
  }

  /** The group's master target is the one its members replicate to now; call inside store.write(). */
  private claimGroup(machine: MachineRecord, masterTarget: ServerRecord): void {
    const group = machine.groupId ? this.context.store.groups.get(machine.groupId) : undefined;
    if (group && group.masterTargetId !== masterTarget.serverId) this.context.store.groups.putSync(group.groupId, { ...group, masterTargetId: masterTarget.serverId });
  }

  private chooseMasterTarget(machine: ReturnType<typeof withSites>, requested: string): ServerRecord {
    if (requested) return this.context.servers.resolve('MASTER_TARGET', requested);
    const { target } = sitesFor(machine);
    if (target.masterTargetId) return this.context.servers.require(target.masterTargetId, 'master target');
    return this.context.servers.choose('MASTER_TARGET', '', '--master-target');
  }

  private findGroup(idOrName: string): GroupRecord {
    const byId = this.context.store.groups.get(idOrName);
    if (byId) return byId;
    for (const { value } of this.context.store.groups.getRange()) if (value.name === idOrName) return value;
    throw notFound(`no replication group named ${JSON.stringify(idOrName)}: drctl groups lists them`);
  }
}

/** The site a committed machine runs on (the source of its reprotect) and the other one. */
export function sitesFor(machine: ReturnType<typeof withSites>): { sourceName: 'home' | 'recovery'; targetName: 'home' | 'recovery'; source: SiteRecord; target: SiteRecord } {
  const reverse = machine.direction === 'REVERSE';
  return reverse
    ? { sourceName: 'recovery', targetName: 'home', source: machine.recovery, target: machine.home }
    : { sourceName: 'home', targetName: 'recovery', source: machine.home, target: machine.recovery };
}

function refuseReprotect(machine: MachineRecord): DrplaneError {
  if (machine.state === 'PROTECTED') return failedPrecondition(`machine ${machine.name} is PROTECTED (${machine.direction ?? 'FORWARD'}) already: reprotect follows a failover and its commit (drctl failover ${machine.name}, drctl commit ${machine.name})`);
  return stateRefusal(machine);
}

function memberStep(member: { name: string }): string {
  return `reprotect ${member.name}`;
}
