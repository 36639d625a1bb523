// Goal: a master target killed with SIGKILL in the middle of a failover's
// durable steps restarts consistent and finishes the work:
// - RetireReplica killed after the retired mark, between the bounded
//   transactions that delete its keys (pruneKeysPerTransaction 3, so there are
//   many), or after its file is removed: start-up finishes the retirement
//   (no key of the disk left in the store, file gone), another disk is
//   untouched, and the disk can be created again at a newer epoch;
// - CreateReplica with a seed killed before or after the rename: the
//   replica refuses batches until an identical CreateReplica finishes the
//   copy, or a different one (an alternate location) replaces it;
// - MaterialiseRecoveryPoint with replace_existing killed before the rename:
//   the disk is still the old one; repeated, it is exactly the point.
// Kills come from named failpoints, and from a timer; every case prints its seed.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { status, type ServiceError } from '@grpc/grpc-js';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { makeExtent, masterTargetClient, sendFrames, unary } from '../helpers/clients';
import { randomBytes, seededRandom, sha256File } from '../helpers/disks';
import { RetentionStore } from '../../daemons/master-target/retention-store';
import type { BatchFrame } from '../../generated/drplane/v1/BatchFrame';

const diskBytes = 2 * 1024 * 1024;
const block = 4096;
const batchCount = 12;
const sha = (data: Buffer) => crypto.createHash('sha256').update(data).digest('hex');

async function plan(diskId: string, seed: number): Promise<{ frames: BatchFrame[]; states: string[] }> {
  const random = seededRandom(seed);
  const model = Buffer.alloc(diskBytes);
  const frames: BatchFrame[] = [];
  const states = [sha(model)];
  for (let sequence = 1; sequence <= batchCount; sequence++) {
    const extents = [];
    for (let n = 0; n < 2 + Math.floor(random() * 3); n++) {
      const blocks = 1 + Math.floor(random() * 16);
      const offset = Math.floor(random() * (diskBytes / block - blocks)) * block;
      const plain = randomBytes(blocks * block, random);
      plain.copy(model, offset);
      extents.push(await makeExtent(offset, plain));
    }
    frames.push({ diskId, epoch: 1, sequence, extents, last: true, recoveryPointKind: 'CRASH_CONSISTENT', sourceTimeMs: Date.now() });
    states.push(sha(model));
  }
  return { frames, states };
}

function start(dir: string, failpoints = ''): Promise<RunningDaemon> {
  const config = path.join(dir, 'mt.json');
  fs.writeFileSync(config, JSON.stringify({ datastoreRoots: [path.join(dir, 'ds')], pruneKeysPerTransaction: 3, pruneIntervalMs: 60_000 }));
  return startDaemon('master-target', { args: ['--config', config, '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt')], env: { DRPLANE_FAILPOINTS: failpoints } });
}

/** Runs `call` on a daemon that a failpoint (or the timer) kills meanwhile. */
async function killedDuring(t: Test, mt: RunningDaemon, call: Promise<unknown>, timedKillMs?: number): Promise<void> {
  const safety = setTimeout(() => void mt.kill(), timedKillMs ?? 20_000);
  const error = (await call.then(() => undefined, (e: ServiceError) => e)) as ServiceError | undefined;
  const exit = await mt.exited;
  clearTimeout(safety);
  t.equal(exit.signal, 'SIGKILL', `killed in the middle (the call: ${error ? error.code : 'finished first'})`);
  if (timedKillMs === undefined) t.ok(mt.logs.some((line) => line.msg === 'failpoint crash'), 'by the failpoint');
}

/** Keys of a disk in each database of the store (the daemon stopped). */
async function keysOf(dir: string, diskId: string): Promise<number> {
  const store = new RetentionStore(path.join(dir, 'mt', 'retention'));
  try {
    return store.diskKeyCount(diskId);
  } finally {
    await store.close();
  }
}

