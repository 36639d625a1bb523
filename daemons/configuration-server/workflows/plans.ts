// Recovery plans: machines and replication groups, in order, that fail over
// (and commit) together. A plan's failover or commit is one job whose steps
// are its members in order; each step runs that member's machines' own
// failover or commit jobs (failover.ts) and waits for them, so a plan adds no
// new way of moving a machine, only an order and one place to watch.
// - Resuming after a restart: a step that recorded its child job waits for it
//   instead of starting another (a child started and not yet recorded when the
//   server stopped is found by its machine, kind and time, and adopted).
// - Restarting a failed or stopped plan job (drctl job restart): the members
//   that succeeded stay done; a child that failed is restarted when its machine
//   names it as restartable, and started anew otherwise.
// - Stopping a plan job stops its children that are running.
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument, limitExceeded, notFound } from '../../../shared/errors';
import { recoveryPlanMembersMax } from '../../../shared/limits';
import type { PointSelector__Output } from '../../../generated/drplane/v1/PointSelector';
import type { RecoveryPlan } from '../../../generated/drplane/v1/RecoveryPlan';
import type { Groups } from '../entities/groups';
import type { Commits } from './commit';
import type { Failovers } from './failover';
import { commitJobKind, failoverJobKind } from './failover-jobs';
import { checkName } from '../entities/servers';
import type { GroupPointRecord, GroupRecord, JobRecord, MachineRecord, PlanMemberRecord, PlanRecord, StepRecord } from '../store/records';
import { jobEnded, JobStopped, type RunningJob } from '../jobs/running-job';
import { refuseBusyOrUnfinished, stateRefusal } from '../jobs/refusals';
import type { GroupPoints } from './group-points';
import type { WorkflowContext } from '../jobs/workflow-context';

export const planFailoverJobKind = 'plan-failover';
export const planCommitJobKind = 'plan-commit';
/** The kinds of the machines' own jobs a plan step starts (failover.ts). */
export const childJobKinds = { failover: failoverJobKind, commit: commitJobKind } as const;
/** How often a step looks at its children while they run (it is also told of every change at once). */
export const childPollIntervalMs = 500;

/** One machine of a step: what it fails over to, and the job that does it. */
export interface PlanMachineRun {
  machineId: string;
  /** BY_ID points, in disk order (a group's member at its group point); empty: the plan's selector. */
  pointIds: string[];
  /** Written before the machine's job is asked for: a job of the machine created since then is this step's. */
  startedTimeMs: number;
  /** The machine's job ('' until started). */
  childJobId: string;
  /** Set when the plan job is restarted while this child had failed or stopped: the step tries anew. */
  retry: boolean;
}

export interface PlanStepParams {
  /** The step's name: "machine vm1" or "group g1". */
  step: string;
  groupId: string;
  machines: PlanMachineRun[];
}

export interface PlanJobParams {
  planId: string;
  action: keyof typeof childJobKinds;
  planned: boolean;
  selector: PointSelector__Output;
  timeMs: number;
  noStart: boolean;
  steps: PlanStepParams[];
}

/** What a plan needs of a machine's failover and commit: their jobs, and their refusals checked up front. */
export type MachineFailovers = Pick<Failovers, 'failover' | 'refuseFailoverState' | 'requireFailoverPeers' | 'requirePoints'>;
export type MachineCommits = Pick<Commits, 'commit'>;

export interface PlanFailoverRequest {
  plan: string;
  planned: boolean;
  selector: PointSelector__Output;
  timeMs: number;
  noStart: boolean;
}

type PlanJob = RunningJob<PlanJobParams>;

export class Plans {
  constructor(
    private readonly context: WorkflowContext,
    private readonly groups: Groups,
    private readonly groupPoints: GroupPoints,
    private readonly failovers: MachineFailovers,
    private readonly commits: MachineCommits,
  ) {
    for (const kind of [planFailoverJobKind, planCommitJobKind]) {
      this.context.jobs.register<PlanJobParams>(kind, {
        run: async (job) => {
          for (const step of job.params.steps) await job.runStep(step.step, (record) => this.runStep(job, step, record));
        },
        // The machines' own jobs keep their states; the plan keeps nothing but its last job id, written at the start.
        ended: () => {},
        restarted: (job) => {
          for (const step of job.params.steps) {
            if (job.steps.find((candidate) => candidate.name === step.step)?.state === 'JOB_SUCCEEDED') continue;
            for (const run of step.machines) {
              const child = run.childJobId ? this.context.store.jobs.get(run.childJobId) : undefined;
              if (child && jobEnded(child.state) && child.state !== 'JOB_SUCCEEDED') run.retry = true;
            }
          }
        },
      });
    }
  }

