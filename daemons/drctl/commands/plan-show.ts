// drctl plan show NAME: a recovery plan's members in order, their machines'
// states, and its last job.
import type { Command } from 'commander';
import { context } from '../client';
import { fields, formatTime, print, table } from '../output';
import { describeJob, memberNames } from './plans';

export function register(plan: Command): void {
  plan
    .command('show')
    .description('show a recovery plan: its members in failover order and their machines')
    .argument('<name>', 'name or id of the plan')
    .action(async (name: string, _options: unknown, command: Command) => {
      const ctx = context(command);
      const [found, names, machines] = await Promise.all([ctx.call(ctx.client.getRecoveryPlan, { plan: name }), memberNames(ctx), ctx.call(ctx.client.listMachines, {})]);
      const lastJob = found.lastJobId ? await ctx.call(ctx.client.getJob, { jobId: found.lastJobId }).catch(() => undefined) : undefined;
      const states = new Map(machines.machines.map((machine) => [machine.machineId, machine.state]));
      print(ctx, found, () => {
        const head = fields([
          ['name', found.name],
          ['id', found.planId],
          ['created', formatTime(found.createdTimeMs)],
          ['last job', describeJob(found.lastJobId, lastJob)],
          ...(lastJob?.error ? [['error', lastJob.error] as [string, string]] : []),
        ]);
        const rows: string[][] = [];
        found.members.forEach((member, index) => {
          const group = member.group ? names.groups.get(member.group) : undefined;
          const machineIds = member.machine ? [member.machine] : (group?.machineIds ?? []);
          for (const machineId of machineIds) {
            rows.push([String(index + 1), member.machine ? 'machine' : `group ${group?.name ?? member.group}`, names.machines.get(machineId) ?? machineId, states.get(machineId) ?? '-']);
          }
        });
        return `${head}\n\n${table(['ORDER', 'MEMBER', 'MACHINE', 'STATE'], rows)}`;
      });
    });
}
