// Goal: the master target's part of failover, commit, reprotect and test
// failover (docs/failover.md), on a real daemon with real files and LMDB:
// - RetireReplica removes the replica's points and file, keeps its epoch
//   (batches of it and older are refused, nothing written), no longer counts
//   it against disksMax, and lets the disk be created again at a newer epoch;
//   it is refused while a point of the disk is being materialised;
// - CreateReplica.seed_path starts a replica as a copy of a disk on this host,
//   whose hash tree is read from the disk (it equals the source's), and whose
//   before-images are real data (not zero markers);
// - MaterialiseRecoveryPoint.replace_existing writes a point exactly over an
//   existing disk, never over a replica;
// - DeleteDisk and StartMachine (with a hook, without, failing, timing out).
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { status, type ServiceError } from '@grpc/grpc-js';
import { tempDir } from '../helpers/daemons';
import { until } from '../helpers/wait';
import { makeExtent, sendFrames, startMasterTarget, startMasterTargetWithConfig, unary } from '../helpers/clients';
import { randomBytes, seededRandom, sha256File } from '../helpers/disks';
import { blockHashes, initHashing } from '../../shared/hashing';
import { HashTree } from '../../shared/hash-tree';
import type { BatchFrame } from '../../generated/drplane/v1/BatchFrame';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100000);
const diskBytes = 2 * 1024 * 1024;
const block = 4096;
const sha = (data: Buffer) => crypto.createHash('sha256').update(data).digest('hex');
const refusal = (promise: Promise<unknown>) => promise.then(() => undefined, (error: ServiceError) => error);

/** Random writes as batches, each a point, and the model disk after each (index = sequence). */
async function batches(diskId: string, epoch: number, count: number, random: () => number, model = Buffer.alloc(diskBytes)): Promise<{ frames: BatchFrame[]; states: Buffer[] }> {
  const frames: BatchFrame[] = [];
  const states = [Buffer.from(model)];
  for (let sequence = 1; sequence <= count; sequence++) {
    const extents = [];
    for (let n = 0; n < 3; n++) {
      const blocks = 1 + Math.floor(random() * 16);
      const offset = Math.floor(random() * (diskBytes / block - blocks)) * block;
      const plain = randomBytes(blocks * block, random);
      plain.copy(model, offset);
      extents.push(await makeExtent(offset, plain));
    }
    frames.push({ diskId, epoch, sequence, extents, last: true, recoveryPointKind: 'CRASH_CONSISTENT', sourceTimeMs: Date.now() });
    states.push(Buffer.from(model));
  }
  return { frames, states };
}

async function expectCode(t: Test, promise: Promise<unknown>, code: status, pattern: RegExp, what: string): Promise<ServiceError | undefined> {
  const error = await refusal(promise);
  t.equal(error?.code, code, `${what}: ${error?.details ?? 'not refused'}`);
  if (error) t.match(error.details, pattern, `${what}: the message says why`);
  return error;
}