  create(request: { name: string; members: { machine: string; group: string }[] }): PlanRecord {
    checkName('name', request.name);
    if (request.members.length === 0) throw invalidArgument('members: at least one machine or replication group is required');
    if (request.members.length > recoveryPlanMembersMax) throw limitExceeded(`members: a recovery plan holds at most ${recoveryPlanMembersMax} machines, got ${request.members.length} members`);
    const members: PlanMemberRecord[] = request.members.map((member, index) => {
      if (Boolean(member.machine) === Boolean(member.group)) throw invalidArgument(`members[${index}]: exactly one of machine and group is required, got ${member.machine ? `machine ${member.machine} and group ${member.group}` : 'neither'}`);
      return member.machine ? { machineId: this.context.machines.get(member.machine).machineId, groupId: '' } : { machineId: '', groupId: this.groups.get(member.group).groupId };
    });
    const record = this.context.store.write(() => {
      const existing = this.findByName(request.name);
      if (existing) throw new DrplaneError(ErrorCode.AlreadyExists, `a recovery plan named ${request.name} already exists (${existing.planId}): choose another name`);
      // Read inside the transaction: a group's machines are what they are now.
      const seen = new Map<string, string>();
      let machineCount = 0;
      for (const member of members) {
        const where = member.groupId ? `in replication group ${this.context.store.groups.get(member.groupId)?.name ?? member.groupId}` : 'on its own';
        for (const machineId of this.machineIdsOf(member)) {
          const machine = this.context.machines.current(machineId);
          const before = seen.get(machineId);
          if (before !== undefined) throw invalidArgument(`members: machine ${machine.name} is in the plan twice (${before === where ? `${where}, twice` : `${before} and ${where}`}): a machine fails over once per plan`);
          seen.set(machineId, where);
          machineCount++;
        }
      }
      if (machineCount > recoveryPlanMembersMax) throw limitExceeded(`members: a recovery plan holds at most ${recoveryPlanMembersMax} machines (each machine of a group counted), got ${machineCount}`);
      const plan: PlanRecord = { planId: `plan-${this.context.store.next('plan')}`, name: request.name, members, createdTimeMs: Date.now(), lastJobId: '' };
      this.context.store.plans.putSync(plan.planId, plan);
      return plan;
    });
    this.context.log.info({ planId: record.planId, name: record.name, members: record.members.map((member) => member.machineId || member.groupId) }, 'recovery plan created');
    return record;
  }

  get(idOrName: string): PlanRecord {
    if (!idOrName) throw invalidArgument('plan: required (a name or id; drctl plans lists them)');
    const record = this.context.store.plans.get(idOrName) ?? this.findByName(idOrName);
    if (!record) throw notFound(`no recovery plan named ${JSON.stringify(idOrName)}: drctl plans lists them`);
    return record;
  }

  list(): PlanRecord[] {
    return [...this.context.store.plans.getRange().map(({ value }) => value)].sort((a, b) => a.createdTimeMs - b.createdTimeMs || idNumber(a.planId) - idNumber(b.planId));
  }

  /** Deletes a plan; refused while its job runs. The machines and groups are not touched. */
  delete(idOrName: string): PlanRecord {
    const found = this.get(idOrName);
    this.context.store.write(() => {
      const current = this.context.store.plans.get(found.planId);
      if (!current) throw notFound(`recovery plan ${found.name} was deleted meanwhile`);
      this.refuseBusy(current);
      this.context.store.plans.removeSync(found.planId);
    });
    this.context.log.info({ planId: found.planId, name: found.name }, 'recovery plan deleted');
    return found;
  }

