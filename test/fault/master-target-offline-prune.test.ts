// Goal: a master target that cannot start because its retention volume is full
// (a 24 MiB tmpfs filled by batches; root only) starts again after
// `drctl prune-retention`, run offline: the points older than --keep-hours go
// (each disk keeps its newest), with the before-images only they needed, and
// the store is compacted so the space returns to the volume. The replica is
// untouched and its newest point materialises exactly. The command refuses to
// touch a store the running daemon has open. Prints its seed.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startDaemon, tempDir } from '../helpers/daemons';
import { makeExtent, sendFrames, startMasterTargetWithConfig, unary } from '../helpers/clients';
import { randomBytes, seededRandom, tmpfsVolume, whyNoTmpfs } from '../helpers/disks';
import { spawnDrctl } from '../helpers/stack';

const MiB = 1024 * 1024;
const diskBytes = 16 * MiB;
const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);

t.test('drctl prune-retention frees a full retention volume offline', { skip: whyNoTmpfs }, async (t) => {
  t.comment(`seed ${seed}`);
  const dir = tempDir();
  const volume = tmpfsVolume(t, dir, '24m');
  const elsewhere = path.join(dir, 'compact');
  fs.mkdirSync(elsewhere);
  const configPath = path.join(dir, 'mt.json');
  const first = await startMasterTargetWithConfig(t, dir, { retentionDir: volume, retentionFreeBytesMin: 0 });
  const replicaPath = path.join(first.datastore, 'd.img');
  await unary(first.client, first.client.createReplica, { diskId: 'd', path: replicaPath, diskBytes, epoch: 1 });
  const random = seededRandom(seed);
  const expected = Buffer.alloc(diskBytes);
  let applied = 0;
  for (let sequence = 1; sequence <= 64; sequence++) {
    const offset = ((sequence - 1) % 8) * MiB;
    const data = randomBytes(MiB, random);
    const result = await sendFrames(first.client, [{ diskId: 'd', epoch: 1, sequence, extents: [await makeExtent(offset, data, false)], last: true, recoveryPointKind: 'CRASH_CONSISTENT', sourceTimeMs: Date.now() }]);
    if (result.error) break;
    data.copy(expected, offset);
    applied = sequence;
  }
  t.ok(applied > 8 && applied < 64, `the volume filled after ${applied} batches`);
  const pointsBefore = (await unary(first.client, first.client.listRecoveryPoints, { diskId: 'd' })).recoveryPoints.length;

  const whileRunning = await spawnDrctl(['prune-retention', '--retention-dir', volume, '--keep-hours', '0'], { timeoutMs: 30_000 });
  t.equal(whileRunning.code, 1, 'refused while the master target runs');
  t.match(whileRunning.stderr, /is open in process \d+: stop the master target first/);
  await first.mt.stop();

  // Now it cannot start: the volume has less free space than it asks for.
  const args = ['--config', configPath, '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt')];
  fs.writeFileSync(configPath, JSON.stringify({ datastoreRoots: [first.datastore], retentionDir: volume, retentionFreeBytesMin: 8 * MiB }));
  const refused = await startDaemon('master-target', { args, expectExit: true });
  const { code } = await refused.exited;
  t.equal(code, 2, 'the master target does not start on the full volume');
  await new Promise((resolve) => setTimeout(resolve, 200));
  const said = [...refused.stderr, ...refused.logs.map((line) => JSON.stringify(line))].join('\n');
  t.match(said, /is full \(ENOSPC\): prune old recovery points offline \(drctl prune-retention/, `and names the way out: ${said}`);

  const replicaBefore = fs.readFileSync(replicaPath);
  const pruned = await spawnDrctl(['--json', 'prune-retention', '--retention-dir', volume, '--keep-hours', '0', '--compact-via', elsewhere], { timeoutMs: 60_000 });
  t.equal(pruned.code, 0, `prune-retention succeeds: ${pruned.stderr}`);
  const result = JSON.parse(pruned.stdout) as { pointsPruned: number; beforeImageBytesPruned: number; storeBytesBefore: number; storeBytesAfter: number };
  t.equal(result.pointsPruned, pointsBefore - 1, 'every point but the newest was pruned');
  t.ok(result.beforeImageBytesPruned >= (applied - 8) * MiB, `the before-images went (${result.beforeImageBytesPruned} bytes)`);
  t.ok(result.storeBytesAfter < result.storeBytesBefore / 4, `the store shrank (${result.storeBytesBefore} -> ${result.storeBytesAfter} bytes)`);
  t.same(fs.readdirSync(elsewhere), [], 'the compacted copy left nothing behind');
  t.ok(fs.readFileSync(replicaPath).equals(replicaBefore), 'the replica was not touched');

  const mt = await startDaemon('master-target', { args });
  t.teardown(() => mt.stop());
  const { masterTargetClient } = await import('../helpers/clients');
  const client = masterTargetClient(mt.address);
  t.teardown(() => client.close());
  const points = (await unary(client, client.listRecoveryPoints, { diskId: 'd' })).recoveryPoints;
  t.same(points.map((point) => Number(point.sequence)), [applied], 'the newest point is kept');
  const restored = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: `d@${applied}`, path: path.join(first.datastore, 'restore', 'latest.img') });
  t.ok(fs.readFileSync(restored.path).equals(expected), 'and materialises exactly');
  const data = randomBytes(MiB, random);
  const next = await sendFrames(client, [{ diskId: 'd', epoch: 1, sequence: applied + 1, extents: [await makeExtent(0, data, false)], last: true, recoveryPointKind: 'CRASH_CONSISTENT', sourceTimeMs: Date.now() }]);
  t.error(next.error, 'the next batch applies');
});

