// Goal: with a tiny retention window while batches keep arriving, old points
// disappear, the newest always stays, the before-image bytes held stop growing
// (and fall to nothing once batches stop), and every point still listed
// materialises exactly; a materialisation that runs while the pruner wants its
// point (pinned) still materialises exactly.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { status } from '@grpc/grpc-js';
import { tempDir } from '../helpers/daemons';
import { makeExtent, sendFrames, startMasterTargetWithConfig, unary, type masterTargetClient } from '../helpers/clients';
import { randomBytes, seededRandom } from '../helpers/disks';

const diskBytes = 2 * 1024 * 1024;
const block = 4096;
/** The data area every batch overwrites (written whole by batch 1), so every later before-image holds data. */
const areaBytes = 512 * 1024;
const sha = (data: Buffer) => crypto.createHash('sha256').update(data).digest('hex');
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
type Client = ReturnType<typeof masterTargetClient>;

/** Polls until `check` holds (at most `limitMs`, a safety net, not a timing assertion). */
async function eventually<T>(what: string, probe: () => Promise<T>, check: (value: T) => boolean, limitMs = 30_000): Promise<T> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    const value = await probe();
    if (check(value)) return value;
    if (Date.now() > deadline) throw new Error(`${what}: still not so after ${limitMs} ms: ${JSON.stringify(value)}`);
    await sleep(50);
  }
}

/** Materialises every listed point; a point pruned between the listing and its turn must be gone from the list afterwards. */
async function checkListedPoints(t: Test, client: Client, dir: string, states: Map<number, string>, label: string): Promise<number> {
  const { recoveryPoints } = await unary(client, client.listRecoveryPoints, { diskId: 'd' });
  let exact = 0;
  for (const point of recoveryPoints) {
    const target = path.join(dir, 'ds', 'check', `${label}-${point.sequence}.img`);
    try {
      const result = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: point.id, path: target }, { timeoutMs: 60_000 });
      if (sha(fs.readFileSync(result.path)) !== states.get(point.sequence)) t.fail(`${label}: ${point.id} does not materialise exactly`);
      else exact++;
      fs.rmSync(result.path);
    } catch (error) {
      if ((error as { code?: number }).code !== status.NOT_FOUND) throw error;
      const after = await unary(client, client.listRecoveryPoints, { diskId: 'd' });
      t.notOk(after.recoveryPoints.some((p) => p.id === point.id), `${label}: ${point.id} was refused only because it was pruned meanwhile`);
    }
  }
  return exact;
}

t.test('a tiny window while batches keep arriving', async (t) => {
  const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100000);
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const windowMs = 2_000;
  const { client } = await startMasterTargetWithConfig(t, dir, { pruneIntervalMs: 100, pruneKeysPerTransaction: 16 });
  await unary(client, client.createReplica, { diskId: 'd', path: path.join(dir, 'ds', 'd.img'), diskBytes, epoch: 1, retentionWindowMs: windowMs });

  const model = Buffer.alloc(diskBytes);
  const states = new Map<number, string>();
  let sequence = 0;
  let imageBytesCreated = 0;
  const send = async (extents: { offset: number; data: Buffer }[]) => {
    sequence++;
    for (const extent of extents) extent.data.copy(model, extent.offset);
    const result = await sendFrames(client, [
      { diskId: 'd', epoch: 1, sequence, extents: await Promise.all(extents.map((e) => makeExtent(e.offset, e.data))), last: true, recoveryPointKind: 'CRASH_CONSISTENT', sourceTimeMs: Date.now(), captureId: 'c', changeSequence: sequence },
    ]);
    t.error(result.error, `batch ${sequence}`);
    states.set(sequence, sha(model));
  };
  await send([{ offset: 0, data: randomBytes(areaBytes, random) }]);

  const runMs = 4 * windowMs;
  const started = Date.now();
  const samples: { atMs: number; bytes: number }[] = [];
  let checkedAtMs = started;
  let exactDuringRun = 0;
  while (Date.now() - started < runMs) {
    const extents = [];
    for (let n = 0; n < 1 + Math.floor(random() * 3); n++) {
      const blocks = 1 + Math.floor(random() * 16);
      const offset = Math.floor(random() * (areaBytes / block - blocks)) * block;
      extents.push({ offset, data: randomBytes(blocks * block, random) });
      imageBytesCreated += blocks * block;
    }
    await send(extents);
    const replica = await unary(client, client.getReplica, { diskId: 'd' });
    samples.push({ atMs: Date.now() - started, bytes: replica.beforeImageBytes });
    t.equal(replica.latestRecoveryPointId, `d@${sequence}`, 'the newest point is always there');
    if (Date.now() - checkedAtMs > windowMs) {
      checkedAtMs = Date.now();
      exactDuringRun += await checkListedPoints(t, client, dir, states, `during-${sequence}`);
    }
    await sleep(50);
  }
  t.ok(exactDuringRun > 0, `${exactDuringRun} listed points materialised exactly while pruning ran`);

  const listed = await unary(client, client.listRecoveryPoints, { diskId: 'd' });
  t.ok(listed.recoveryPoints[0].sequence > 1, `old points disappeared (oldest now ${listed.recoveryPoints[0].id} of ${sequence})`);
  t.equal(listed.recoveryPoints.at(-1)?.sequence, sequence, 'the newest point stays');
  const gone = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd@1', path: path.join(dir, 'ds', 'gone.img') }).catch((e) => e);
  t.equal(gone.code, status.NOT_FOUND, 'a pruned point cannot be materialised');
  const lateMax = Math.max(...samples.filter((s) => s.atMs > runMs / 2).map((s) => s.bytes));
  t.ok(lateMax < imageBytesCreated * 0.75, `before-image bytes held stop growing: at most ${lateMax} in the second half, of ${imageBytesCreated} created`);

  // Batches stop: after the window only the newest point remains, and no batch after it, so no before-image.
  const settled = await eventually('only the newest point left', () => unary(client, client.getReplica, { diskId: 'd' }), (r) => r.recoveryPointCount === 1 && r.beforeImageBytes === 0);
  t.equal(settled.oldestRecoveryPointId, `d@${sequence}`, 'the one point left is the newest');
  t.equal(settled.latestRecoveryPointId, `d@${sequence}`);
  t.equal(await checkListedPoints(t, client, dir, states, 'settled'), 1, 'and it materialises exactly');
  const totals = await unary(client, client.getStatus, {});
  t.equal(totals.recoveryPointsPruned, sequence - 1, 'every point but the newest was pruned and counted');
  t.ok(totals.beforeImageBytesPruned >= imageBytesCreated, `before-image bytes pruned are counted (${totals.beforeImageBytesPruned})`);
  t.equal(totals.recoveryPointCount, 1);
});

