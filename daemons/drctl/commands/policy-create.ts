// drctl policy create NAME [--rpo-threshold 15m --retention 24h --crash-interval 5s
// --app-interval 60m --group-interval 5m]: a forward policy and its failback policy.
import type { Command } from 'commander';
import { context } from '../client';
import { parseDuration } from '../durations';
import { print } from '../output';
import { renderPolicy } from './policy-show';

export interface IntervalOptions {
  rpoThreshold?: number;
  retention?: number;
  crashInterval?: number;
  appInterval?: number;
  groupInterval?: number;
}

/** The duration options shared by policy create and policy update. */
export function intervalOptions(command: Command, defaults: boolean): Command {
  const hint = (value: string) => (defaults ? ` (default ${value})` : '');
  return command
    .option('--rpo-threshold <duration>', `a disk whose RPO passes it raises a health event, 1s to 24h${hint('15m')}`, parseDuration)
    .option('--retention <duration>', `recovery points older than this are pruned, 1s to 30d${hint('24h')}`, parseDuration)
    .option('--crash-interval <duration>', `a crash-consistent point closes at least this often, 100ms to 1h${hint('5s')}`, parseDuration)
    .option('--app-interval <duration>', `an app-consistent point is taken this often, 1s to 24h, or 0/off: on demand only${hint('60m')}`, parseDuration)
    .option('--group-interval <duration>', `a replication group's common point is taken this often, 1s to 24h, or 0/off${hint('5m')}`, parseDuration);
}

export function register(policy: Command): void {
  intervalOptions(
    policy
      .command('create')
      .description('create a policy (and its failback policy NAME-failback: RPO 15m, retention 24h, app-consistent 60m, not editable)')
      .argument('<name>', 'name of the policy (letters, digits, dot, dash, underscore)'),
    true,
  ).action(async (name: string, options: IntervalOptions, command: Command) => {
    const ctx = context(command);
    let response = await ctx.call(ctx.client.createPolicy, {
      name,
      rpoThresholdMs: options.rpoThreshold ?? 0,
      retentionMs: options.retention ?? 0,
      crashConsistentIntervalMs: options.crashInterval ?? 0,
      appConsistentIntervalMs: options.appInterval ?? 0,
      groupConsistentIntervalMs: options.groupInterval ?? 0,
    });
    // CreatePolicy takes 0 for "the default": turning a schedule off is an update right after.
    const off = { ...(options.appInterval === 0 ? { appConsistentIntervalMs: 0 } : {}), ...(options.groupInterval === 0 ? { groupConsistentIntervalMs: 0 } : {}) };
    if (Object.keys(off).length > 0) {
      const policy = await ctx.call(ctx.client.updatePolicy, { policy: response.policy!.policyId, ...off });
      const failbackPolicy = await ctx.call(ctx.client.getPolicy, { policy: policy.pairedPolicyId });
      response = { policy, failbackPolicy };
    }
    print(ctx, response, () => `created policy ${response.policy!.name} and its failback policy ${response.failbackPolicy!.name}\n\n${renderPolicy(response.policy!, response.failbackPolicy!.name)}\n\n${renderPolicy(response.failbackPolicy!, response.policy!.name)}\n\nnext: drctl enable MACHINE --datastore DIR --policy ${response.policy!.name}`);
  });
}
