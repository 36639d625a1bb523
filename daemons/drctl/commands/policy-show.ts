// drctl policy show NAME: a policy's thresholds and frequencies.
import type { Command } from 'commander';
import type { Policy__Output } from '../../../generated/drplane/v1/Policy';
import { context } from '../client';
import { formatInterval } from '../durations';
import { fields, formatTime, print } from '../output';

/** `paired`: the name of its failback (or forward) policy, when known. */
export function renderPolicy(policy: Policy__Output, paired = policy.pairedPolicyId): string {
  return fields([
    ['name', policy.name],
    ['id', policy.policyId],
    ['rpo threshold', formatInterval(policy.rpoThresholdMs)],
    ['retention', formatInterval(policy.retentionMs)],
    ['crash-consistent', `every ${formatInterval(policy.crashConsistentIntervalMs)}`],
    ['app-consistent', policy.appConsistentIntervalMs ? `every ${formatInterval(policy.appConsistentIntervalMs)}` : 'on demand only'],
    ['group-consistent', policy.groupConsistentIntervalMs ? `every ${formatInterval(policy.groupConsistentIntervalMs)}` : 'on demand only'],
    ['kind', policy.failback ? `failback policy of ${paired}, tied to configuration server ${policy.configurationServerId} (not editable)` : `forward (failback policy: ${paired})`],
    ['created', formatTime(policy.createdTimeMs)],
  ]);
}

export function register(policy: Command): void {
  policy
    .command('show')
    .description('show a policy')
    .argument('<name>', 'name or id of the policy')
    .action(async (name: string, _options: unknown, command: Command) => {
      const ctx = context(command);
      const found = await ctx.call(ctx.client.getPolicy, { policy: name });
      const paired = found.pairedPolicyId ? await ctx.call(ctx.client.getPolicy, { policy: found.pairedPolicyId }).catch(() => undefined) : undefined;
      print(ctx, found, () => renderPolicy(found, paired?.name));
    });
}
