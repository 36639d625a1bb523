// drctl policy delete NAME: a forward policy and its failback policy, unless a machine uses either.
import type { Command } from 'commander';
import { context } from '../client';
import { print } from '../output';

export function register(policy: Command): void {
  policy
    .command('delete')
    .description('delete a policy and its failback policy (refused while a machine uses either)')
    .argument('<name>', 'name or id of the policy')
    .action(async (name: string, _options: unknown, command: Command) => {
      const ctx = context(command);
      const found = await ctx.call(ctx.client.getPolicy, { policy: name });
      await ctx.call(ctx.client.deletePolicy, { policy: found.policyId });
      print(ctx, { deleted: [found.policyId, found.pairedPolicyId].filter(Boolean) }, () => `deleted policy ${found.name} and its failback policy`);
    });
}
