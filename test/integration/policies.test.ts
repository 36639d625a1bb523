// Goal: policies through the configuration server's gRPC API, against a real
// process. A default policy exists from the first start; creating a policy
// creates its failback policy with the fixed values (RPO 15 min, retention
// 24 h, app-consistent 60 min), tied to this configuration server and paired
// both ways; a forward policy can be edited, a failback policy cannot (the
// error says what to do); bounds are checked with errors that name them;
// deleting removes both and refuses a failback policy or the default one; all
// of it survives a restart with the same configuration server id.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { startDaemon, tempDir } from '../helpers/daemons';
import { configurationServerClient, unary } from '../helpers/clients';
import type { Policy__Output } from '../../generated/drplane/v1/Policy';

const minute = 60_000;
const hour = 60 * minute;

async function refused(promise: Promise<unknown>): Promise<grpc.ServiceError> {
  try {
    await promise;
  } catch (error) {
    return error as grpc.ServiceError;
  }
  throw new Error('the call succeeded; it should have been refused');
}

t.test('policies: default, failback pairs, edits, bounds, deletes, restart', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const args = ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'cs')];
  const first = await startDaemon('configuration-server', { args });
  t.teardown(() => first.stop());
  const cs = configurationServerClient(first.address);
  t.teardown(() => cs.close());

  const initial = (await unary(cs, cs.listPolicies, {})).policies;
  t.same(initial.map((policy) => policy.name), ['default', 'default-failback'], 'the default policy and its failback policy exist from the first start');
  const defaultPolicy = initial[0]!;
  t.match(defaultPolicy, { rpoThresholdMs: 15 * minute, retentionMs: 24 * hour, crashConsistentIntervalMs: 5_000, appConsistentIntervalMs: 60 * minute, groupConsistentIntervalMs: 5 * minute, failback: false });
  const configurationServerId = initial[1]!.configurationServerId;
  t.match(configurationServerId, /^cs-[0-9a-f]+$/, 'failback policies are tied to this configuration server');

  const created = await unary(cs, cs.createPolicy, { name: 'gold', rpoThresholdMs: 2 * minute, retentionMs: 3 * hour, crashConsistentIntervalMs: 2_000, appConsistentIntervalMs: 10 * minute, groupConsistentIntervalMs: 30_000 });
  const gold = created.policy!;
  const goldFailback = created.failbackPolicy!;
  t.match(gold, { name: 'gold', rpoThresholdMs: 2 * minute, retentionMs: 3 * hour, crashConsistentIntervalMs: 2_000, appConsistentIntervalMs: 10 * minute, groupConsistentIntervalMs: 30_000, failback: false, configurationServerId: '' });
  t.match(goldFailback, {
    name: 'gold-failback',
    rpoThresholdMs: 15 * minute,
    retentionMs: 24 * hour,
    appConsistentIntervalMs: 60 * minute,
    crashConsistentIntervalMs: 2_000,
    groupConsistentIntervalMs: 30_000,
    failback: true,
    configurationServerId,
  }, 'the failback policy has the fixed values, and the crash and group intervals of its forward policy');
  t.equal(gold.pairedPolicyId, goldFailback.policyId, 'the forward policy names its failback policy');
  t.equal(goldFailback.pairedPolicyId, gold.policyId, 'the failback policy names its forward policy');
  t.ok(gold.createdTimeMs > 0);

  const defaults = (await unary(cs, cs.createPolicy, { name: 'plain' })).policy!;
  t.match(defaults, { rpoThresholdMs: 15 * minute, retentionMs: 24 * hour, crashConsistentIntervalMs: 5_000, appConsistentIntervalMs: 60 * minute, groupConsistentIntervalMs: 5 * minute }, '0 takes the defaults');

  // Bounds and names.
  const bounds: [string, Record<string, number>, RegExp][] = [
    ['an RPO threshold under 1 s', { rpoThresholdMs: 500 }, /rpo_threshold_ms: must be from 1 s to 24 h, got 500 ms/],
    ['a retention over 30 days', { retentionMs: 31 * 24 * hour }, /retention_ms: must be from 1 s to 30 d/],
    ['a crash interval under 100 ms', { crashConsistentIntervalMs: 50 }, /crash_consistent_interval_ms: must be from 100 ms to 1 h/],
    ['an app interval under 1 s', { appConsistentIntervalMs: 999 }, /app_consistent_interval_ms: must be from 1 s to 24 h, or 0/],
    ['a group interval over 24 h', { groupConsistentIntervalMs: 25 * hour }, /group_consistent_interval_ms: must be from 1 s to 24 h, or 0/],
  ];
  for (const [what, values, message] of bounds) {
    const error = await refused(unary(cs, cs.createPolicy, { name: 'bad', ...values }));
    t.equal(error.code, grpc.status.INVALID_ARGUMENT, `${what} is refused`);
    t.match(error.details, message);
  }
  const suffix = await refused(unary(cs, cs.createPolicy, { name: 'silver-failback' }));
  t.equal(suffix.code, grpc.status.INVALID_ARGUMENT, 'a name ending in -failback is kept for failback policies');
  const duplicate = await refused(unary(cs, cs.createPolicy, { name: 'gold' }));
  t.equal(duplicate.code, grpc.status.ALREADY_EXISTS);
  const badName = await refused(unary(cs, cs.createPolicy, { name: 'no spaces' }));
  t.equal(badName.code, grpc.status.INVALID_ARGUMENT);

  // Editing: a forward policy yes (unset fields keep their value), its failback policy never.
  const updated = await unary(cs, cs.updatePolicy, { policy: 'gold', rpoThresholdMs: 5 * minute, appConsistentIntervalMs: 0, crashConsistentIntervalMs: 1_000 });
  t.match(updated, { rpoThresholdMs: 5 * minute, retentionMs: 3 * hour, appConsistentIntervalMs: 0, crashConsistentIntervalMs: 1_000, groupConsistentIntervalMs: 30_000 }, 'the fields given changed, the others kept their value; 0 turns the app schedule off');
  const failbackAfter = await unary(cs, cs.getPolicy, { policy: 'gold-failback' });
  t.match(failbackAfter, { rpoThresholdMs: 15 * minute, retentionMs: 24 * hour, appConsistentIntervalMs: 60 * minute, crashConsistentIntervalMs: 1_000 }, 'the failback policy keeps its fixed values and follows the crash interval');
  const byId = await unary(cs, cs.getPolicy, { policy: gold.policyId });
  t.equal(byId.name, 'gold', 'a policy is found by id too');
  const outOfBounds = await refused(unary(cs, cs.updatePolicy, { policy: 'gold', retentionMs: 0 }));
  t.equal(outOfBounds.code, grpc.status.INVALID_ARGUMENT, 'an update is checked against the bounds (0 is no retention at all)');
  const failbackEdit = await refused(unary(cs, cs.updatePolicy, { policy: 'gold-failback', rpoThresholdMs: minute }));
  t.equal(failbackEdit.code, grpc.status.FAILED_PRECONDITION);
  t.equal(
    failbackEdit.details,
    'policy gold-failback is the failback policy of gold, tied to this configuration server: it cannot be edited; edit gold instead (its failback policy keeps the fixed values)',
    'the refusal says why and what to do',
  );
  const unknown = await refused(unary(cs, cs.updatePolicy, { policy: 'nope', rpoThresholdMs: minute }));
  t.equal(unknown.code, grpc.status.NOT_FOUND);

  // Deleting.
  const failbackDelete = await refused(unary(cs, cs.deletePolicy, { policy: 'gold-failback' }));
  t.equal(failbackDelete.code, grpc.status.FAILED_PRECONDITION, 'a failback policy is not deleted alone');
  t.match(failbackDelete.details, /delete gold, which deletes both/);
  const defaultDelete = await refused(unary(cs, cs.deletePolicy, { policy: 'default' }));
  t.equal(defaultDelete.code, grpc.status.FAILED_PRECONDITION, 'the default policy stays');
  await unary(cs, cs.deletePolicy, { policy: 'plain' });
  const names = (await unary(cs, cs.listPolicies, {})).policies.map((policy: Policy__Output) => policy.name);
  t.same(names, ['default', 'default-failback', 'gold', 'gold-failback'], 'deleting a policy deleted its failback policy too; the list pairs each forward policy with its failback');

  // A restart keeps everything, and the configuration server id.
  t.equal((await first.stop()).code, 0);
  const second = await startDaemon('configuration-server', { args });
  t.teardown(() => second.stop());
  const cs2 = configurationServerClient(second.address);
  t.teardown(() => cs2.close());
  const after = (await unary(cs2, cs2.listPolicies, {})).policies;
  t.same(after.map((policy) => policy.name), ['default', 'default-failback', 'gold', 'gold-failback'], 'the policies survive a restart, and no second default is made');
  t.equal(after.find((policy) => policy.name === 'gold-failback')!.configurationServerId, configurationServerId, 'the configuration server id is kept');
  t.match(after.find((policy) => policy.name === 'gold'), { rpoThresholdMs: 5 * minute, crashConsistentIntervalMs: 1_000 });
});
