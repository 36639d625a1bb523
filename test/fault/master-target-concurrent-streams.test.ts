// Goal: when two streams deliver the same batch (a process server retrying
// while its old stream is still being applied), it is applied once, and the
// stream that lost the race is told "duplicate", so its sender restarts from
// the replica's state instead of assuming its own batch was written; the
// batches it queued behind that one are not applied (they follow a batch the
// replica does not hold) and its stream ends ABORTED, even with frames unread.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir } from '../helpers/daemons';
import { makeExtent, sendFrames, startMasterTarget, unary } from '../helpers/clients';

t.test('the same batch on two streams is applied once and the second is a duplicate', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // The first apply pauses after its before-images commit, holding the disk's lock.
  const { client, datastore } = await startMasterTarget(t, dir, { DRPLANE_FAILPOINTS: 'apply.before-images-committed=sleep:500' });
  const replicaPath = path.join(datastore, 'd.img');
  await unary(client, client.createReplica, { diskId: 'd', path: replicaPath, diskBytes: 1024 * 1024, epoch: 1 });
  const oldAttempt = [{ diskId: 'd', epoch: 1, sequence: 1, extents: [await makeExtent(0, Buffer.alloc(8192, 1))], last: true }];
  const retry = [
    { diskId: 'd', epoch: 1, sequence: 1, extents: [await makeExtent(4096, Buffer.alloc(8192, 2))], last: true },
    { diskId: 'd', epoch: 1, sequence: 2, extents: [await makeExtent(65536, Buffer.alloc(4096, 3))], last: true },
    // More batches than the master target queues behind the one it applies: its refusal comes while frames are still
    // unread, and must still reach the sender (it once left the stream without a status, and the sender waiting forever).
    { diskId: 'd', epoch: 1, sequence: 3, extents: [await makeExtent(2 * 65536, Buffer.alloc(4096, 4))], last: true },
    { diskId: 'd', epoch: 1, sequence: 4, extents: [await makeExtent(3 * 65536, Buffer.alloc(4096, 5))], last: true },
  ];
  const first = sendFrames(client, oldAttempt);
  await new Promise((resolve) => setTimeout(resolve, 100));
  const second = await sendFrames(client, retry);
  const firstResult = await first;
  t.error(firstResult.error);
  t.equal(second.error?.code, 10, `the second stream ends ABORTED: ${second.error?.details}`);
  t.equal(firstResult.acks[0]?.duplicate, false, 'the first stream applied batch 1');
  t.equal(second.acks[0]?.duplicate, true, 'the second stream is told its batch 1 was a duplicate');
  const replica = fs.readFileSync(replicaPath);
  t.ok(replica.subarray(0, 8192).equals(Buffer.alloc(8192, 1)), 'only the first batch 1 was written');
  t.equal(second.acks.length, 1, 'nothing after the duplicate was acknowledged');
  for (const offset of [65536, 2 * 65536, 3 * 65536]) t.ok(replica.subarray(offset, offset + 4096).equals(Buffer.alloc(4096)), `the batch at ${offset}, queued behind the duplicate, was not applied`);
  t.equal((await unary(client, client.getReplica, { diskId: 'd' })).appliedSequence, 1);
});
