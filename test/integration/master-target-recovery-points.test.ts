// Goal: a sequence of batches gives a sequence of recovery points, and
// materialising each one gives exactly the disk's state after that batch:
// with before-images read from the page cache, and read in the thread pool as
// they are once a read takes as long as the disk (a failpoint slows the first).
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { tempDir } from '../helpers/daemons';
import { makeExtent, sendFrames, startMasterTarget, unary } from '../helpers/clients';
import { randomBytes, seededRandom } from '../helpers/disks';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100000);
const diskBytes = 8 * 1024 * 1024;
const block = 4096;

const beforeImageReads = [
  { how: 'read inline', env: undefined },
  { how: 'read in the thread pool', env: { DRPLANE_FAILPOINTS: 'apply.before-image-read=sleep:1' } },
];

for (const { how, env } of beforeImageReads) t.test(`every recovery point materialises to the state after its batch (before-images ${how})`, async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { client } = await startMasterTarget(t, dir, env);

  await unary(client, client.createReplica, { diskId: 'vm1-disk0', path: path.join(dir, 'ds', 'vm1-disk0.img'), diskBytes, epoch: 1 });
  const model = Buffer.alloc(diskBytes);
  const states: { sequence: number; hash: string }[] = [];
  for (let sequence = 1; sequence <= 12; sequence++) {
    const extents = [];
    for (let n = 0; n < 1 + Math.floor(random() * 6); n++) {
      const blocks = 1 + Math.floor(random() * 64);
      const offset = Math.floor(random() * (diskBytes / block - blocks)) * block;
      // Every fourth extent is compressible, some are zeros (a block written back to zero).
      const kind = Math.floor(random() * 4);
      const plain = kind === 0 ? Buffer.alloc(blocks * block) : kind === 1 ? Buffer.alloc(blocks * block, sequence) : randomBytes(blocks * block, random);
      plain.copy(model, offset);
      extents.push(await makeExtent(offset, plain));
    }
    // Split the batch over two frames to exercise multi-frame batches.
    const half = Math.ceil(extents.length / 2);
    const result = await sendFrames(client, [
      { diskId: 'vm1-disk0', epoch: 1, sequence, extents: extents.slice(0, half) },
      { diskId: 'vm1-disk0', epoch: 1, sequence, extents: extents.slice(half), last: true, recoveryPointKind: 'CRASH_CONSISTENT', sourceTimeMs: Date.now(), tag: `b${sequence}` },
    ]);
    t.error(result.error, `batch ${sequence} applied`);
    t.equal(result.acks[0]?.recoveryPointId, `vm1-disk0@${sequence}`);
    states.push({ sequence, hash: crypto.createHash('sha256').update(model).digest('hex') });
  }

  const listed = await unary(client, client.listRecoveryPoints, { diskId: 'vm1-disk0' });
  t.same(listed.recoveryPoints.map((p) => p.sequence), states.map((s) => s.sequence), 'one point per batch, in order');
  t.equal(listed.recoveryPoints[3].tag, 'b4');
  t.equal(listed.recoveryPoints[3].kind, 'CRASH_CONSISTENT');

  for (const state of states) {
    const target = path.join(dir, 'ds', 'restored', `at-${state.sequence}.img`);
    const result = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: `vm1-disk0@${state.sequence}`, path: target }, { timeoutMs: 60_000 });
    const restored = fs.readFileSync(result.path);
    t.equal(crypto.createHash('sha256').update(restored).digest('hex'), state.hash, `point ${state.sequence} materialises exactly`);
  }
  const replica = fs.readFileSync(path.join(dir, 'ds', 'vm1-disk0.img'));
  t.ok(replica.equals(model), 'the replica equals the latest state');

  // Two extents of one batch at the same offset (a long write, then a short one over its start):
  // each keeps its own before-image, so the point before them still materialises exactly.
  const long = randomBytes(64 * block, random);
  const short = randomBytes(8 * block, random);
  const twoAtOnce = await sendFrames(client, [
    { diskId: 'vm1-disk0', epoch: 1, sequence: 13, extents: [await makeExtent(block * 16, long), await makeExtent(block * 16, short)], last: true, recoveryPointKind: 'CRASH_CONSISTENT' },
  ]);
  t.error(twoAtOnce.error);
  const before13 = path.join(dir, 'ds', 'restored', 'before-13.img');
  await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'vm1-disk0@12', path: before13 }, { timeoutMs: 60_000 });
  t.ok(fs.readFileSync(before13).equals(model), 'extents at the same offset in one batch keep both before-images');
  long.copy(model, block * 16);
  short.copy(model, block * 16);
  t.ok(fs.readFileSync(path.join(dir, 'ds', 'vm1-disk0.img')).equals(model), 'and the later extent wins on the replica');

  // A repeated batch is acknowledged and ignored.
  const again = await sendFrames(client, [{ diskId: 'vm1-disk0', epoch: 1, sequence: 13, extents: [await makeExtent(0, Buffer.alloc(block, 9))], last: true }]);
  t.error(again.error);
  t.equal(again.acks[0]?.duplicate, true, 'a repeated batch is acknowledged as a duplicate');
  t.ok(fs.readFileSync(path.join(dir, 'ds', 'vm1-disk0.img')).equals(model), 'and nothing of it is written');
});