t.test('drctl prune-retention --data-dir prunes in place when the volume has room', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const first = await startMasterTargetWithConfig(t, dir, {});
  const replicaPath = path.join(first.datastore, 'd.img');
  await unary(first.client, first.client.createReplica, { diskId: 'd', path: replicaPath, diskBytes, epoch: 1 });
  const random = seededRandom(seed + 1);
  const expected = Buffer.alloc(diskBytes);
  for (let sequence = 1; sequence <= 12; sequence++) {
    const offset = ((sequence - 1) % 4) * MiB;
    const data = randomBytes(MiB, random);
    const result = await sendFrames(first.client, [{ diskId: 'd', epoch: 1, sequence, extents: [await makeExtent(offset, data, false)], last: true, recoveryPointKind: 'CRASH_CONSISTENT', sourceTimeMs: Date.now() }]);
    t.error(result.error);
    data.copy(expected, offset);
  }
  await first.mt.stop();
  // A day's window keeps everything just written; 0 keeps the newest point only.
  const kept = await spawnDrctl(['--json', 'prune-retention', '--data-dir', path.join(dir, 'mt'), '--keep-hours', '24'], { timeoutMs: 60_000 });
  t.equal(kept.code, 0, kept.stderr);
  t.equal((JSON.parse(kept.stdout) as { pointsPruned: number }).pointsPruned, 0, '--keep-hours 24 keeps the points of the last minute');
  const pruned = await spawnDrctl(['--json', 'prune-retention', '--data-dir', path.join(dir, 'mt'), '--keep-hours', '0'], { timeoutMs: 60_000 });
  t.equal(pruned.code, 0, pruned.stderr);
  t.equal((JSON.parse(pruned.stdout) as { pointsPruned: number }).pointsPruned, 11, 'all but the newest of 12 points pruned in place');
  t.same(fs.readdirSync(path.join(dir, 'mt', 'retention')).filter((name) => name.includes('.tmp')), [], 'no copy left beside the store');
  const mt = await startDaemon('master-target', { args: ['--config', path.join(dir, 'mt.json'), '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt')] });
  t.teardown(() => mt.stop());
  const { masterTargetClient } = await import('../helpers/clients');
  const client = masterTargetClient(mt.address);
  t.teardown(() => client.close());
  const restored = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd@12', path: path.join(first.datastore, 'restore', 'latest.img') });
  t.ok(fs.readFileSync(restored.path).equals(expected), 'the newest point materialises exactly');
});
