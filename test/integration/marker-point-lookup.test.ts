// Goal: the point an app-consistent or group marker made is the one the
// configuration server reports, even when it looks late. An idle
// write-through disk repeats its last state as a crash-consistent point with
// a newer time at the same change sequence (docs/continuous-replication.md);
// the configuration server used to take the newest point at the marker's
// change, so a group point could complete with a crash-consistent member (the
// configuration-server-groups flake under load). Here the configuration
// server waits 1.5 s before its first look (a failpoint), the crash interval
// is 200 ms, and the disk stays idle: the repeat is there first.
import path from 'node:path';
import t from 'tap';
import { unary } from '../../shared/grpc';
import type { GroupPoint__Output } from '../../generated/drplane/v1/GroupPoint';
import type { RecoveryPoint__Output } from '../../generated/drplane/v1/RecoveryPoint';
import { createImage } from '../helpers/disks';
import { tempDir } from '../helpers/daemons';
import { eventually, startStack } from '../helpers/stack';

const MiB = 1024 * 1024;

t.test('an app or group marker point is found by its kind, not as the newest point at its change', async (t) => {
  const dir = tempDir();
  const source = path.join(dir, 'a.img');
  createImage(source, 4 * MiB, 7, MiB);
  const stack = await startStack(t, { dir, agents: [{ name: 'agent1', disks: [source], args: ['--freeze-hook', 'true', '--thaw-hook', 'true'] }], csEnv: { DRPLANE_FAILPOINTS: 'marker-points.before-lookup=sleep:1500' } });
  await stack.drctlJson('policy', 'create', 'idle', '--crash-interval', '200ms', '--app-interval', '0', '--group-interval', '0');
  await stack.drctlJson('machine', 'add', 'vm1', '--agent', 'agent1', '--disk', source);
  const job = await stack.drctlJson<{ state: string }>('enable', 'vm1', '--datastore', path.join(stack.datastore, 'vm1'), '--policy', 'idle', '--capture', 'write-through');
  t.equal(job.state, 'JOB_SUCCEEDED', 'vm1 replicates');
  const pointsAt = async (point: RecoveryPoint__Output) =>
    (await unary(stack.csClient, stack.csClient.listRecoveryPoints, { machine: 'vm1', diskId: '' })).recoveryPoints.filter((candidate) => candidate.captureId === point.captureId && Number(candidate.changeSequence) === Number(point.changeSequence));

  const taken = await stack.drctlJson<{ recoveryPoints: RecoveryPoint__Output[] }>('app-point', 'vm1', '--tag', 'late');
  const app = taken.recoveryPoints[0]!;
  t.match(app, { kind: 'APP_CONSISTENT', tag: 'late' }, 'app-point answers with the app-consistent point');
  const repeated = await eventually('a newer crash-consistent point at the same change', async () => {
    const there = await pointsAt(app);
    return there.some((point) => point.kind === 'CRASH_CONSISTENT' && Number(point.sequence) > Number(app.sequence)) ? there : undefined;
  }, 10_000);
  t.ok(repeated.length >= 2, `the idle disk repeated the state: ${repeated.map((point) => `${point.id} ${point.kind}`).join(', ')}`);

  await stack.drctlJson('group', 'create', 'g1', '--machine', 'vm1');
  const group = await stack.drctlJson<GroupPoint__Output>('group', 'point', 'g1', '--tag', 'late');
  const complete = await eventually('the group point to be complete', async () => {
    const { points } = await unary(stack.csClient, stack.csClient.listGroupPoints, { group: 'g1' });
    return points.find((candidate) => candidate.groupPointId === group.groupPointId && candidate.complete);
  }, 30_000);
  const member = complete.members[0]!;
  t.match(member, { kind: 'GROUP_CONSISTENT', tag: group.barrierId }, 'the member is the group-consistent point the barrier made');
  const there = await eventually('a newer crash-consistent point at the barrier', async () => {
    const found = await pointsAt(member);
    return found.some((point) => point.kind === 'CRASH_CONSISTENT') ? found : undefined;
  }, 10_000);
  t.ok(there.length >= 2, `and a crash-consistent repeat stands beside it: ${there.map((point) => `${point.id} ${point.kind}`).join(', ')}`);
});
