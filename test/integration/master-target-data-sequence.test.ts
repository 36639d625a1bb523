// Goal: a replica says which batch last wrote bytes (data_sequence), so a
// planned failover can tell an idle source's point-only batches (a watermark,
// a quiet scan pass) from data: a batch that only closes a point leaves it,
// a batch with extents moves it, and it survives a restart of the master target.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { makeExtent, sendFrames, startMasterTarget, unary } from '../helpers/clients';
import { tempDir } from '../helpers/daemons';

t.test('data_sequence moves with data, not with point-only batches', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const block = 4096;
  const diskId = 'vm1-disk0';
  let { mt, client } = await startMasterTarget(t, dir);
  await unary(client, client.createReplica, { diskId, path: path.join(dir, 'ds', `${diskId}.img`), diskBytes: 64 * block, epoch: 1 });
  const replica = () => unary(client, client.getReplica, { diskId });
  t.equal(Number((await replica()).dataSequence), 0, 'a new replica: no batch wrote data');

  const frame = (sequence: number, extents: Awaited<ReturnType<typeof makeExtent>>[]) => ({ diskId, epoch: 1, sequence, extents, last: true, recoveryPointKind: 'CRASH_CONSISTENT' as const, sourceTimeMs: Date.now() });
  const data = await sendFrames(client, [frame(1, [await makeExtent(0, Buffer.alloc(block, 7))])]);
  t.notOk(data.error, 'a batch with data is applied');
  let state = await replica();
  t.same([Number(state.appliedSequence), Number(state.dataSequence)], [1, 1], 'it moves data_sequence');

  const pointsOnly = await sendFrames(client, [frame(2, []), frame(3, [])]);
  t.notOk(pointsOnly.error, 'two batches that only close points are applied');
  state = await replica();
  t.same([Number(state.appliedSequence), Number(state.dataSequence)], [3, 1], 'they leave data_sequence at the last batch with data');
  t.equal(state.latestRecoveryPointId, `${diskId}@3`, 'and the newest point is the last of them');

  await mt.stop();
  ({ mt, client } = await startMasterTarget(t, dir));
  state = await replica();
  t.same([Number(state.appliedSequence), Number(state.dataSequence)], [3, 1], 'after a restart the replica says the same');
  const more = await sendFrames(client, [frame(4, [await makeExtent(block, Buffer.alloc(block, 8))])]);
  t.notOk(more.error);
  t.equal(Number((await replica()).dataSequence), 4, 'the next batch with data moves it again');
});
