// Goal: recovery plans as an operator keeps them, with the real daemons
// (configuration server, process server, master target, one agent with three
// disks):
// - a plan keeps its members in the order given on the command line (machines
//   and replication groups mixed), resolved to ids; it survives a restart;
// - refused: a name in use (ALREADY_EXISTS), an unknown machine or group
//   (NOT_FOUND), a machine twice, also through a group (INVALID_ARGUMENT), a
//   member that is both or neither, more than recoveryPlanMembersMax machines;
// - failing a plan over is refused with FAILED_PRECONDITION naming the machines
//   without a recovery point (and the group without a complete group point),
//   not the ones that have one; committing is refused before a failover;
// - drctl plans / plan show / plan delete.
import path from 'node:path';
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { unary } from '../../shared/grpc';
import { recoveryPlanMembersMax } from '../../shared/limits';
import type { RecoveryPlan__Output } from '../../generated/drplane/v1/RecoveryPlan';
import { startDaemon, tempDir } from '../helpers/daemons';
import { createImage } from '../helpers/disks';
import { waitForJob } from '../helpers/sites';
import { runDrctl, startStack } from '../helpers/stack';

const MiB = 1024 * 1024;

t.test('recovery plans: members in order, refusals, no failover without recovery points', async (t) => {
  const dir = tempDir();
  const sources = ['a', 'b', 'c'].map((name, index) => {
    const file = path.join(dir, `${name}.img`);
    // Small: the disks' size is not what this file is about (only vm1 is ever enabled).
    createImage(file, 1 * MiB, 300 + index, MiB / 4);
    return file;
  });
  const stack = await startStack(t, { dir, agents: [{ name: 'agent1', disks: sources }] });
  const human = (...args: string[]) => runDrctl(stack.cs.address, ...args);
  const ids: Record<string, string> = {};
  // Set-up through the API (drctl machine add / group create / enable are not what this file is about, and
  // each drctl run is a process start): the same requests drctl sends.
  const { csClient } = stack;
  for (const [index, name] of ['vm1', 'vm2', 'vm3'].entries()) ids[name] = (await unary(csClient, csClient.addMachine, { name, agent: 'agent1', disks: [{ sourcePath: sources[index]! }] })).machineId;
  const group = await unary(csClient, csClient.createReplicationGroup, { name: 'g1', machines: ['vm2', 'vm3'] });
  const enable = await unary(csClient, csClient.enableReplication, { machine: 'vm1', datastore: path.join(stack.datastore, 'vm1'), captureMode: 'CAPTURE_SCAN', scanIntervalMs: 500 });
  const enabled = await waitForJob(csClient, enable.jobId, { allowFailure: true });
  t.equal(enabled.state, 'JOB_SUCCEEDED', `vm1 is enabled and has its first recovery point (${enabled.error})`);

  // Order as given: a machine, then a group; and the other way round.
  const p1 = await stack.drctlJson<RecoveryPlan__Output>('plan', 'create', 'p1', '--machine', 'vm1', '--group', 'g1');
  t.match(p1, { name: 'p1', planId: /^plan-\d+$/, lastJobId: '' });
  t.same(p1.members, [{ machine: ids.vm1, group: '' }, { machine: '', group: group.groupId }], 'members resolved to ids, in command-line order');
  const p2 = await stack.drctlJson<RecoveryPlan__Output>('plan', 'create', 'p2', '--group', 'g1', '--machine', ids.vm1!);
  t.same(p2.members, [{ machine: '', group: group.groupId }, { machine: ids.vm1, group: '' }], 'a group first when given first; machines by id work too');
  const created = await human('plan', 'create', 'p3', '--machine', 'vm1');
  t.match(created.stdout, /^created recovery plan p3 \(plan-\d+\): vm1\n/);

  // Refusals.
  const refusals: [string[], RegExp][] = [
    [['plan', 'create', 'p1', '--machine', 'vm1'], /^drctl: ALREADY_EXISTS: a recovery plan named p1 already exists \(plan-\d+\): choose another name\n$/],
    [['plan', 'create', 'p9', '--machine', 'vm1', '--machine', 'ghost'], /^drctl: NOT_FOUND: no machine named "ghost"/],
    [['plan', 'create', 'p9', '--group', 'nogroup'], /^drctl: NOT_FOUND: no replication group named "nogroup"/],
    [['plan', 'create', 'p9', '--machine', 'vm2', '--group', 'g1'], /^drctl: INVALID_ARGUMENT: members: machine vm2 is in the plan twice \(on its own and in replication group g1\): a machine fails over once per plan\n$/],
    [['plan', 'create', 'p9', '--machine', 'vm1', '--machine', 'vm1'], /^drctl: INVALID_ARGUMENT: members: machine vm1 is in the plan twice \(on its own, twice\)/],
    [['plan', 'create', 'p9', '--group', 'g1', '--group', 'g1'], /^drctl: INVALID_ARGUMENT: members: machine vm2 is in the plan twice \(in replication group g1, twice\)/],
    [['plan', 'create', 'bad name', '--machine', 'vm1'], /^drctl: INVALID_ARGUMENT: name: letters, digits, dot, dash and underscore only/],
  ];
  // The refused runs change nothing: they run at once.
  const [noMembers, ...refusedRuns] = await Promise.all([human('plan', 'create', 'p9'), ...refusals.map(([args]) => human(...args))]);
  for (const [index, [args, expected]] of refusals.entries()) {
    const run = refusedRuns[index]!;
    t.equal(run.code, 1, `drctl ${args.join(' ')} exits 1`);
    t.match(run.stderr, expected);
  }
  t.equal(noMembers.code, 1);
  t.match(noMembers.stderr, /at least one --machine or --group is required/);
  const grpcRefusals: [Parameters<typeof stack.csClient.createRecoveryPlan>[0], grpc.status, RegExp][] = [
    [{ name: 'p9', members: [{ machine: 'vm1', group: 'g1' }] }, grpc.status.INVALID_ARGUMENT, /^members\[0\]: exactly one of machine and group is required, got machine vm1 and group g1$/],
    [{ name: 'p9', members: [{}] }, grpc.status.INVALID_ARGUMENT, /^members\[0\]: exactly one of machine and group is required, got neither$/],
    [{ name: 'p9', members: [] }, grpc.status.INVALID_ARGUMENT, /^members: at least one machine or replication group is required$/],
    [{ name: 'p9', members: Array.from({ length: recoveryPlanMembersMax + 1 }, () => ({ machine: 'vm1' })) }, grpc.status.RESOURCE_EXHAUSTED, new RegExp(`^members: a recovery plan holds at most ${recoveryPlanMembersMax} machines`)],
  ];
  for (const [request, code, expected] of grpcRefusals) {
    const error = await unary(stack.csClient, stack.csClient.createRecoveryPlan, request).then(() => undefined, (thrown: grpc.ServiceError) => thrown);
    t.equal(error?.code, code, `CreateRecoveryPlan ${JSON.stringify(request).slice(0, 80)}: ${grpc.status[code]}`);
    t.match(error?.details, expected);
  }
  t.equal((await unary(stack.csClient, stack.csClient.listRecoveryPlans, {})).plans.length, 3, 'no refused plan was stored');

  // No failover unless every machine has a recovery point: the message names the machines without one, not vm1.
  // Every run here is refused and changes nothing: they run at once.
  const extras = [[], ['--planned']];
  const [byTime, byId, plannedSelect, commit, failoverUnknown, ...refusedFailovers] = await Promise.all([
    human('plan', 'failover', 'p1', '--select', '<=2024-01-01T00:00:00Z'),
    human('plan', 'failover', 'p1', '--select', 'vm1-disk0@3'),
    human('plan', 'failover', 'p1', '--planned', '--select', 'latest'),
    human('plan', 'commit', 'p1'),
    human('plan', 'failover', 'nope'),
    ...extras.map((extra) => human('plan', 'failover', 'p1', ...extra)),
  ]);
  for (const [index, extra] of extras.entries()) {
    const refused = refusedFailovers[index]!;
    t.equal(refused.code, 1, `plan failover ${extra.join(' ')} is refused`);
    t.match(refused.stderr, /^drctl: FAILED_PRECONDITION: recovery plan p1 cannot fail over: /);
    t.match(refused.stderr, /: machine vm2 has no recovery point yet: enable it first \(drctl enable vm2 --datastore DIR\); machine vm3 has no recovery point yet: enable it first \(drctl enable vm3 --datastore DIR\)/);
    t.notMatch(refused.stderr, /vm1/, 'vm1 has its point and is not named');
    if (extra.length === 0) t.match(refused.stderr, /replication group g1 has no complete group point: take one \(drctl group point g1\)/, 'unplanned: the group needs a complete group point');
    else t.notMatch(refused.stderr, /group point/, 'planned: groups take LATEST like every machine, no group point is needed');
  }
  t.match(byTime.stderr, /replication group g1 has no complete group point at or before 2024-01-01T00:00:00.000Z/);
  t.equal(byId.code, 1);
  t.match(byId.stderr, /a point id names one disk; a plan takes/);
  t.match(plannedSelect.stderr, /--select is for an unplanned failover/);
  t.equal(commit.code, 1);
  t.match(commit.stderr, /^drctl: FAILED_PRECONDITION: recovery plan p1 cannot commit: machine vm1 is PROTECTED: fail it over first \(drctl failover vm1\); machine vm2 is UNPROTECTED: enable it first \(drctl enable vm2 --datastore DIR\); machine vm3 is UNPROTECTED/);
  t.match(failoverUnknown.stderr, /^drctl: NOT_FOUND: no recovery plan named "nope": drctl plans lists them\n$/);
  t.equal((await unary(stack.csClient, stack.csClient.getRecoveryPlan, { plan: 'p1' })).lastJobId, '', 'a refused failover starts no job');

  // Listing and showing, as tables and as JSON; kept across a restart.
  await stack.cs.stop();
  const cs = await startDaemon('configuration-server', { args: stack.restartArgs.cs });
  t.teardown(() => cs.stop());
  const listed = await human('plans');
  t.equal(listed.code, 0, listed.stderr);
  t.match(listed.stdout, /^NAME\s+ID\s+MEMBERS \(IN ORDER\)\s+LAST JOB\n/);
  t.match(listed.stdout, /\np1\s+plan-\d+\s+vm1, group g1 \(vm2, vm3\)\s+-\n/);
  t.match(listed.stdout, /\np2\s+plan-\d+\s+group g1 \(vm2, vm3\), vm1\s+-\n/);
  const shown = await human('plan', 'show', 'p1');
  t.equal(shown.code, 0, shown.stderr);
  t.match(shown.stdout, /^name:\s+p1\nid:\s+plan-\d+\n/);
  t.match(shown.stdout, /ORDER\s+MEMBER\s+MACHINE\s+STATE\n1\s+machine\s+vm1\s+PROTECTED\n2\s+group g1\s+vm2\s+UNPROTECTED\n2\s+group g1\s+vm3\s+UNPROTECTED/);
  t.same((await stack.drctlJson<RecoveryPlan__Output>('plan', 'show', p1.planId)).members, p1.members, 'by id, as JSON, after a restart');

  const deleted = await human('plan', 'delete', 'p2');
  t.equal(deleted.code, 0, deleted.stderr);
  t.match(deleted.stdout, /^deleted recovery plan p2 \(plan-\d+\)\n$/);
  const gone = await human('plan', 'show', 'p2');
  t.equal(gone.code, 1);
  t.match(gone.stderr, /^drctl: NOT_FOUND: no recovery plan named "p2"/);
  t.same((await unary(stack.csClient, stack.csClient.listRecoveryPlans, {})).plans.map((plan) => plan.name), ['p1', 'p3']);
  t.equal((await unary(stack.csClient, stack.csClient.getReplicationGroup, { group: 'g1' })).machineIds.length, 2, 'deleting a plan leaves its group alone');
});