  /**
   * Fails every member over in order, as one job. Refused unless every machine
   * could fail over on its own now (state, idle, peers, a recovery point on
   * every disk) and, unplanned, every group has a complete group point.
   */
  async failover(request: PlanFailoverRequest): Promise<JobRecord> {
    const plan = this.get(request.plan);
    const selector: PointSelector__Output = request.planned ? 'LATEST' : request.selector === 'POINT_SELECTOR_UNSPECIFIED' ? 'LATEST' : request.selector;
    if (!request.planned && selector === 'BY_ID') throw invalidArgument('selector: BY_ID names points of one machine; a plan takes LATEST, LATEST_PROCESSED, LATEST_APP_CONSISTENT, LATEST_CRASH_CONSISTENT or AT_OR_BEFORE (groups: their newest complete group point)');
    if (!request.planned && selector === 'AT_OR_BEFORE' && !(request.timeMs > 0)) throw invalidArgument('time_ms: required with AT_OR_BEFORE (unix milliseconds)');
    this.refuseBusy(plan);
    const steps = this.stepsOf(plan);
    const problems = await this.memberRefusals(steps, async (machine) => {
      this.failovers.refuseFailoverState(machine, request.planned);
      this.failovers.requireFailoverPeers(machine, request.planned);
      await this.failovers.requirePoints(machine);
    });
    if (!request.planned) {
      for (const step of steps) {
        if (!step.groupId) continue;
        const group = this.groups.get(step.groupId);
        const point = await this.groupPointFor(group, selector, request.timeMs);
        if (!point) {
          problems.push(
            selector === 'AT_OR_BEFORE'
              ? `replication group ${group.name} has no complete group point at or before ${new Date(request.timeMs).toISOString()} (drctl group points ${group.name})`
              : `replication group ${group.name} has no complete group point: take one (drctl group point ${group.name})`,
          );
          continue;
        }
        for (const run of step.machines) {
          const machine = this.context.machines.get(run.machineId);
          run.pointIds = machine.disks.map((disk) => point.members.find((member) => member.diskId === disk.diskId)?.point?.id ?? '');
          const missing = machine.disks.filter((_disk, index) => !run.pointIds[index]);
          if (missing.length) problems.push(`group point ${point.groupPointId} of ${group.name} has no point of ${missing.map((disk) => disk.diskId).join(', ')}`);
        }
      }
    }
    if (problems.length) throw failedPrecondition(`recovery plan ${plan.name} cannot fail over: ${problems.join('; ')}`);
    return this.startJob(plan, planFailoverJobKind, { planId: plan.planId, action: 'failover', planned: request.planned, selector, timeMs: request.timeMs, noStart: request.noStart, steps });
  }

  /** Commits every member's failover in order, as one job; refused unless every machine is failed over and idle. */
  async commit(idOrName: string): Promise<JobRecord> {
    const plan = this.get(idOrName);
    this.refuseBusy(plan);
    const steps = this.stepsOf(plan);
    const problems = await this.memberRefusals(steps, (machine) => {
      if (machine.state !== 'FAILED_OVER') throw stateRefusal(machine);
    });
    if (problems.length) throw failedPrecondition(`recovery plan ${plan.name} cannot commit: ${problems.join('; ')}`);
    return this.startJob(plan, planCommitJobKind, { planId: plan.planId, action: 'commit', planned: false, selector: 'POINT_SELECTOR_UNSPECIFIED', timeMs: 0, noStart: false, steps });
  }

  toProto(record: PlanRecord): RecoveryPlan {
    return {
      planId: record.planId,
      name: record.name,
      members: record.members.map((member) => ({ machine: member.machineId, group: member.groupId })),
      createdTimeMs: record.createdTimeMs,
      lastJobId: record.lastJobId,
    };
  }

  private startJob(plan: PlanRecord, kind: string, params: PlanJobParams): JobRecord {
    const record = this.context.store.write(() => {
      const current = this.context.store.plans.get(plan.planId);
      if (!current) throw notFound(`recovery plan ${plan.name} was deleted meanwhile`);
      this.refuseBusy(current);
      const created = this.context.jobs.create(kind, '', params.steps.map((step) => ({ name: step.step })), params, { planId: plan.planId });
      this.context.store.plans.putSync(plan.planId, { ...current, lastJobId: created.jobId });
      return created;
    });
    this.context.log.info({ jobId: record.jobId, kind, plan: plan.name, planned: params.planned, selector: params.selector, members: params.steps.map((step) => step.step) }, `recovery plan ${params.action} started`);
    this.context.jobs.start(record as JobRecord);
    return record as JobRecord;
  }

