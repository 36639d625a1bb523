// drctl plan create NAME --machine A --group G --machine B: a recovery plan,
// its members failing over in the order given on the command line.
import { Command } from 'commander';
import type { RecoveryPlanMember } from '../../../generated/drplane/v1/RecoveryPlanMember';
import { context } from '../client';
import { print } from '../output';

export function register(plan: Command): void {
  // --machine and --group go into one list, so their order on the command line is the failover order.
  const members: RecoveryPlanMember[] = [];
  plan
    .command('create')
    .description('create a recovery plan: machines and replication groups that fail over together, in the order given')
    .argument('<name>', 'name of the plan (letters, digits, dot, dash, underscore)')
    .option('--machine <machine>', 'a machine (name or id); repeat, in failover order', (value: string) => (members.push({ machine: value }), members))
    .option('--group <group>', 'a replication group (name or id): its machines fail over together at its newest complete group point', (value: string) => (members.push({ group: value }), members))
    .action(async (name: string, _options: unknown, command: Command) => {
      if (members.length === 0) command.error('error: at least one --machine or --group is required');
      const ctx = context(command);
      const created = await ctx.call(ctx.client.createRecoveryPlan, { name, members });
      const order = members.map((member) => (member.machine ? member.machine : `group ${member.group}`)).join(', then ');
      print(ctx, created, () => `created recovery plan ${created.name} (${created.planId}): ${order}\n\nnext: drctl plan failover ${created.name} [--planned] fails it over`);
    });
}
