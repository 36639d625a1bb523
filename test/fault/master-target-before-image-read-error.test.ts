// Goal: a before-image read that fails in the thread pool fails its batch:
// nothing of the batch is applied or acknowledged (its before-images would be
// missing), the master target keeps serving, the replica and every point stay
// as they were, and the same batch applies when sent again. A failpoint slows
// the first read of each batch (so the rest go to the thread pool) and makes
// the second read in the thread pool fail with EIO.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import t from 'tap';
import { makeExtent, sendFrames, startMasterTarget, unary } from '../helpers/clients';
import { tempDir } from '../helpers/daemons';
import { randomBytes, seededRandom } from '../helpers/disks';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const diskBytes = 4 * 1024 * 1024;
const block = 4096;
const sha256 = (data: Buffer) => crypto.createHash('sha256').update(data).digest('hex');

t.test('a failed before-image read refuses the batch and loses nothing', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { client } = await startMasterTarget(t, dir, { DRPLANE_FAILPOINTS: 'apply.before-image-read=sleep:2,apply.before-image-read-async=error:EIO@2' });
  const replicaPath = path.join(dir, 'ds', 'vm1-disk0.img');
  await unary(client, client.createReplica, { diskId: 'vm1-disk0', path: replicaPath, diskBytes, epoch: 1 });

  // Batch 1 writes 8 scattered extents (a new replica: zero markers, no reads); batch 2 overwrites them (8 reads).
  const offsets = Array.from({ length: 8 }, (_, index) => index * 64 * block);
  const batch = async (sequence: number) => {
    const model = Buffer.alloc(diskBytes);
    const extents = [];
    for (const offset of offsets) {
      const data = randomBytes(4 * block, random);
      extents.push(await makeExtent(offset, data, false));
      data.copy(model, offset);
    }
    return { frame: { diskId: 'vm1-disk0', epoch: 1, sequence, extents, last: true, recoveryPointKind: 'CRASH_CONSISTENT' as const }, model };
  };
  const first = await batch(1);
  t.error((await sendFrames(client, [first.frame])).error, 'batch 1 applied');
  const afterFirst = sha256(fs.readFileSync(replicaPath));
  t.equal(afterFirst, sha256(first.model));

  const second = await batch(2);
  const refused = await sendFrames(client, [second.frame]);
  t.match(refused.error?.details, /cannot read replica .*vm1-disk0\.img for the batch's before-images \(EIO\); nothing of the batch was applied/, `batch 2 refused: ${refused.error?.code} ${refused.error?.details}`);
  t.same(refused.acks, [], 'and not acknowledged');
  t.equal(sha256(fs.readFileSync(replicaPath)), afterFirst, 'the replica is as batch 1 left it');
  const replica = await unary(client, client.getReplica, { diskId: 'vm1-disk0' });
  t.equal(Number(replica.appliedSequence), 1, 'batch 1 is the last applied');

  const again = await sendFrames(client, [second.frame]);
  t.error(again.error, 'batch 2 applies when sent again');
  t.equal(sha256(fs.readFileSync(replicaPath)), sha256(second.model));
  const restored = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'vm1-disk0@1', path: path.join(dir, 'ds', 'restore', 'at-1.img') }, { timeoutMs: 60_000 });
  t.equal(sha256(fs.readFileSync(restored.path)), afterFirst, "point 1 materialises exactly: batch 2's before-images are whole");
});