t.test('retire: points and file gone, epoch kept, not counted, created again at a newer epoch', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { client, datastore } = await startMasterTargetWithConfig(t, dir, { disksMax: 2, name: 'mt7' });
  const replicaPath = path.join(datastore, 'vm1', 'd0.img');
  await unary(client, client.createReplica, { diskId: 'd0', path: replicaPath, diskBytes, epoch: 1 });
  await unary(client, client.createReplica, { diskId: 'd1', path: path.join(datastore, 'vm1', 'd1.img'), diskBytes, epoch: 1 });
  const { frames } = await batches('d0', 1, 5, random);
  t.error((await sendFrames(client, frames)).error, 'five batches applied');
  t.equal((await unary(client, client.listRecoveryPoints, { diskId: 'd0' })).recoveryPoints.length, 5);
  await expectCode(t, unary(client, client.createReplica, { diskId: 'd2', path: path.join(datastore, 'd2.img'), diskBytes, epoch: 1 }), status.RESOURCE_EXHAUSTED, /already serves 2 disks/, 'a third disk is over disksMax');

  await expectCode(t, unary(client, client.retireReplica, { diskId: 'd0', epoch: 0 }), status.INVALID_ARGUMENT, /epoch/, 'epoch 0');
  await expectCode(t, unary(client, client.retireReplica, { diskId: 'nope', epoch: 2 }), status.NOT_FOUND, /no replica for disk nope/, 'an unknown disk');
  await unary(client, client.setEpoch, { diskId: 'd0', epoch: 2 });
  await expectCode(t, unary(client, client.retireReplica, { diskId: 'd0', epoch: 1 }), status.FAILED_PRECONDITION, /epoch 1 is older than the epoch 2/, 'a stale epoch');
  t.ok(fs.existsSync(replicaPath), 'a refused retirement leaves the replica');

  const retired = await unary(client, client.retireReplica, { diskId: 'd0', epoch: 3 });
  t.equal(retired.retired, true, 'the answer is the retired record');
  t.equal(Number(retired.epoch), 3, 'at the retiring epoch');
  t.equal(retired.path, replicaPath, 'its path is kept');
  t.equal(retired.recoveryPointCount, 0);
  t.equal(retired.latestRecoveryPointId, '');
  t.notOk(fs.existsSync(replicaPath), 'the replica file is removed');
  t.same((await unary(client, client.listRecoveryPoints, { diskId: 'd0' })).recoveryPoints, [], 'no recovery point is listed');
  const again = await unary(client, client.retireReplica, { diskId: 'd0', epoch: 3 });
  t.same(again, retired, 'retiring again answers the same record (idempotent)');
  t.equal((await unary(client, client.getReplica, { diskId: 'd0' })).retired, true, 'GetReplica answers it retired');
  const listed = (await unary(client, client.listReplicas, {})).replicas.find((replica) => replica.diskId === 'd0');
  t.equal(listed?.retired, true, 'ListReplicas lists it retired');
  const statusAfter = await unary(client, client.getStatus, {});
  t.equal(statusAfter.replicaCount, 1, 'the status does not count it');
  t.equal(Number(statusAfter.recoveryPointCount), 0, 'nor its points');
  await expectCode(t, unary(client, client.retireReplica, { diskId: 'd0', epoch: 2 }), status.FAILED_PRECONDITION, /older than the epoch 3/, 'a retired replica refuses an older retirement');

  // A stale source (epoch 1) and even the retiring epoch: refused, nothing written.
  const late = (await batches('d0', 1, 1, random)).frames[0]!;
  for (const epoch of [1, 3]) {
    const sent = await sendFrames(client, [{ ...late, epoch }]);
    t.equal(sent.error?.code, status.FAILED_PRECONDITION, `a batch of epoch ${epoch} is refused: ${sent.error?.details}`);
    t.match(sent.error?.details ?? '', /retired on this master target at epoch 3/, 'naming the retirement and its epoch');
    t.equal(sent.acks.length, 0, 'and not acknowledged');
  }
  t.notOk(fs.existsSync(replicaPath), 'nothing was written');
  t.equal(Number((await unary(client, client.getReplica, { diskId: 'd0' })).appliedSequence), 0);
  await expectCode(t, unary(client, client.openHashTree, { diskId: 'd0' }), status.FAILED_PRECONDITION, /retired/, 'no hash tree of a retired replica');
  await expectCode(t, unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@5', path: path.join(datastore, 'x.img') }), status.FAILED_PRECONDITION, /retired/, 'no point of a retired replica');
  await expectCode(t, unary(client, client.configureReplica, { diskId: 'd0', retentionWindowMs: 60_000 }), status.FAILED_PRECONDITION, /retired/, 'no window for a retired replica');

  // A slot is free again: the disk limit does not count the retired replica.
  await unary(client, client.createReplica, { diskId: 'd2', path: path.join(datastore, 'd2.img'), diskBytes, epoch: 1 });
  t.equal((await unary(client, client.getStatus, {})).replicaCount, 2, 'd1 and d2 count');
  await unary(client, client.retireReplica, { diskId: 'd2', epoch: 1 });

  await expectCode(t, unary(client, client.createReplica, { diskId: 'd0', path: path.join(datastore, 'vm1-new', 'd0.img'), diskBytes, epoch: 3 }), status.FAILED_PRECONDITION, /retired on mt7 at epoch 3 .*newer epoch/, 'created again at the retired epoch');
  t.notOk(fs.existsSync(path.join(datastore, 'vm1-new')), 'the refusal wrote nothing');
  const fresh = await unary(client, client.createReplica, { diskId: 'd0', path: replicaPath, diskBytes, epoch: 4 });
  t.equal(fresh.retired, false, 'created again at a newer epoch');
  t.equal(Number(fresh.epoch), 4);
  t.equal(Number(fresh.appliedSequence), 0, 'from the start');
  const renewed = await batches('d0', 4, 2, random);
  t.error((await sendFrames(client, renewed.frames)).error, 'its batches start at sequence 1 again');
  t.same((await unary(client, client.listRecoveryPoints, { diskId: 'd0' })).recoveryPoints.map((point) => point.id), ['d0@1', 'd0@2'], 'only its new points');
  t.ok(fs.readFileSync(replicaPath).equals(renewed.states[2]!), 'the new replica holds only the new data');
  await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@1', path: path.join(datastore, 'check', 'd0-1.img') });
  t.ok(fs.readFileSync(path.join(datastore, 'check', 'd0-1.img')).equals(renewed.states[1]!), 'and its first point materialises exactly');
});

