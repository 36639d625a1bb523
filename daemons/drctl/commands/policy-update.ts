// drctl policy update NAME [--rpo-threshold ... --group-interval ...]: change a
// forward policy; the machines that use it get the change (retention on their
// master target, crash-consistent interval on their process server).
import type { Command } from 'commander';
import { context, DrctlError } from '../client';
import { print } from '../output';
import { intervalOptions, type IntervalOptions } from './policy-create';
import { renderPolicy } from './policy-show';

export function register(policy: Command): void {
  intervalOptions(policy.command('update').description('change a policy (failback policies are fixed: update the forward one)').argument('<name>', 'name or id of the policy'), false).action(
    async (name: string, options: IntervalOptions, command: Command) => {
      const ctx = context(command);
      const changes = {
        ...(options.rpoThreshold !== undefined ? { rpoThresholdMs: options.rpoThreshold } : {}),
        ...(options.retention !== undefined ? { retentionMs: options.retention } : {}),
        ...(options.crashInterval !== undefined ? { crashConsistentIntervalMs: options.crashInterval } : {}),
        ...(options.appInterval !== undefined ? { appConsistentIntervalMs: options.appInterval } : {}),
        ...(options.groupInterval !== undefined ? { groupConsistentIntervalMs: options.groupInterval } : {}),
      };
      if (Object.keys(changes).length === 0) throw new DrctlError('INVALID_ARGUMENT', 'nothing to change: give --rpo-threshold, --retention, --crash-interval, --app-interval or --group-interval');
      const updated = await ctx.call(ctx.client.updatePolicy, { policy: name, ...changes });
      const paired = await ctx.call(ctx.client.getPolicy, { policy: updated.pairedPolicyId }).catch(() => undefined);
      print(ctx, updated, () => `updated policy ${updated.name}\n\n${renderPolicy(updated, paired?.name)}`);
    },
  );
}
