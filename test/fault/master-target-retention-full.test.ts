// Goal: the retention volume filling up while batches apply (a 24 MiB tmpfs
// mounted for the test: root only) refuses the batch that does not fit with
// RESOURCE_EXHAUSTED, writes nothing of it, and the master target keeps
// serving: the replica is at the last acknowledged batch, the newest point
// materialises exactly. (lmdb left a failed commit's rejection unhandled and
// the daemon exited.) Prints its seed.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { status } from '@grpc/grpc-js';
import { tempDir } from '../helpers/daemons';
import { makeExtent, sendFrames, startMasterTargetWithConfig, unary } from '../helpers/clients';
import { randomBytes, seededRandom, tmpfsVolume, whyNoTmpfs } from '../helpers/disks';

const MiB = 1024 * 1024;
const diskBytes = 16 * MiB;
const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);

t.test('a full retention volume refuses the batch whole; the master target keeps serving', { skip: whyNoTmpfs }, async (t) => {
  t.comment(`seed ${seed}`);
  const dir = tempDir();
  const volume = tmpfsVolume(t, dir, '24m');
  const { mt, client, datastore } = await startMasterTargetWithConfig(t, dir, { retentionDir: volume, retentionFreeBytesMin: 0 });
  const replicaPath = path.join(datastore, 'd.img');
  await unary(client, client.createReplica, { diskId: 'd', path: replicaPath, diskBytes, epoch: 1 });

  const random = seededRandom(seed);
  const expected = Buffer.alloc(diskBytes);
  let applied = 0;
  let refused: Awaited<ReturnType<typeof sendFrames>>['error'];
  // 1 MiB batches over the first 8 MiB: from the ninth on, each keeps 1 MiB of before-images on the volume.
  for (let sequence = 1; sequence <= 64 && !refused; sequence++) {
    const offset = ((sequence - 1) % 8) * MiB;
    const data = randomBytes(MiB, random);
    const result = await sendFrames(client, [{ diskId: 'd', epoch: 1, sequence, extents: [await makeExtent(offset, data, false)], last: true, recoveryPointKind: 'CRASH_CONSISTENT' }]);
    if (result.error) refused = result.error;
    else {
      data.copy(expected, offset);
      applied = sequence;
    }
  }
  t.ok(refused, `a batch was refused after ${applied} applied`);
  t.equal(refused?.code, status.RESOURCE_EXHAUSTED, 'RESOURCE_EXHAUSTED');
  t.match(refused?.details, /retention volume is full.*nothing of this change was written/, 'the message says the volume is full and what to do');
  t.equal((await unary(client, client.getStatus, {})).replicaCount, 1, 'the master target still serves');
  t.equal(mt.process.exitCode, null, 'and has not exited');
  const replica = await unary(client, client.getReplica, { diskId: 'd' });
  t.equal(replica.appliedSequence, applied, 'the refused batch is not applied');
  t.ok(fs.readFileSync(replicaPath).equals(expected), 'the replica holds exactly the acknowledged batches: nothing of the refused one');
  const restored = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: `d@${applied}`, path: path.join(datastore, 'restore', 'latest.img') });
  t.ok(fs.readFileSync(restored.path).equals(expected), 'the newest point materialises exactly');
});
