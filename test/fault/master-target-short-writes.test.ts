// Goal: a write that writes fewer bytes than asked (a kernel's short write,
// injected by a `short` failpoint) never leaves a hole that drplane reports as
// written: the master target's apply (page-cache writes inline and through the
// thread pool, direct writes), its rollback and its materialise each write the
// rest, so the replica and every materialised point hold exactly the bytes
// they should. Each case arms one failpoint; the log shows it fired.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { tempDir } from '../helpers/daemons';
import { makeExtent, sendFrames, startMasterTarget, unary } from '../helpers/clients';

const KiB = 1024;
const diskBytes = 4 * 1024 * KiB;

const pattern = (length: number, seed: number) => Buffer.from(Array.from({ length }, (_, index) => (index * 31 + seed * 7 + (index >> 12)) % 251));
const batchOne = [
  { offset: 0, data: pattern(256 * KiB, 1) },
  { offset: 768 * KiB, data: pattern(128 * KiB, 4) },
];
const batchTwo = [
  { offset: 8 * KiB, data: pattern(8 * KiB, 2) },
  { offset: 512 * KiB, data: pattern(256 * KiB, 3) },
];
/** The disk after the batches given. */
function diskAfter(...batches: { offset: number; data: Buffer }[][]): Buffer {
  const disk = Buffer.alloc(diskBytes);
  for (const batch of batches) for (const extent of batch) extent.data.copy(disk, extent.offset);
  return disk;
}

const cases = [
  { name: 'apply: a page-cache write through the thread pool', failpoints: 'direct-writes.open=error:EINVAL,replica.write=short@1' },
  { name: 'apply: a small page-cache write made inline', failpoints: 'direct-writes.open=error:EINVAL,replica.write=short@3' },
  { name: 'apply: a direct write', failpoints: 'replica.write=short@1' },
  { name: 'rollback of a failed batch', failpoints: 'apply.replica-written=error:EIO@2,rollback.write=short@1', failsBatchTwo: true },
  { name: 'materialise: the copy of the replica', failpoints: 'materialise.write=short@1' },
  { name: 'materialise: a before-image written back', failpoints: 'materialise.write=short@2' },
];

for (const { name, failpoints, failsBatchTwo } of cases) {
  t.test(`a short write in ${name}: every byte is written`, async (t) => {
    const dir = tempDir();
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const { mt, client, datastore } = await startMasterTarget(t, dir, { DRPLANE_FAILPOINTS: failpoints });
    const replicaPath = path.join(datastore, 'd0.img');
    await unary(client, client.createReplica, { diskId: 'd0', path: replicaPath, diskBytes, epoch: 1 });
    const send = async (sequence: number, extents: { offset: number; data: Buffer }[]) =>
      sendFrames(client, [{ diskId: 'd0', epoch: 1, sequence, extents: await Promise.all(extents.map((e) => makeExtent(e.offset, e.data, false))), last: true, recoveryPointKind: 'CRASH_CONSISTENT' }]);

    const first = await send(1, batchOne);
    t.error(first.error, 'batch 1 applies');
    t.ok(fs.readFileSync(replicaPath).equals(diskAfter(batchOne)), 'the replica holds batch 1 exactly');

    const second = await send(2, batchTwo);
    if (failsBatchTwo) {
      t.match(second.error?.details, /rolled back/, 'batch 2 fails and says it was rolled back');
      t.ok(fs.readFileSync(replicaPath).equals(diskAfter(batchOne)), 'the rollback restored every byte: the replica is at batch 1');
      const again = await send(2, batchTwo);
      t.error(again.error, 'batch 2 sent again applies');
    } else {
      t.error(second.error, 'batch 2 applies');
    }
    t.ok(fs.readFileSync(replicaPath).equals(diskAfter(batchOne, batchTwo)), 'the replica holds batches 1 and 2 exactly');

    for (const [sequence, expected] of [[1, diskAfter(batchOne)], [2, diskAfter(batchOne, batchTwo)]] as const) {
      const restored = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: `d0@${sequence}`, path: path.join(datastore, 'restore', `point-${sequence}.img`) });
      t.ok(fs.readFileSync(restored.path).equals(expected), `point d0@${sequence} materialises exactly`);
    }
    t.ok(mt.logs.some((line) => line.msg === 'failpoint short write'), 'the failpoint made a write short');
  });
}
