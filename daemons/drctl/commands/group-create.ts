// drctl group create NAME --machine A --machine B: a replication group (its
// machines share one master target and get common points).
import type { Command } from 'commander';
import { context } from '../client';
import { print } from '../output';

export function register(group: Command): void {
  group
    .command('create')
    .description('create a replication group: machines that share one master target and get group-consistent points')
    .argument('<name>', 'name of the group (letters, digits, dot, dash, underscore)')
    .requiredOption('--machine <machine>', 'a member (name or id); repeat for each machine', (value: string, previous: string[]) => [...previous, value], [] as string[])
    .action(async (name: string, options: { machine: string[] }, command: Command) => {
      const ctx = context(command);
      const created = await ctx.call(ctx.client.createReplicationGroup, { name, machines: options.machine });
      print(ctx, created, () => `created replication group ${created.name} (${created.groupId}) with ${options.machine.join(', ')}\n\nnext: drctl group point ${created.name} takes a common point`);
    });
}