t.test('seeded replica: a copy of the disk, its hash tree read from the disk, real before-images', async (t) => {
  await initHashing();
  const random = seededRandom(seed + 1);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { client, datastore } = await startMasterTarget(t, dir);
  // The machine's disk at this site (where it failed over to earlier), with data and holes.
  const original = path.join(datastore, 'vm1', 'disk0.img');
  fs.mkdirSync(path.dirname(original), { recursive: true });
  const content = Buffer.alloc(diskBytes);
  randomBytes(diskBytes / 2, random).copy(content, 0);
  fs.writeFileSync(original, content);
  const replicaPath = path.join(datastore, 'replicas', 'd0.img');
  const request = { diskId: 'd0', path: replicaPath, diskBytes, epoch: 5, seedPath: original };

  await expectCode(t, unary(client, client.createReplica, { ...request, seedPath: path.join(datastore, 'vm1', 'gone.img') }), status.NOT_FOUND, /original disk .*gone\.img not found on mt1: reprotect to an alternate location/, 'a missing seed');
  await expectCode(t, unary(client, client.createReplica, { ...request, diskBytes: diskBytes * 2 }), status.INVALID_ARGUMENT, /has 2097152 bytes, the disk has 4194304/, 'a seed of another size');
  await expectCode(t, unary(client, client.createReplica, { ...request, seedPath: '/etc/hostname' }), status.PERMISSION_DENIED, /outside the datastore roots/, 'a seed outside the roots');
  await expectCode(t, unary(client, client.createReplica, { ...request, seedPath: path.join(datastore, 'vm1') }), status.INVALID_ARGUMENT, /not a regular file/, 'a directory as seed');
  await expectCode(t, unary(client, client.createReplica, { ...request, adoptExisting: true }), status.INVALID_ARGUMENT, /exclude each other/, 'seed and adopt together');
  await unary(client, client.createReplica, { diskId: 'other', path: path.join(datastore, 'other.img'), diskBytes, epoch: 1 });
  await expectCode(t, unary(client, client.createReplica, { ...request, seedPath: path.join(datastore, 'other.img') }), status.FAILED_PRECONDITION, /replica file of disk other/, "another replica's file as seed");
  t.notOk(fs.existsSync(path.dirname(replicaPath)), 'the refusals wrote nothing, not even a directory');
  await expectCode(t, unary(client, client.getReplica, { diskId: 'd0' }), status.NOT_FOUND, /no replica/, 'and recorded nothing');

  const created = await unary(client, client.createReplica, request);
  t.equal(created.seeded, true, 'the replica is seeded');
  t.equal(sha256File(replicaPath), sha256File(original), 'a copy of the original disk');
  t.equal(fs.statSync(replicaPath).mode & 0o777, 0o600, 'readable by the master target only');
  t.same(fs.readdirSync(path.dirname(replicaPath)), ['d0.img'], 'no temporary file is left');
  const repeated = await unary(client, client.createReplica, request);
  t.equal(Number(repeated.createdTimeMs), Number(created.createdTimeMs), 'an identical CreateReplica answers the same replica');
  t.equal((await unary(client, client.createReplica, { ...request, seedPath: '' })).seeded, true, 'created again without a seed, the seeded replica is answered as it is');

  // The index is not trusted: the tree is read from the disk, and equals the source's.
  const expected = new HashTree(blockHashes(content)).root;
  const first = await unary(client, client.openHashTree, { diskId: 'd0' });
  t.equal(Number(first.bytesRead), diskBytes, 'the first hash tree of a seeded replica reads the disk');
  t.ok(Buffer.from(first.rootHash).equals(expected), 'its root equals the source disk');
  const second = await unary(client, client.openHashTree, { diskId: 'd0' });
  t.equal(Number(second.bytesRead), 0, 'the index built from that read serves the next one');
  t.ok(Buffer.from(second.rootHash).equals(expected));
  const rescan = await unary(client, client.openHashTree, { diskId: 'd0', rescan: true });
  t.ok(Buffer.from(rescan.rootHash).equals(expected), 'and a rescan agrees');

  // A seeded replica written before any hash tree: its before-images hold the seed's data.
  const untrusted = path.join(datastore, 'replicas', 'd1.img');
  await unary(client, client.createReplica, { diskId: 'd1', path: untrusted, diskBytes, epoch: 1, seedPath: original });
  const elsewherePlain = randomBytes(8 * block, random);
  const elsewhere = await makeExtent(diskBytes - 8 * block, elsewherePlain);
  const overSeed = randomBytes(16 * block, random);
  const sent = await sendFrames(client, [
    { diskId: 'd1', epoch: 1, sequence: 1, extents: [elsewhere], last: true, recoveryPointKind: 'CRASH_CONSISTENT' },
    { diskId: 'd1', epoch: 1, sequence: 2, extents: [await makeExtent(0, overSeed)], last: true, recoveryPointKind: 'CRASH_CONSISTENT' },
  ]);
  t.error(sent.error);
  const atFirst = path.join(datastore, 'check', 'd1-1.img');
  await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd1@1', path: atFirst });
  const expectedFirst = Buffer.from(content);
  elsewherePlain.copy(expectedFirst, diskBytes - 8 * block);
  t.ok(fs.readFileSync(atFirst).equals(expectedFirst), 'the point before a write over seeded data materialises with the seed data');
});