async function retireCase(t: Test, seed: number, failpoints: string, timedKillMs?: number): Promise<void> {
  t.comment(`seed ${seed} failpoints ${failpoints} timed kill ${timedKillMs ?? '(none)'}`);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const d0 = await plan('d0', seed);
  const d1 = await plan('d1', seed + 1);
  let mt = await start(dir, failpoints);
  let client = masterTargetClient(mt.address);
  const replicaPath = path.join(dir, 'ds', 'd0.img');
  await unary(client, client.createReplica, { diskId: 'd0', path: replicaPath, diskBytes, epoch: 1 });
  await unary(client, client.createReplica, { diskId: 'd1', path: path.join(dir, 'ds', 'd1.img'), diskBytes, epoch: 1 });
  t.error((await sendFrames(client, [...d0.frames, ...d1.frames])).error, 'both disks applied');
  const retire = unary(client, client.retireReplica, { diskId: 'd0', epoch: 2 });
  if (timedKillMs !== undefined) setTimeout(() => void mt.kill(), timedKillMs);
  await killedDuring(t, mt, retire, timedKillMs);
  client.close();

  mt = await start(dir);
  client = masterTargetClient(mt.address);
  const replica = await unary(client, client.getReplica, { diskId: 'd0' });
  if (replica.retired) {
    t.equal(Number(replica.epoch), 2, 'retired at its epoch');
    t.notOk(fs.existsSync(replicaPath), 'start-up finished the retirement: the file is gone');
    t.same((await unary(client, client.listRecoveryPoints, { diskId: 'd0' })).recoveryPoints, [], 'no point is listed');
  } else {
    // A timer may kill before the mark commits: then nothing was retired, and the replica is whole.
    t.equal(sha256File(replicaPath), d0.states[batchCount], 'not retired yet: the replica is whole');
  }
  const again = await unary(client, client.retireReplica, { diskId: 'd0', epoch: 2 });
  t.equal(again.retired, true, 'RetireReplica again answers it retired');
  const refused = await sendFrames(client, [{ ...d0.frames[0]!, sequence: batchCount + 1 }]);
  t.equal(refused.error?.code, status.FAILED_PRECONDITION, 'a batch of the old epoch is refused');
  // The other disk is untouched: each of its points materialises exactly.
  for (const point of (await unary(client, client.listRecoveryPoints, { diskId: 'd1' })).recoveryPoints) {
    const target = path.join(dir, 'ds', 'check', `d1-${point.sequence}.img`);
    await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: point.id, path: target });
    if (sha256File(target) !== d1.states[point.sequence]) t.fail(`point ${point.id} of the other disk does not materialise exactly`);
    fs.rmSync(target);
  }
  t.equal((await unary(client, client.listRecoveryPoints, { diskId: 'd1' })).recoveryPoints.length, batchCount, 'the other disk keeps every point');
  client.close();
  await mt.stop();
  t.equal(await keysOf(dir, 'd0'), 0, 'no key of the retired disk is left in the store');
  t.ok((await keysOf(dir, 'd1')) > batchCount, "the other disk's keys are all there");

  mt = await start(dir);
  t.teardown(() => mt.stop());
  client = masterTargetClient(mt.address);
  t.teardown(() => client.close());
  await unary(client, client.createReplica, { diskId: 'd0', path: replicaPath, diskBytes, epoch: 3 });
  t.error((await sendFrames(client, [{ ...d0.frames[0]!, epoch: 3 }])).error, 'created again at a newer epoch, it takes batch 1');
  t.same((await unary(client, client.listRecoveryPoints, { diskId: 'd0' })).recoveryPoints.map((point) => point.id), ['d0@1'], 'with only its new point');
  t.equal(sha256File(replicaPath), d0.states[1], 'and only its new data');
}

const baseSeed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100000);
// Each case has its own directory and daemon: they may run side by side.
t.jobs = 4;
['retire.marked=crash', 'retire.deleted-keys=crash@3', 'retire.file-removed=crash'].forEach((failpoints, index) => {
  t.test(`retirement killed at ${failpoints}`, (t) => retireCase(t, baseSeed + 10 * index, failpoints));
});
t.test('retirement killed by a timer', (t) => retireCase(t, baseSeed + 100, 'retire.deleted-keys=sleep:5', 5 + Math.floor(seededRandom(baseSeed)() * 100)));