  /**
   * One member: start the job of each of its machines (recording each before
   * anything waits on it), then wait until they have all ended. A child that
   * failed fails the plan job with its error.
   */
  private async runStep(job: PlanJob, step: PlanStepParams, record: StepRecord): Promise<void> {
    for (const run of step.machines) {
      const machine = this.context.machines.get(run.machineId);
      if (run.childJobId) {
        const child = this.context.jobs.get(run.childJobId);
        // Waited for (or its end reported) unless the plan job was restarted after it failed and it still has not succeeded.
        if (!run.retry || child.state === 'JOB_SUCCEEDED' || !jobEnded(child.state)) continue;
        if (machine.restartableJobId === child.jobId) {
          this.context.jobs.restart(child.jobId);
          job.save(() => {
            run.retry = false;
            record.message = `${child.jobId} restarted`;
          });
          this.context.log.info({ jobId: job.record.jobId, childJobId: child.jobId, machine: machine.name, step: step.step }, 'recovery plan restarted the job of a machine');
          continue;
        }
      }
      const adopted = run.startedTimeMs ? this.adoptChild(job, run) : undefined;
      if (adopted) {
        this.recordChild(job, run, adopted, record);
        continue;
      }
      job.save(() => (run.startedTimeMs = Date.now()));
      const child =
        job.params.action === 'failover'
          ? await this.failovers.failover({
              machine: machine.machineId,
              planned: job.params.planned,
              synchronizeFirst: false,
              selector: run.pointIds.length ? 'BY_ID' : job.params.planned ? 'POINT_SELECTOR_UNSPECIFIED' : job.params.selector,
              pointIds: run.pointIds,
              timeMs: !run.pointIds.length && !job.params.planned && job.params.selector === 'AT_OR_BEFORE' ? job.params.timeMs : 0,
              noStart: job.params.noStart,
            })
          : await this.commits.commit(machine.machineId);
      this.recordChild(job, run, child, record);
      this.context.log.info({ jobId: job.record.jobId, childJobId: child.jobId, machine: machine.name, step: step.step }, `recovery plan started the ${job.params.action} of a machine`);
    }
    await this.waitForChildren(job, step, record);
  }

  /** Waits until every child of the step has ended; throws the first failure. */
  private async waitForChildren(job: PlanJob, step: PlanStepParams, record: StepRecord): Promise<void> {
    let wake: (() => void) | undefined;
    const unsubscribes = step.machines.map((run) => this.context.jobs.watch(run.childJobId, () => wake?.()));
    try {
      for (;;) {
        const children = step.machines.map((run) => ({ run, child: this.context.jobs.get(run.childJobId) }));
        const running = children.filter(({ child }) => !jobEnded(child.state));
        const bytesDone = children.reduce((sum, { child }) => sum + child.bytesDone, 0);
        const bytesTotal = children.reduce((sum, { child }) => sum + child.bytesTotal, 0);
        const message = children.map(({ run, child }) => `${this.context.machines.get(run.machineId).name}: ${child.jobId} ${describeChild(child)}`).join('; ');
        if (running.length === 0) {
          const failed = children.filter(({ child }) => child.state !== 'JOB_SUCCEEDED');
          if (failed.length === 0) {
            job.progress(record, { bytesDone, bytesTotal, message });
            return;
          }
          job.save(() => (record.message = message));
          throw new DrplaneError(
            ErrorCode.FailedPrecondition,
            failed
              .map(({ run, child }) => `${this.context.machines.get(run.machineId).name}: ${child.kind} ${child.jobId} ${child.state === 'JOB_STOPPED' ? 'was stopped' : 'failed'}: ${child.error || 'no reason given'}`)
              .join('; '),
          );
        }
        if (message !== record.message || bytesDone !== record.bytesDone || bytesTotal !== record.bytesTotal) job.progress(record, { bytesDone, bytesTotal, message });
        try {
          await Promise.race([job.wait(childPollIntervalMs), new Promise<void>((resolve) => (wake = resolve))]);
        } catch (error) {
          // The operator stopped the plan: what it started stops too (a daemon stop leaves them to resume).
          if (error instanceof JobStopped) await Promise.allSettled(running.map(({ child }) => this.context.jobs.stopJob(child.jobId)));
          throw error;
        }
      }
    } finally {
      for (const unsubscribe of unsubscribes) unsubscribe();
    }
  }