t.test('a materialisation pins its point while the pruner runs', async (t) => {
  const random = seededRandom(5);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // The materialisation pauses after copying the replica, before it reads the before-images.
  const { client } = await startMasterTargetWithConfig(t, dir, { pruneIntervalMs: 20, pruneKeysPerTransaction: 2 }, { DRPLANE_FAILPOINTS: 'materialise.replica-copied=sleep:3000' });
  await unary(client, client.createReplica, { diskId: 'd', path: path.join(dir, 'ds', 'd.img'), diskBytes, epoch: 1, retentionWindowMs: 3_600_000 });
  const model = Buffer.alloc(diskBytes);
  const states = new Map<number, string>();
  for (let sequence = 1; sequence <= 6; sequence++) {
    const extents = [];
    for (let n = 0; n < 3; n++) {
      const offset = Math.floor(random() * (areaBytes / block - 8)) * block;
      const data = randomBytes(8 * block, random);
      data.copy(model, offset);
      extents.push(await makeExtent(offset, data));
    }
    // Ten minutes old: inside the hour, outside the second the window is about to become.
    t.error((await sendFrames(client, [{ diskId: 'd', epoch: 1, sequence, extents, last: true, recoveryPointKind: 'CRASH_CONSISTENT', sourceTimeMs: Date.now() - 600_000 }])).error);
    states.set(sequence, sha(model));
  }

  const target = path.join(dir, 'ds', 'pinned-3.img');
  const materialising = unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd@3', path: target }, { timeoutMs: 60_000 });
  // The target file exists once the point is pinned (the pin comes first).
  await eventually('the materialisation started', async () => fs.existsSync(target), (exists) => exists);
  await unary(client, client.configureReplica, { diskId: 'd', retentionWindowMs: 1_000 });
  // The points below the pinned one go; the pinned one and everything it needs stay.
  const during = await eventually(
    'points below the pin pruned',
    () => unary(client, client.listRecoveryPoints, { diskId: 'd' }),
    (list) => list.recoveryPoints[0]?.sequence === 3,
  );
  t.same(during.recoveryPoints.map((p) => p.sequence), [3, 4, 5, 6], 'while pinned, the pruner keeps the pinned point and the ones after it');
  const result = await materialising;
  t.equal(sha(fs.readFileSync(result.path)), states.get(3), 'the pinned point materialises exactly');
  t.equal(result.recoveryPoint?.id, 'd@3');

  const after = await eventually('unpinned points pruned', () => unary(client, client.listRecoveryPoints, { diskId: 'd' }), (list) => list.recoveryPoints.length === 1);
  t.equal(after.recoveryPoints[0].id, 'd@6', 'once unpinned, the point is pruned like any other; the newest stays');
  // Points go first, then the before-images of their batches (a moment later).
  const replica = await eventually('before-images pruned', () => unary(client, client.getReplica, { diskId: 'd' }), (r) => r.beforeImageBytes === 0);
  t.equal(replica.beforeImageBytes, 0, 'no batch after the newest point: no before-image held');
});