for (const failpoint of ['seed.copied', 'seed.renamed']) {
  t.test(`seed copy killed at ${failpoint}`, async (t) => {
    const dir = tempDir();
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const original = path.join(dir, 'ds', 'vm1', 'disk0.img');
    fs.mkdirSync(path.dirname(original), { recursive: true });
    fs.writeFileSync(original, randomBytes(diskBytes, seededRandom(baseSeed)));
    const request = { diskId: 'd0', path: path.join(dir, 'ds', 'replicas', 'd0.img'), diskBytes, epoch: 2, seedPath: original };
    let mt = await start(dir, `${failpoint}=crash`);
    let client = masterTargetClient(mt.address);
    await killedDuring(t, mt, unary(client, client.createReplica, request));
    client.close();

    mt = await start(dir);
    t.teardown(() => mt.stop());
    client = masterTargetClient(mt.address);
    t.teardown(() => client.close());
    t.same(fs.readdirSync(path.dirname(request.path)).filter((name) => name.includes('drplane-seed')), [], 'start-up removed the temporary copy');
    const half = await unary(client, client.getReplica, { diskId: 'd0' });
    t.equal(half.seeded, false, 'the interrupted replica is not seeded yet');
    const frame = { diskId: 'd0', epoch: 2, sequence: 1, extents: [await makeExtent(0, Buffer.alloc(block, 1))], last: true };
    const sent = await sendFrames(client, [frame]);
    t.equal(sent.error?.code, status.FAILED_PRECONDITION, `batches wait for the copy: ${sent.error?.details}`);
    if (failpoint === 'seed.copied') {
      const done = await unary(client, client.createReplica, request);
      t.equal(done.seeded, true, 'an identical CreateReplica finishes it');
      t.equal(sha256File(request.path), sha256File(original), 'a whole copy of the original');
    } else {
      // Reprotect to an alternate location instead: the unfinished copy gives way.
      const alternate = path.join(dir, 'ds', 'alternate', 'd0.img');
      const done = await unary(client, client.createReplica, { diskId: 'd0', path: alternate, diskBytes, epoch: 2 });
      t.equal(done.seeded, false, 'a different CreateReplica replaces it');
      t.equal(done.path, alternate);
      t.notOk(fs.existsSync(request.path), "and removes the unfinished copy's file");
    }
    t.error((await sendFrames(client, [frame])).error, 'then batches apply');
  });
}

t.test('replace_existing killed before the rename leaves the old disk; repeated, it is the point', async (t) => {
  const seed = baseSeed + 200;
  t.comment(`seed ${seed}`);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { frames, states } = await plan('d0', seed);
  let mt = await start(dir, 'materialise.temporary-written=crash');
  let client = masterTargetClient(mt.address);
  await unary(client, client.createReplica, { diskId: 'd0', path: path.join(dir, 'ds', 'd0.img'), diskBytes, epoch: 1 });
  t.error((await sendFrames(client, frames)).error);
  const disk = path.join(dir, 'ds', 'recovered', 'd0.img');
  fs.mkdirSync(path.dirname(disk));
  fs.writeFileSync(disk, randomBytes(diskBytes, seededRandom(seed)));
  const old = sha256File(disk);
  await killedDuring(t, mt, unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@5', path: disk, replaceExisting: true }));
  client.close();
  t.equal(sha256File(disk), old, 'the disk is still the old one');

  mt = await start(dir);
  t.teardown(() => mt.stop());
  client = masterTargetClient(mt.address);
  t.teardown(() => client.close());
  await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@5', path: disk, replaceExisting: true });
  t.equal(sha256File(disk), states[5], 'repeated, the disk is exactly the point');
  t.same(fs.readdirSync(path.dirname(disk)), ['d0.img'], 'and the temporary file is gone');
});
