// Goal: the rules of replication groups, with the real daemons (configuration
// server, process server, two master targets, one agent with three disks):
// - a replication group shares one master target: machines already replicating
//   to different master targets cannot form a group (the error names them);
// - a machine is in one group only;
// - a group member enabled later goes to the group's master target (refused
//   elsewhere; chosen by default even with two master targets registered);
// - a group point needs every member protected, and then is a barrier on the
//   agent whose member points all land on the master target (complete), listed
//   by drctl group points and ListGroupPoints, and named by the group;
// - the policy's group and app intervals take points on their own;
// - a barrier that cannot be prepared everywhere is no group point: ABORTED and
//   a GROUP_BARRIER_FAILED event.
import path from 'node:path';
import t from 'tap';
import { unary } from '../../shared/grpc';
import type { GroupPoint__Output } from '../../generated/drplane/v1/GroupPoint';
import { startDaemon, tempDir } from '../helpers/daemons';
import { createImage } from '../helpers/disks';
import { eventually, startStack, runDrctl } from '../helpers/stack';

const MiB = 1024 * 1024;
const diskBytes = 4 * MiB;


const drctlHuman = runDrctl;

t.test('replication groups: one master target, one group per machine, barrier points', async (t) => {
  const dir = tempDir();
  const sources = ['a', 'b', 'c'].map((name, index) => {
    const file = path.join(dir, `${name}.img`);
    createImage(file, diskBytes, 100 + index, MiB);
    return file;
  });
  const stack = await startStack(t, { dir, agents: [{ name: 'agent1', disks: sources, args: ['--freeze-hook', 'true'] }] });
  const mt2 = await startDaemon('master-target', {
    args: ['--name', 'mt2', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt2'), '--datastore-root', path.join(dir, 'ds2'), '--configuration-server', stack.cs.address, '--passphrase-file', path.join(dir, 'cs', 'passphrase')],
  });
  t.teardown(() => mt2.stop());
  await mt2.waitForLog((line) => line.msg === 'registered with the configuration server');

  await stack.drctlJson('policy', 'create', 'fast', '--crash-interval', '500ms', '--app-interval', '0', '--group-interval', '0');
  for (const [index, name] of ['vm1', 'vm2', 'vm3'].entries()) await stack.drctlJson('machine', 'add', name, '--agent', 'agent1', '--disk', sources[index]!);
  const enable = (machine: string, ...extra: string[]) => stack.drctl('enable', machine, '--policy', 'fast', '--capture', 'write-through', ...extra);
  t.equal((await enable('vm1', '--datastore', path.join(stack.datastore, 'vm1'), '--master-target', 'mt1')).code, 0, 'vm1 replicates to mt1');
  t.equal((await enable('vm2', '--datastore', path.join(dir, 'ds2', 'vm2'), '--master-target', 'mt2')).code, 0, 'vm2 replicates to mt2');

  const split = await stack.drctl('group', 'create', 'g1', '--machine', 'vm1', '--machine', 'vm2');
  t.equal(split.code, 1);
  t.match(split.stderr, /^drctl: FAILED_PRECONDITION: a replication group shares one master target: vm1 replicates to master target mt1, vm2 replicates to master target mt2/);

  const group = await stack.drctlJson<{ groupId: string; masterTargetId: string; machineIds: string[] }>('group', 'create', 'g1', '--machine', 'vm1', '--machine', 'vm3');
  t.equal(group.machineIds.length, 2);
  const mt1 = (await unary(stack.csClient, stack.csClient.listServers, { kind: 'MASTER_TARGET' })).servers.find((server) => server.name === 'mt1')!;
  t.equal(group.masterTargetId, mt1.serverId, "the group's master target is its enabled member's");
  const twice = await stack.drctl('group', 'create', 'g2', '--machine', 'vm3');
  t.match(twice.stderr, /^drctl: FAILED_PRECONDITION: machine vm3 already belongs to replication group g1/);
  t.equal((await unary(stack.csClient, stack.csClient.getMachine, { machine: 'vm3' })).groupId, group.groupId, 'the machine names its group');

  const early = await stack.drctl('group', 'point', 'g1');
  t.match(early.stderr, /^drctl: FAILED_PRECONDITION: replication group g1: a group point needs every member protected; vm3 is UNPROTECTED/);
  const elsewhere = await enable('vm3', '--datastore', path.join(dir, 'ds2', 'vm3'), '--master-target', 'mt2');
  t.match(elsewhere.stderr, /^drctl: FAILED_PRECONDITION: machine vm3 belongs to replication group g1, whose machines replicate to master target mt1: a replication group shares one master target/);
  const joined = await enable('vm3', '--datastore', path.join(stack.datastore, 'vm3'));
  t.equal(joined.code, 0, `with two master targets registered, the group's is chosen (${joined.stderr.trim()})`);
  t.equal((await unary(stack.csClient, stack.csClient.getMachine, { machine: 'vm3' })).masterTargetId, mt1.serverId);

  const point = await stack.drctlJson<GroupPoint__Output>('group', 'point', 'g1', '--tag', 'before-upgrade');
  t.match(point, { groupId: group.groupId, tag: 'before-upgrade' });
  t.match(point.barrierId, /^barrier-/);
  t.same(point.members.map((member) => member.diskId).sort(), ['vm1-disk0', 'vm3-disk0'], 'one member point per disk of every member');
  const listed = await eventually('the group point to be complete', async () => {
    const { points } = await unary(stack.csClient, stack.csClient.listGroupPoints, { group: 'g1' });
    return points.find((candidate) => candidate.groupPointId === point.groupPointId && candidate.complete);
  }, 30_000);
  for (const member of listed.members) {
    t.match(member, { kind: 'GROUP_CONSISTENT', tag: point.barrierId }, `${member.diskId}: a group-consistent point tagged with the barrier`);
    t.ok(member.id, `${member.diskId}: applied on the master target as ${member.id}`);
  }
  const groups = await unary(stack.csClient, stack.csClient.getReplicationGroup, { group: 'g1' });
  t.equal(groups.latestGroupPointId, point.groupPointId, 'the group names its newest complete point');
  const human = await drctlHuman(stack.cs.address, 'group', 'points', 'g1');
  t.match(human.stdout, new RegExp(`${point.groupPointId}\\s+.*before-upgrade\\s+yes\\s+`), 'drctl group points lists it complete');
  const humanGroups = await drctlHuman(stack.cs.address, 'groups');
  t.match(humanGroups.stdout, /g1\s+group-\d+\s+vm1, vm3\s+mt1\s+gp-\d+/);

  // Schedules: the policy's group and app intervals take points by themselves (tag "scheduled").
  await stack.drctlJson('policy', 'update', 'fast', '--group-interval', '1s', '--app-interval', '1s');
  const scheduled = await eventually('a scheduled group point', async () => {
    const { points } = await unary(stack.csClient, stack.csClient.listGroupPoints, { group: 'g1' });
    return points.find((candidate) => candidate.tag === 'scheduled' && candidate.complete);
  }, 30_000);
  t.equal(scheduled.members.length, 2, 'a scheduled group point covers every member');
  await eventually('a scheduled app-consistent point of vm2 (not in the group)', async () => {
    const { recoveryPoints } = await unary(stack.csClient, stack.csClient.listRecoveryPoints, { machine: 'vm2', diskId: '' });
    return recoveryPoints.find((candidate) => candidate.kind === 'APP_CONSISTENT' && candidate.tag === 'scheduled');
  }, 30_000);
  await stack.drctlJson('policy', 'update', 'fast', '--group-interval', 'off', '--app-interval', 'off');
  t.pass('the policy schedules took points on their own');

  // A member's agent away: the barrier fails, no group point, an event.
  const before = (await unary(stack.csClient, stack.csClient.listGroupPoints, { group: 'g1' })).points.length;
  await stack.agents.get('agent1')!.kill();
  const failed = await stack.drctl('group', 'point', 'g1', '--tag', 'doomed');
  t.match(failed.stderr, /^drctl: ABORTED: group barrier barrier-[0-9a-f]+ of g1 failed, so no group point was made: prepare on agent agent1/);
  const { events } = await unary(stack.csClient, stack.csClient.listHealthEvents, { machine: '', activeOnly: true, limit: 0 });
  t.match(events.find((event) => event.code === 'GROUP_BARRIER_FAILED'), { subject: group.groupId, severity: 'HEALTH_WARNING' }, 'GROUP_BARRIER_FAILED is raised for the group');
  t.equal((await unary(stack.csClient, stack.csClient.listGroupPoints, { group: 'g1' })).points.length, before, 'no group point was recorded');
});