  /**
   * The child a step started just before the configuration server stopped,
   * and had no time to record: the machine's newest job of the right kind,
   * created since the step asked for it.
   */
  private adoptChild(job: PlanJob, run: PlanMachineRun): JobRecord | undefined {
    const kind = childJobKinds[job.params.action];
    const candidates = this.context.jobs.list(run.machineId).filter((candidate) => candidate.kind === kind && candidate.createdTimeMs >= run.startedTimeMs && candidate.jobId !== run.childJobId);
    return candidates[candidates.length - 1];
  }

  private recordChild(job: PlanJob, run: PlanMachineRun, child: JobRecord, record: StepRecord): void {
    job.save(() => {
      run.childJobId = child.jobId;
      run.retry = false;
      const childJobIds = (job.record.childJobIds ??= []);
      if (!childJobIds.includes(child.jobId)) childJobIds.push(child.jobId);
      record.message = `${child.jobId} started`;
    });
  }

  /** The plan's members as steps, each with its machines as they are now. */
  private stepsOf(plan: PlanRecord): PlanStepParams[] {
    return plan.members.map((member) => {
      const machineIds = this.machineIdsOf(member);
      const step = member.groupId ? `group ${this.groups.get(member.groupId).name}` : `machine ${this.context.machines.get(member.machineId).name}`;
      return { step, groupId: member.groupId, machines: machineIds.map((machineId) => ({ machineId, pointIds: [], startedTimeMs: 0, childJobId: '', retry: false })) };
    });
  }

  private machineIdsOf(member: PlanMemberRecord): string[] {
    if (member.machineId) return [member.machineId];
    const group = this.context.store.groups.get(member.groupId);
    if (!group) throw notFound(`replication group ${member.groupId} no longer exists`);
    return group.machineIds;
  }

  /**
   * The members' own refusals (busy or an unfinished job, then `check`), every
   * one of them at once, before any member moves.
   */
  private async memberRefusals(steps: PlanStepParams[], check: (machine: MachineRecord) => void | Promise<void>): Promise<string[]> {
    const problems: string[] = [];
    for (const machine of steps.flatMap((step) => step.machines.map((run) => this.context.machines.get(run.machineId)))) {
      await refused(problems, async () => {
        refuseBusyOrUnfinished(this.context.store, machine);
        await check(machine);
      });
    }
    return problems;
  }

  /** The newest complete group point (at or before timeMs with AT_OR_BEFORE). */
  private async groupPointFor(group: GroupRecord, selector: PointSelector__Output, timeMs: number): Promise<GroupPointRecord | undefined> {
    const points = await this.groupPoints.listPoints(group.groupId);
    const usable = points.filter((point) => point.complete && (selector !== 'AT_OR_BEFORE' || point.timeMs <= timeMs));
    return usable[usable.length - 1];
  }

  private refuseBusy(plan: PlanRecord): void {
    const last = plan.lastJobId ? this.context.store.jobs.get(plan.lastJobId) : undefined;
    if (last && !jobEnded(last.state)) throw failedPrecondition(`recovery plan ${plan.name} is busy with ${last.kind} ${last.jobId}: wait for it (drctl job watch ${last.jobId})`);
  }

  private findByName(name: string): PlanRecord | undefined {
    for (const { value } of this.context.store.plans.getRange()) if (value.name === name) return value;
    return undefined;
  }
}

/** Runs a check; its FAILED_PRECONDITION goes into `problems` (anything else is thrown). */
async function refused(problems: string[], check: () => Promise<void>): Promise<void> {
  try {
    await check();
  } catch (error) {
    if (!(error instanceof DrplaneError) || (error.code !== ErrorCode.FailedPrecondition && error.code !== ErrorCode.StaleEpoch)) throw error;
    problems.push(error.message);
  }
}

/** "running: fence (epoch 4)", "succeeded", "failed: ...". */
function describeChild(child: JobRecord): string {
  if (child.state === 'JOB_SUCCEEDED') return 'succeeded';
  if (jobEnded(child.state)) return `${child.state === 'JOB_STOPPED' ? 'stopped' : 'failed'}${child.error ? `: ${child.error}` : ''}`;
  const step = child.steps.find((candidate) => candidate.state === 'JOB_RUNNING') ?? child.steps.find((candidate) => candidate.state === 'JOB_QUEUED');
  return `${child.state === 'JOB_QUEUED' ? 'queued' : 'running'}${step ? `: ${step.name}${step.message ? ` (${step.message})` : ''}` : ''}`;
}

function idNumber(id: string): number {
  return Number(id.slice(id.lastIndexOf('-') + 1)) || 0;
}