t.test('replace_existing writes a point exactly over a disk, never over a replica', async (t) => {
  const random = seededRandom(seed + 2);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { client, datastore } = await startMasterTarget(t, dir);
  await unary(client, client.createReplica, { diskId: 'd0', path: path.join(datastore, 'd0.img'), diskBytes, epoch: 1 });
  const { frames, states } = await batches('d0', 1, 3, random);
  t.error((await sendFrames(client, frames)).error);

  const disk = path.join(datastore, 'recovered', 'd0.img');
  fs.mkdirSync(path.dirname(disk), { recursive: true });
  fs.writeFileSync(disk, randomBytes(3 * diskBytes, random), { mode: 0o640 });
  await expectCode(t, unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@2', path: disk }), status.ALREADY_EXISTS, /already exists/, 'without replace_existing an existing disk is refused as before');
  // A temporary file a crash left behind is simply written again.
  fs.writeFileSync(path.join(path.dirname(disk), '.d0.img.drplane-materialise'), 'left by a crash');
  const replaced = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@2', path: disk, replaceExisting: true });
  t.equal(replaced.path, disk);
  t.equal(sha256File(disk), sha(states[2]!), 'the disk is exactly point 2');
  t.equal(fs.statSync(disk).mode & 0o777, 0o640, "the disk keeps its file mode");
  t.same(fs.readdirSync(path.dirname(disk)), ['d0.img'], 'no temporary file is left');
  await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@1', path: disk, replaceExisting: true });
  t.equal(sha256File(disk), sha(states[1]!), 'changing the point replaces it again, exactly');
  const missing = path.join(datastore, 'recovered', 'new', 'd0.img');
  await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@3', path: missing, replaceExisting: true });
  t.equal(sha256File(missing), sha(states[3]!), 'a missing disk is created');

  await expectCode(t, unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@1', path: path.join(datastore, 'd0.img'), replaceExisting: true }), status.FAILED_PRECONDITION, /replica file of disk d0/, 'over a replica');
  t.equal(sha256File(path.join(datastore, 'd0.img')), sha(states[3]!), 'the replica is untouched');
  await expectCode(t, unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@1', path: path.join(datastore, 'recovered'), replaceExisting: true }), status.INVALID_ARGUMENT, /not a regular file/, 'over a directory');
  fs.symlinkSync(disk, path.join(datastore, 'link.img'));
  await expectCode(t, unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@1', path: path.join(datastore, 'link.img'), replaceExisting: true }), status.INVALID_ARGUMENT, /not a regular file/, 'over a symlink');
  await expectCode(t, unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@1', path: path.join(dir, 'outside.img'), replaceExisting: true }), status.PERMISSION_DENIED, /outside the datastore roots/, 'outside the roots');
  fs.symlinkSync(dir, path.join(datastore, 'escape'));
  await expectCode(t, unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@1', path: path.join(datastore, 'escape', 'new', 'x.img'), replaceExisting: true }), status.PERMISSION_DENIED, /outside the datastore roots/, 'through a link that leads outside');
  t.notOk(fs.existsSync(path.join(dir, 'new')), 'which created nothing there');
  await expectCode(t, unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@1', path: path.join(dir, 'mt', 'retention', 'data.mdb'), replaceExisting: true }), status.PERMISSION_DENIED, /outside the datastore roots/, "the master target's own store");
  t.equal(sha256File(disk), sha(states[1]!), 'refusals leave the disk as it was');
});

t.test('DeleteDisk removes only a plain disk file under a root', async (t) => {
  const random = seededRandom(seed + 3);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { client, datastore } = await startMasterTarget(t, dir);
  await unary(client, client.createReplica, { diskId: 'd0', path: path.join(datastore, 'd0.img'), diskBytes, epoch: 1 });
  t.error((await sendFrames(client, (await batches('d0', 1, 1, random)).frames)).error);
  const test = path.join(datastore, 'test-failover', 'd0.img');
  await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@1', path: test });

  await expectCode(t, unary(client, client.deleteDisk, { path: path.join(datastore, 'd0.img') }), status.FAILED_PRECONDITION, /replica file of disk d0.*RetireReplica/, "a replica's file");
  await expectCode(t, unary(client, client.deleteDisk, { path: path.join(datastore, 'test-failover') }), status.INVALID_ARGUMENT, /not a regular file/, 'a directory');
  await expectCode(t, unary(client, client.deleteDisk, { path: path.join(datastore, 'nothing.img') }), status.NOT_FOUND, /does not exist/, 'a missing file');
  await expectCode(t, unary(client, client.deleteDisk, { path: path.join(datastore, 'no-dir', 'nothing.img') }), status.NOT_FOUND, /does not exist/, 'a file in a missing directory');
  await expectCode(t, unary(client, client.deleteDisk, { path: path.join(dir, 'mt', 'retention', 'retention.lmdb') }), status.PERMISSION_DENIED, /outside the datastore roots/, 'outside the roots');
  await expectCode(t, unary(client, client.deleteDisk, { path: 'relative.img' }), status.INVALID_ARGUMENT, /not absolute/, 'a relative path');
  await expectCode(t, unary(client, client.deleteDisk, { path: `/${'x'.repeat(5000)}` }), status.INVALID_ARGUMENT, /longer than/, 'a path over the limit');
  t.ok(fs.existsSync(test) && fs.existsSync(path.join(datastore, 'd0.img')), 'refusals removed nothing');

  await unary(client, client.deleteDisk, { path: test });
  t.notOk(fs.existsSync(test), 'the test failover disk is gone');
  await expectCode(t, unary(client, client.deleteDisk, { path: test }), status.NOT_FOUND, /does not exist/, 'deleting it again');
  await unary(client, client.retireReplica, { diskId: 'd0', epoch: 1 });
  await expectCode(t, unary(client, client.deleteDisk, { path: path.join(datastore, 'd0.img') }), status.NOT_FOUND, /does not exist/, "a retired replica's file is gone already");
});

t.test("the master target's own data is never a disk, even under a datastore root", async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // As a site may be laid out: the root is the site's folder, the daemon's data inside it.
  const { client } = await startMasterTargetWithConfig(t, dir, { datastoreRoots: [dir] });
  const store = path.join(dir, 'mt', 'retention', 'retention.lmdb');
  t.ok(fs.existsSync(store), 'the store lies under the root');
  await expectCode(t, unary(client, client.deleteDisk, { path: store }), status.PERMISSION_DENIED, /inside the master target's own data/, 'DeleteDisk of the store');
  await expectCode(t, unary(client, client.createReplica, { diskId: 'd0', path: path.join(dir, 'mt', 'd0.img'), diskBytes, epoch: 1 }), status.PERMISSION_DENIED, /own data/, 'a replica in the data directory');
  await expectCode(t, unary(client, client.createReplica, { diskId: 'd0', path: path.join(dir, 'd0.img'), diskBytes, epoch: 1, seedPath: store }), status.PERMISSION_DENIED, /own data/, 'the store as a seed');
  await expectCode(t, unary(client, client.startMachine, { machine: 'vm1', diskPaths: [store], epoch: 1, recoveryPointIds: [] }), status.INVALID_ARGUMENT, /own data/, 'the store as a machine disk');
  t.ok(fs.existsSync(store), 'the store is untouched');
});

t.test('a materialisation pins its disk: no retirement, no deletion of its target meanwhile', async (t) => {
  const random = seededRandom(seed + 4);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { client, datastore } = await startMasterTarget(t, dir, { DRPLANE_FAILPOINTS: 'materialise.temporary-written=sleep:3000' });
  await unary(client, client.createReplica, { diskId: 'd0', path: path.join(datastore, 'd0.img'), diskBytes, epoch: 1 });
  const { frames, states } = await batches('d0', 1, 2, random);
  t.error((await sendFrames(client, frames)).error);
  const disk = path.join(datastore, 'recovered', 'd0.img');
  fs.mkdirSync(path.dirname(disk));
  fs.writeFileSync(disk, 'old');
  const running = unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@1', path: disk, replaceExisting: true });
  // The failpoint holds it after its temporary file is written, before the rename.
  await until('the temporary file', async () => fs.existsSync(path.join(path.dirname(disk), '.d0.img.drplane-materialise')), 10_000, 20);
  await expectCode(t, unary(client, client.retireReplica, { diskId: 'd0', epoch: 2 }), status.FAILED_PRECONDITION, /being materialised/, 'retiring while a point is materialised');
  await expectCode(t, unary(client, client.deleteDisk, { path: disk }), status.FAILED_PRECONDITION, /being materialised/, 'deleting the disk being materialised');
  await expectCode(t, unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@2', path: disk, replaceExisting: true }), status.FAILED_PRECONDITION, /being materialised by another call/, 'a second materialisation to the same disk');
  t.equal(fs.readFileSync(disk, 'utf8'), 'old', 'until the rename, the disk is the old one');
  await running;
  t.equal(sha256File(disk), sha(states[1]!), 'then the whole point');
  const retired = await unary(client, client.retireReplica, { diskId: 'd0', epoch: 2 });
  t.equal(retired.retired, true, 'once it has finished, the replica retires');
});

t.test('StartMachine runs the configured start hook', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const envFile = path.join(dir, 'env.txt');
  const hook = [
    'case "$DRPLANE_MACHINE" in',
    '  fail) echo "starting $DRPLANE_MACHINE"; echo "no such domain" >&2; exit 3;;',
    '  slow) sleep 5;;',
    "  loud) head -c 10000 /dev/zero | tr '\\0' a; echo; echo 'the last line'; exit 0;;",
    'esac',
    `printf '%s\\n' "$DRPLANE_MACHINE" "$DRPLANE_DISKS" "$DRPLANE_EPOCH" "$DRPLANE_POINTS" > ${envFile}`,
    'echo "started $DRPLANE_MACHINE"',
  ].join('\n');
  const { client, datastore } = await startMasterTargetWithConfig(t, dir, { startHook: hook, hookTimeoutMs: 400 });
  const disks = [path.join(datastore, 'vm1', 'recovered', 'd0.img'), path.join(datastore, 'vm1', 'recovered', 'd1.img')];
  const request = { machine: 'vm1', diskPaths: disks, epoch: 7, recoveryPointIds: ['vm1-disk0@12', 'vm1-disk1@13'] };

  const started = await unary(client, client.startMachine, request);
  t.equal(started.hookRan, true, 'the hook ran');
  t.equal(started.output, 'started vm1', 'its output is answered');
  t.same(fs.readFileSync(envFile, 'utf8').split('\n'), ['vm1', disks.join(' '), '7', 'vm1-disk0@12 vm1-disk1@13', ''], 'with the machine, disks, epoch and points in its environment');

  const loud = await unary(client, client.startMachine, { ...request, machine: 'loud' });
  t.ok(Buffer.byteLength(loud.output) <= 4096, `a long output is cut to its tail (${Buffer.byteLength(loud.output)} bytes)`);
  t.match(loud.output, /^\[\d+ earlier bytes of output cut\]\na+\nthe last line$/, 'which keeps the end and says what was cut');
  const failed = await expectCode(t, unary(client, client.startMachine, { ...request, machine: 'fail' }), status.FAILED_PRECONDITION, /start hook for machine fail failed \(exit 3\)/, 'a failing hook');
  t.match(failed?.details ?? '', /starting fail\s+no such domain/, 'quoting its output');
  const before = Date.now();
  await expectCode(t, unary(client, client.startMachine, { ...request, machine: 'slow' }), status.FAILED_PRECONDITION, /timed out after 400 ms/, 'a hook that takes too long');
  t.ok(Date.now() - before < 3_000, 'is killed at its timeout');

  await expectCode(t, unary(client, client.startMachine, { ...request, diskPaths: ['/etc/passwd'] }), status.INVALID_ARGUMENT, /outside the datastore roots/, 'a disk outside the roots');
  await expectCode(t, unary(client, client.startMachine, { ...request, diskPaths: [path.join(datastore, 'a b.img')] }), status.INVALID_ARGUMENT, /white space/, 'a disk path with a space');
  await expectCode(t, unary(client, client.startMachine, { ...request, machine: 'vm1; rm -rf /' }), status.INVALID_ARGUMENT, /letters, digits/, 'a machine name that is not a name');
  await expectCode(t, unary(client, client.startMachine, { ...request, recoveryPointIds: ['$(reboot)'] }), status.INVALID_ARGUMENT, /<disk_id>@<sequence>/, 'a point id that is not one');
  await expectCode(t, unary(client, client.startMachine, { ...request, diskPaths: Array.from({ length: 65 }, (_, i) => path.join(datastore, `${i}.img`)) }), status.INVALID_ARGUMENT, /at most 64/, 'too many disks');
});

t.test('StartMachine without a start hook', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { client, datastore } = await startMasterTarget(t, dir);
  const answer = await unary(client, client.startMachine, { machine: 'vm1', diskPaths: [path.join(datastore, 'd0.img')], epoch: 1, recoveryPointIds: [] });
  t.equal(answer.hookRan, false, 'hook_ran is false: the operator starts the machine');
  await expectCode(t, unary(client, client.startMachine, { machine: 'vm1', diskPaths: [path.join(dir, 'elsewhere.img')], epoch: 1, recoveryPointIds: [] }), status.INVALID_ARGUMENT, /outside the datastore roots/, 'paths are checked even so');
});
