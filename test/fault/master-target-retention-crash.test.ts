// Goal: a master target killed with SIGKILL while it prunes (between the
// transactions that remove points, or before-images and batch records)
// restarts with a consistent store: every listed point materialises exactly,
// the replica is at its applied batch, and pruning then finishes (only the
// newest point left, no before-image held). Kills come from the named
// failpoints retention.pruned-points and retention.pruned-batch, and from a
// timer; transactions are kept tiny (pruneKeysPerTransaction 3) so a kill lands
// inside a batch's images too. Every case prints its seed.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { makeExtent, masterTargetClient, sendFrames, unary } from '../helpers/clients';
import { randomBytes, seededRandom } from '../helpers/disks';
import type { BatchFrame } from '../../generated/drplane/v1/BatchFrame';

const diskBytes = 2 * 1024 * 1024;
const block = 4096;
const batchCount = 20;
const sha = (data: Buffer) => crypto.createHash('sha256').update(data).digest('hex');
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Batches of random writes, and the disk's state after each (index = sequence). The last batch is a point. */
async function plan(seed: number): Promise<{ frames: BatchFrame[][]; states: string[] }> {
  const random = seededRandom(seed);
  const model = Buffer.alloc(diskBytes);
  const frames: BatchFrame[][] = [];
  const states = [sha(model)];
  // Inside an hour-long window, outside the one-second window set later.
  const sourceTimeMs = Date.now() - 600_000;
  for (let sequence = 1; sequence <= batchCount; sequence++) {
    const extents = [];
    for (let n = 0; n < 2 + Math.floor(random() * 4); n++) {
      const blocks = 1 + Math.floor(random() * 32);
      const offset = Math.floor(random() * (diskBytes / block / 2 - blocks)) * block;
      const plain = randomBytes(blocks * block, random);
      plain.copy(model, offset);
      extents.push(await makeExtent(offset, plain));
    }
    const point = sequence === 1 || sequence === batchCount || random() < 0.7;
    frames.push([{ diskId: 'd0', epoch: 1, sequence, extents, last: true, recoveryPointKind: point ? 'CRASH_CONSISTENT' : 'RECOVERY_POINT_KIND_UNSPECIFIED', sourceTimeMs, captureId: 'c1', changeSequence: sequence * 10 }]);
    states.push(sha(model));
  }
  return { frames, states };
}

function start(dir: string, pruneIntervalMs: number, failpoints = ''): Promise<RunningDaemon> {
  const config = path.join(dir, `mt-${pruneIntervalMs}.json`);
  // One hash thread: this file starts 15 master targets, and each hash thread costs start-up CPU (the pruner runs on the main thread).
  fs.writeFileSync(config, JSON.stringify({ datastoreRoots: [path.join(dir, 'ds')], pruneIntervalMs, pruneKeysPerTransaction: 3, hashThreads: 1 }));
  return startDaemon('master-target', { args: ['--config', config, '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt')], env: { DRPLANE_FAILPOINTS: failpoints } });
}

/** With the pruner idle (a long interval), every listed point must materialise exactly. */
async function checkConsistent(t: Test, mt: RunningDaemon, dir: string, states: string[], label: string): Promise<{ points: number[]; beforeImageBytes: number }> {
  const client = masterTargetClient(mt.address);
  try {
    const replica = await unary(client, client.getReplica, { diskId: 'd0' });
    t.equal(sha(fs.readFileSync(replica.path)), states[replica.appliedSequence], `${label}: the replica is exactly the state after batch ${replica.appliedSequence}`);
    const { recoveryPoints } = await unary(client, client.listRecoveryPoints, { diskId: 'd0' });
    t.equal(replica.recoveryPointCount, recoveryPoints.length, `${label}: the point count matches the points listed`);
    t.equal(recoveryPoints.at(-1)?.sequence, batchCount, `${label}: the newest point is kept`);
    for (const point of recoveryPoints) {
      const target = path.join(dir, 'ds', 'check', `${label.replace(/\W+/g, '-')}-${point.sequence}.img`);
      const result = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: point.id, path: target }, { timeoutMs: 60_000 });
      if (sha(fs.readFileSync(result.path)) !== states[point.sequence]) t.fail(`${label}: point ${point.id} does not materialise exactly`);
      fs.rmSync(result.path);
    }
    t.pass(`${label}: ${recoveryPoints.length} listed points materialise exactly`);
    return { points: recoveryPoints.map((p) => p.sequence), beforeImageBytes: replica.beforeImageBytes };
  } finally {
    client.close();
  }
}

