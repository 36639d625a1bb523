// Goal: a retention store written by an older release (replica records, points
// and batch records without the continuous-replication fields) reads with
// defaults, and its before-image bytes are counted once at start-up; the
// store's point lookups honour the pruner's floor; each operation of the
// store (begin, commit, forget, prune, delete a disk's keys) changes its tables
// and the replica's counters together.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir } from '../helpers/daemons';
import { retentionWindowMsDefault } from '../../shared/limits';
import { open } from 'lmdb';
import { RetentionStore, beforeImageDataBytes, encodeBeforeImage, type ReplicaRecord } from '../../daemons/master-target/retention-store';

/** Writes records into a store's tables as an older release (or a test's setup) would, before the store opens. */
async function writeTables(dir: string, write: (tables: Record<'replicas' | 'batches' | 'beforeImages' | 'points', { put(key: unknown, value: unknown): Promise<boolean> }>) => Promise<void>): Promise<void> {
  const root = open({ path: path.join(dir, 'retention.lmdb'), maxDbs: 16, compression: false });
  try {
    await write({
      replicas: root.openDB({ name: 'replicas' }),
      batches: root.openDB({ name: 'batches' }),
      beforeImages: root.openDB({ name: 'before-images', encoding: 'binary' }),
      points: root.openDB({ name: 'recovery-points' }),
    });
  } finally {
    await root.close();
  }
}

t.test('records from an older store get defaults, and their before-image bytes are counted', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // As the first release wrote them: no capture, window or byte count.
  const old = { diskId: 'd', path: path.join(dir, 'd.img'), diskBytes: 1 << 20, epoch: 1, appliedSequence: 2, syncId: 's', syncCursor: 1 << 20, syncComplete: true, recoveryPointCount: 1, latestRecoveryPointId: 'd@2', createdTimeMs: 1, hashIndexTrusted: true };
  const oldBatch = (extents: number) => ({ state: 'applied', extents: Array.from({ length: extents }, (_, i) => ({ offset: i * 4096, length: 4096 })), appliedTimeMs: 1 });
  await writeTables(dir, async ({ replicas, batches, beforeImages, points }) => {
    await replicas.put('d', old);
    await batches.put(['d', 1], oldBatch(1));
    await batches.put(['d', 2], oldBatch(2));
    await beforeImages.put(['d', 1, 0], encodeBeforeImage({ offset: 0, zero: true, length: 4096 }));
    await beforeImages.put(['d', 2, 0], encodeBeforeImage({ offset: 0, zero: false, data: Buffer.alloc(4096, 1) }));
    await beforeImages.put(['d', 2, 1], encodeBeforeImage({ offset: 4096, zero: false, data: Buffer.alloc(8192, 2) }));
    // Left half-applied by a crash: rolled back at start-up, so never counted.
    await batches.put(['d', 3], { ...oldBatch(1), state: 'applying' });
    await beforeImages.put(['d', 3, 0], encodeBeforeImage({ offset: 0, zero: false, data: Buffer.alloc(4096, 3) }));
    await points.put(['d', 2], { id: 'd@2', diskId: 'd', sequence: 2, kind: 'CRASH_CONSISTENT', sourceTimeMs: 5, appliedTimeMs: 6, tag: '', syncId: 's' });
  });
  const store = new RetentionStore(dir);
  t.teardown(() => store.close());

  const read = store.replica('d')!;
  t.equal(read.captureId, '', 'no capture yet');
  t.equal(read.appliedChangeSequence, 0);
  t.equal(read.retentionWindowMs, retentionWindowMsDefault, 'the default window');
  t.equal(read.epoch, 1, 'stored fields are kept');
  const point = store.point('d', 2)!;
  t.equal(point.captureId, '');
  t.equal(point.changeSequence, 0);
  t.same([...store.unfinishedBatches()], [{ diskId: 'd', sequence: 3 }], 'the half-applied batch is found');

  t.equal(await store.migrate(), 1, 'one replica counted');
  t.equal(store.replica('d')!.beforeImageBytes, 4096 + 8192, 'data before-images of applied batches counted, zero markers are 0');
  t.equal(store.batch('d', 2)!.beforeImageBytes, 4096 + 8192, 'and each batch carries its own count');
  t.equal(store.batch('d', 1)!.beforeImageBytes, 0);
  t.equal(store.batch('d', 3)!.beforeImageBytes, 4096, 'a half-applied batch carries its count, not yet added to the replica');
  t.equal(await store.migrate(), 0, 'counted once');
});

t.test('read-modify-write in commits keeps concurrent updates', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new RetentionStore(dir);
  t.teardown(() => store.close());
  await store.putReplica({ diskId: 'd', recoveryPointCount: 10, beforeImageBytes: 100 } as ReplicaRecord);
  // As apply and the pruner would, without a common lock.
  await Promise.all([
    store.changeReplica('d', (r) => ({ recoveryPointCount: r.recoveryPointCount + 1, beforeImageBytes: r.beforeImageBytes + 50 })),
    store.changeReplica('d', (r) => ({ recoveryPointCount: r.recoveryPointCount - 3, beforeImageBytes: r.beforeImageBytes - 30 })),
  ]);
  t.equal(store.replica('d')!.recoveryPointCount, 8);
  t.equal(store.replica('d')!.beforeImageBytes, 120);
});

