// drctl policies: every policy, each forward policy followed by its failback policy.
import type { Command } from 'commander';
import { context } from '../client';
import { formatInterval } from '../durations';
import { print, table } from '../output';

export function register(program: Command): void {
  program
    .command('policies')
    .description('list the policies')
    .action(async (_options: unknown, command: Command) => {
      const ctx = context(command);
      const response = await ctx.call(ctx.client.listPolicies, {});
      const names = new Map(response.policies.map((policy) => [policy.policyId, policy.name]));
      print(ctx, response, () =>
        table(
          ['NAME', 'ID', 'RPO THRESHOLD', 'RETENTION', 'CRASH', 'APP', 'GROUP', 'KIND'],
          response.policies.map((policy) => [
            policy.name,
            policy.policyId,
            formatInterval(policy.rpoThresholdMs),
            formatInterval(policy.retentionMs),
            formatInterval(policy.crashConsistentIntervalMs),
            formatInterval(policy.appConsistentIntervalMs, 'off'),
            formatInterval(policy.groupConsistentIntervalMs, 'off'),
            policy.failback ? `failback of ${names.get(policy.pairedPolicyId) ?? policy.pairedPolicyId} (fixed)` : 'forward',
          ]),
        ),
      );
    });
}