async function runCase(t: Test, seed: number, failpoints: string, timedKillMs?: number): Promise<void> {
  t.comment(`seed ${seed} failpoints ${failpoints} timed kill ${timedKillMs ?? '(none)'}`);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { frames, states } = await plan(seed);

  let mt = await start(dir, 20, failpoints);
  const client = masterTargetClient(mt.address);
  await unary(client, client.createReplica, { diskId: 'd0', path: path.join(dir, 'ds', 'd0.img'), diskBytes, epoch: 1, retentionWindowMs: 3_600_000 });
  const sent = await sendFrames(client, frames.flat());
  t.error(sent.error, 'every batch applied');
  // Every point but the newest is now outside the window: the pruner removes them, and is killed doing so.
  await unary(client, client.configureReplica, { diskId: 'd0', retentionWindowMs: 1_000 });
  client.close();
  if (timedKillMs !== undefined) {
    await sleep(timedKillMs);
    await mt.kill();
  } else {
    // A safety net: a failpoint that is never reached must fail the case, not hang it.
    const safety = setTimeout(() => void mt.kill(), 30_000);
    await mt.exited;
    clearTimeout(safety);
    t.ok(mt.logs.some((line) => line.msg === 'failpoint crash'), 'the failpoint killed it');
  }
  const exit = await mt.exited;
  // A failpoint kills inside the pruner; the timer lands at a random moment after the window shrank (the
  // pruner may not have begun, or may be between transactions): what the store holds after either is checked below.
  t.equal(exit.signal, 'SIGKILL', timedKillMs === undefined ? 'killed while pruning' : `killed ${timedKillMs} ms after the window shrank`);

  // Restarted with the pruner idle, the store is checked as the crash left it.
  mt = await start(dir, 60_000);
  const afterCrash = await checkConsistent(t, mt, dir, states, 'after the kill');
  await mt.stop();

  // Restarted with the pruner running, pruning finishes.
  mt = await start(dir, 20);
  t.teardown(() => mt.stop());
  const check = masterTargetClient(mt.address);
  t.teardown(() => check.close());
  const deadline = Date.now() + 30_000;
  let replica = await unary(check, check.getReplica, { diskId: 'd0' });
  while ((replica.recoveryPointCount !== 1 || replica.beforeImageBytes !== 0) && Date.now() < deadline) {
    await sleep(50);
    replica = await unary(check, check.getReplica, { diskId: 'd0' });
  }
  t.equal(replica.recoveryPointCount, 1, `pruning finished after the restart (${afterCrash.points.length} points were left by the kill)`);
  t.equal(replica.beforeImageBytes, 0, `no before-image held (${afterCrash.beforeImageBytes} bytes were left by the kill)`);
  const done = await checkConsistent(t, mt, dir, states, 'pruning finished');
  t.same(done.points, [batchCount], 'only the newest point is left');
}

const baseSeed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100000);
const failpointCases = ['retention.pruned-points=crash@2', 'retention.pruned-batch=crash@3', 'retention.pruned-batch=crash@12'];
failpointCases.forEach((failpoints, index) => {
  t.test(`killed at ${failpoints}`, (t) => runCase(t, baseSeed + index, failpoints));
});
for (let n = 0; n < 2; n++) {
  const seed = baseSeed + 100 + n;
  t.test(`killed by a timer while pruning (seed ${seed})`, (t) => runCase(t, seed, 'retention.pruned-batch=sleep:15,retention.pruned-points=sleep:15', 20 + Math.floor(seededRandom(seed)() * 250)));
}