t.test('oldest and newest points from a floor', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  await writeTables(dir, async ({ points }) => {
    for (const sequence of [3, 5, 9]) await points.put(['d', sequence], { id: `d@${sequence}`, sequence });
    await points.put(['e', 1], { id: 'e@1', sequence: 1 });
  });
  const store = new RetentionStore(dir);
  t.teardown(() => store.close());
  t.equal(store.oldestPoint('d')?.id, 'd@3');
  t.equal(store.newestPoint('d')?.id, 'd@9');
  t.equal(store.oldestPoint('d', 4)?.id, 'd@5');
  t.equal(store.newestPoint('d', 9)?.id, 'd@9', 'a point exactly at the floor counts');
  t.equal(store.newestPoint('d', 10), undefined);
  t.equal(store.oldestPoint('c'), undefined, 'another disk');
  t.same([...store.pointsFrom('d', 4, 9)].map((point) => point.id), ['d@5'], 'a range from a floor, before a sequence');
  t.same([...store.pointsNewestFirst('d', 4)].map((point) => point.id), ['d@9', 'd@5'], 'newest first, down to the floor');
  t.equal(beforeImageDataBytes(encodeBeforeImage({ offset: 0, zero: true, length: 1 << 20 })), 0);
  t.equal(beforeImageDataBytes(encodeBeforeImage({ offset: 8192, zero: false, data: Buffer.alloc(4096) })), 4096);
});

t.test("a batch begun, committed with its point and hash pages, pruned; another begun and forgotten; a disk's keys deleted", async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new RetentionStore(dir);
  t.teardown(() => store.close());
  await store.putReplica({ diskId: 'd', recoveryPointCount: 0, beforeImageBytes: 0, appliedSequence: 0 } as ReplicaRecord);
  const header = { state: 'applying' as const, extents: [{ offset: 8192, length: 8192 }], appliedTimeMs: 0, beforeImageBytes: 8192 };
  await store.beginBatch('d', 1, header, [encodeBeforeImage({ offset: 8192, zero: false, data: Buffer.alloc(8192, 9) })]);
  t.same([...store.unfinishedBatches()], [{ diskId: 'd', sequence: 1 }], 'begun: applying');
  const hashes = Buffer.alloc(16);
  hashes.writeBigUInt64LE(11n, 0);
  hashes.writeBigUInt64LE(12n, 8);
  const point = { id: 'd@1', diskId: 'd', sequence: 1, kind: 'CRASH_CONSISTENT' as const, sourceTimeMs: 1, appliedTimeMs: 2, tag: '', syncId: '', captureId: '', changeSequence: 0 };
  await store.commitBatch('d', 1, { header, appliedTimeMs: 2, written: [{ offset: 8192, hashes }], replica: (r) => ({ appliedSequence: 1, recoveryPointCount: r.recoveryPointCount + 1, beforeImageBytes: r.beforeImageBytes + 8192 }), point });
  t.same([...store.unfinishedBatches()], [], 'committed: applied');
  t.equal(store.batch('d', 1)?.state, 'applied');
  t.same(store.point('d', 1), point);
  t.same([...store.readLeafRange('d', 0, 4)], [...Buffer.concat([Buffer.alloc(16), hashes])], 'the hash index holds the written blocks');
  t.ok(store.anyWritten('d', 8192, 4096) && !store.anyWritten('d', 0, 8192));
  t.match(store.replica('d'), { diskId: 'd', appliedSequence: 1, recoveryPointCount: 1, beforeImageBytes: 8192 }, 'the replica record changed in the same commit');

  await store.beginBatch('d', 2, { ...header, beforeImageBytes: 0 }, [encodeBeforeImage({ offset: 0, zero: true, length: 4096 })]);
  t.same([...store.batchBeforeImages('d', 2)], [{ offset: 0, zero: true, length: 4096 }]);
  await store.forgetBatch('d', 2);
  t.equal(store.batch('d', 2), undefined, 'forgotten with its images');
  t.same([...store.batchBeforeImages('d', 2)], []);

  t.same([...store.beforeImagesBetween('d', 0, 1)].map((image) => image.offset), [8192], "the images after point 0 through batch 1");
  t.equal(await store.prunePointsBelow('d', 2, 10), 1);
  t.equal(store.replica('d')!.recoveryPointCount, 0, 'the count follows');
  t.same(await store.pruneBatchesThrough('d', 1, 10), { batches: 1, images: 1, bytes: 8192 });
  t.equal(store.replica('d')!.beforeImageBytes, 0);
  t.same(await store.pruneBatchesThrough('d', 1, 10), { batches: 0, images: 0, bytes: 0 }, 'nothing left');

  t.equal(store.diskKeyCount('d'), 1, 'the hash page is left');
  t.equal(await store.deleteDiskKeys('d', 10), 1);
  t.equal(await store.deleteDiskKeys('d', 10), 0);
  t.equal(store.diskKeyCount('d'), 0);
  t.ok(store.replica('d'), 'the replica record stays (its epoch fences stale sources)');
});

t.test('the store maps its file once, however much it grows: a remap would keep the old mapping resident beside the new', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new RetentionStore(dir);
  t.teardown(() => store.close());
  const file = path.join(dir, 'retention.lmdb');
  const mappings = () => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((line) => line.endsWith(` ${file}`)).length;
  t.equal(mappings(), 1, 'one mapping when opened');
  // 96 MiB of before-images, written and read back: lmdb's own default map (and each remap) is smaller.
  const image = encodeBeforeImage({ offset: 0, zero: false, data: Buffer.alloc(1 << 20, 7) });
  const header = { state: 'applying' as const, extents: [{ offset: 0, length: 1 << 20 }], appliedTimeMs: 0, beforeImageBytes: 1 << 20 };
  for (let sequence = 1; sequence <= 96; sequence++) {
    await store.beginBatch('d', sequence, header, [image]);
    t.equal([...store.batchBeforeImages('d', sequence)].length, 1);
  }
  t.ok(fs.statSync(file).size > 96 * 2 ** 20, 'the file grew past 96 MiB');
  t.equal(mappings(), 1, 'still one mapping');
});
