// Goal: a retention store written by an older release (replica records, points
// and batch records without the continuous-replication fields) reads with
// defaults, and its before-image bytes are counted once at start-up; the
// store's point lookups honour the pruner's floor.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { tempDir } from '../helpers/daemons';
import { retentionWindowDefaultMs } from '../../shared/limits';
import { RetentionStore, beforeImageDataBytes, encodeBeforeImage, withPointDefaults, type ReplicaRecord } from '../../daemons/master-target/retention-store';

t.test('records from an older store get defaults, and their before-image bytes are counted', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new RetentionStore(dir);
  t.teardown(() => store.close());
  // As the first release wrote them: no capture, window or byte count.
  const old = { diskId: 'd', path: path.join(dir, 'd.img'), diskBytes: 1 << 20, epoch: 1, appliedSequence: 2, syncId: 's', syncCursor: 1 << 20, syncComplete: true, recoveryPointCount: 1, latestRecoveryPointId: 'd@2', createdTimeMs: 1, hashIndexTrusted: true };
  await store.replicas.put('d', old as unknown as ReplicaRecord);
  const oldBatch = (extents: number) => ({ state: 'applied', extents: Array.from({ length: extents }, (_, i) => ({ offset: i * 4096, length: 4096 })), appliedTimeMs: 1 });
  await store.batches.put(['d', 1], oldBatch(1) as never);
  await store.batches.put(['d', 2], oldBatch(2) as never);
  await store.beforeImages.put(['d', 1, 0], encodeBeforeImage({ offset: 0, zero: true, length: 4096 }));
  await store.beforeImages.put(['d', 2, 0], encodeBeforeImage({ offset: 0, zero: false, data: Buffer.alloc(4096, 1) }));
  await store.beforeImages.put(['d', 2, 1], encodeBeforeImage({ offset: 4096, zero: false, data: Buffer.alloc(8192, 2) }));
  // Left half-applied by a crash: rolled back at start-up, so never counted.
  await store.batches.put(['d', 3], { ...oldBatch(1), state: 'applying' } as never);
  await store.beforeImages.put(['d', 3, 0], encodeBeforeImage({ offset: 0, zero: false, data: Buffer.alloc(4096, 3) }));
  await store.points.put(['d', 2], { id: 'd@2', diskId: 'd', sequence: 2, kind: 'CRASH_CONSISTENT', sourceTimeMs: 5, appliedTimeMs: 6, tag: '', syncId: 's' } as never);

  const read = store.replica('d')!;
  t.equal(read.captureId, '', 'no capture yet');
  t.equal(read.appliedChangeSequence, 0);
  t.equal(read.retentionWindowMs, retentionWindowDefaultMs, 'the default window');
  t.equal(read.epoch, 1, 'stored fields are kept');
  const point = withPointDefaults(store.points.get(['d', 2])!);
  t.equal(point.captureId, '');
  t.equal(point.changeSequence, 0);

  t.equal(await store.migrate(), 1, 'one replica counted');
  t.equal(store.replica('d')!.beforeImageBytes, 4096 + 8192, 'data before-images of applied batches counted, zero markers are 0');
  t.equal(store.batches.get(['d', 2])!.beforeImageBytes, 4096 + 8192, 'and each batch carries its own count');
  t.equal(store.batches.get(['d', 1])!.beforeImageBytes, 0);
  t.equal(store.batches.get(['d', 3])!.beforeImageBytes, 4096, 'a half-applied batch carries its count, not yet added to the replica');
  t.equal(await store.migrate(), 0, 'counted once');
});

t.test('read-modify-write inside transactions keeps concurrent updates', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new RetentionStore(dir);
  t.teardown(() => store.close());
  await store.replicas.put('d', { diskId: 'd', recoveryPointCount: 10, beforeImageBytes: 100 } as ReplicaRecord);
  // As apply and the pruner would, without a common lock.
  await Promise.all([
    store.root.transaction(() => store.updateReplica('d', (r) => ({ recoveryPointCount: r.recoveryPointCount + 1, beforeImageBytes: r.beforeImageBytes + 50 }))),
    store.root.transaction(() => store.updateReplica('d', (r) => ({ recoveryPointCount: r.recoveryPointCount - 3, beforeImageBytes: r.beforeImageBytes - 30 }))),
  ]);
  t.equal(store.replica('d')!.recoveryPointCount, 8);
  t.equal(store.replica('d')!.beforeImageBytes, 120);
});

t.test('oldest and newest points from a floor', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new RetentionStore(dir);
  t.teardown(() => store.close());
  for (const sequence of [3, 5, 9]) await store.points.put(['d', sequence], { id: `d@${sequence}`, sequence } as never);
  await store.points.put(['e', 1], { id: 'e@1', sequence: 1 } as never);
  t.equal(store.oldestPoint('d')?.id, 'd@3');
  t.equal(store.newestPoint('d')?.id, 'd@9');
  t.equal(store.oldestPoint('d', 4)?.id, 'd@5');
  t.equal(store.newestPoint('d', 9)?.id, 'd@9', 'a point exactly at the floor counts');
  t.equal(store.newestPoint('d', 10), undefined);
  t.equal(store.oldestPoint('c'), undefined, 'another disk');
  t.equal(beforeImageDataBytes(encodeBeforeImage({ offset: 0, zero: true, length: 1 << 20 })), 0);
  t.equal(beforeImageDataBytes(encodeBeforeImage({ offset: 8192, zero: false, data: Buffer.alloc(4096) })), 4096);
});
