// drctl plan delete NAME: the plan only; its machines and groups stay as they are.
import type { Command } from 'commander';
import { context } from '../client';
import { print } from '../output';

export function register(plan: Command): void {
  plan
    .command('delete')
    .description('delete a recovery plan (its machines and groups are not touched; refused while its job runs)')
    .argument('<name>', 'name or id of the plan')
    .action(async (name: string, _options: unknown, command: Command) => {
      const ctx = context(command);
      const found = await ctx.call(ctx.client.getRecoveryPlan, { plan: name });
      await ctx.call(ctx.client.deleteRecoveryPlan, { plan: found.planId });
      print(ctx, { deleted: found.planId }, () => `deleted recovery plan ${found.name} (${found.planId})`);
    });
}
