// drctl plans: the recovery plans, their members in order and their last job.
import type { Command } from 'commander';
import type { Job__Output } from '../../../generated/drplane/v1/Job';
import type { RecoveryPlan__Output } from '../../../generated/drplane/v1/RecoveryPlan';
import { context, type Context } from '../client';
import { print, shortState, table } from '../output';

/** Machine and group names by id, to show a plan's members. */
export async function memberNames(ctx: Context): Promise<{ machines: Map<string, string>; groups: Map<string, { name: string; machineIds: string[] }> }> {
  const [machines, groups] = await Promise.all([ctx.call(ctx.client.listMachines, {}), ctx.call(ctx.client.listReplicationGroups, {})]);
  return {
    machines: new Map(machines.machines.map((machine) => [machine.machineId, machine.name])),
    groups: new Map(groups.groups.map((group) => [group.groupId, { name: group.name, machineIds: group.machineIds }])),
  };
}

/** "vm1, group g1 (vm2, vm3)" */
export function describeMembers(plan: RecoveryPlan__Output, names: Awaited<ReturnType<typeof memberNames>>): string {
  return plan.members
    .map((member) => {
      if (member.machine) return names.machines.get(member.machine) ?? member.machine;
      const group = names.groups.get(member.group);
      return group ? `group ${group.name} (${group.machineIds.map((machineId) => names.machines.get(machineId) ?? machineId).join(', ')})` : `group ${member.group}`;
    })
    .join(', ');
}

export function describeJob(jobId: string, job: Job__Output | undefined): string {
  if (!jobId) return '-';
  return job ? `${job.jobId} ${job.kind} ${shortState(job.state).toLowerCase()}` : jobId;
}

export function register(program: Command): void {
  program
    .command('plans')
    .description('list the recovery plans')
    .action(async (_options: unknown, command: Command) => {
      const ctx = context(command);
      const [response, names] = await Promise.all([ctx.call(ctx.client.listRecoveryPlans, {}), memberNames(ctx)]);
      const jobs = new Map<string, Job__Output>();
      await Promise.all(
        response.plans
          .filter((plan) => plan.lastJobId)
          .map(async (plan) => {
            const job = await ctx.call(ctx.client.getJob, { jobId: plan.lastJobId }).catch(() => undefined);
            if (job) jobs.set(job.jobId, job);
          }),
      );
      print(ctx, response, () => {
        if (response.plans.length === 0) return 'no recovery plans: drctl plan create NAME --machine A --group G makes one';
        return table(
          ['NAME', 'ID', 'MEMBERS (IN ORDER)', 'LAST JOB'],
          response.plans.map((plan) => [plan.name, plan.planId, describeMembers(plan, names), describeJob(plan.lastJobId, jobs.get(plan.lastJobId))]),
        );
      });
    });
}
