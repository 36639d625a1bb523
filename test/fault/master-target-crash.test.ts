// Goal: a master target killed with SIGKILL at any moment of applying batches
// restarts with the replica at a batch boundary, every listed recovery point
// materialises exactly, and the sender resumes from the acknowledged sequence.
// Kills come from named failpoints (each durable step of apply and rollback)
// and from timers; every case prints its seed.
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { makeExtent, masterTargetClient, sendFrames, unary } from '../helpers/clients';
import { randomBytes, seededRandom } from '../helpers/disks';
import type { BatchFrame } from '../../generated/drplane/v1/BatchFrame';

const diskBytes = 8 * 1024 * 1024;
const block = 4096;
const batchCount = 16;
const sha = (data: Buffer) => crypto.createHash('sha256').update(data).digest('hex');

/** Batches of random writes, and the disk's state after each (index = sequence). */
async function plan(seed: number): Promise<{ frames: BatchFrame[][]; states: string[] }> {
  const random = seededRandom(seed);
  const model = Buffer.alloc(diskBytes);
  const frames: BatchFrame[][] = [];
  const states = [sha(model)];
  for (let sequence = 1; sequence <= batchCount; sequence++) {
    const extents = [];
    for (let n = 0; n < 2 + Math.floor(random() * 6); n++) {
      const blocks = 1 + Math.floor(random() * 96);
      const offset = Math.floor(random() * (diskBytes / block - blocks)) * block;
      const plain = random() < 0.2 ? Buffer.alloc(blocks * block) : randomBytes(blocks * block, random);
      plain.copy(model, offset);
      extents.push(await makeExtent(offset, plain));
    }
    frames.push([{ diskId: 'd0', epoch: 1, sequence, extents, last: true, recoveryPointKind: sequence % 3 === 0 ? 'RECOVERY_POINT_KIND_UNSPECIFIED' : 'CRASH_CONSISTENT', tag: `s${sequence}` }]);
    states.push(sha(model));
  }
  return { frames, states };
}

async function checkConsistent(t: Test, mt: RunningDaemon, dir: string, states: string[], label: string): Promise<number> {
  const client = masterTargetClient(mt.address);
  try {
    const replica = await unary(client, client.getReplica, { diskId: 'd0' });
    const applied = replica.appliedSequence;
    t.equal(sha(fs.readFileSync(replica.path)), states[applied], `${label}: the replica is exactly the state after batch ${applied}`);
    const { recoveryPoints } = await unary(client, client.listRecoveryPoints, { diskId: 'd0' });
    t.ok(recoveryPoints.every((p) => p.sequence <= applied), `${label}: no point past the applied batch`);
    for (const point of recoveryPoints) {
      const target = path.join(dir, 'ds', 'check', `${label.replace(/\W+/g, '-')}-${point.sequence}.img`);
      const result = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: point.id, path: target }, { timeoutMs: 60_000 });
      if (sha(fs.readFileSync(result.path)) !== states[point.sequence]) t.fail(`${label}: point ${point.id} does not materialise exactly`);
      fs.rmSync(result.path);
    }
    t.pass(`${label}: ${recoveryPoints.length} listed points materialise exactly`);
    return applied;
  } finally {
    client.close();
  }
}

/** Sends batches from the replica's applied sequence + 1 (as the process server resumes) until all are applied. */
async function resumeAndFinish(t: Test, mt: RunningDaemon, frames: BatchFrame[][]): Promise<void> {
  const client = masterTargetClient(mt.address);
  try {
    const replica = await unary(client, client.getReplica, { diskId: 'd0' });
    const result = await sendFrames(client, frames.slice(replica.appliedSequence).flat());
    t.error(result.error, 'the resumed batches apply');
  } finally {
    client.close();
  }
}

async function startMasterTarget(dir: string, failpoints = ''): Promise<RunningDaemon> {
  return startDaemon('master-target', {
    args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt'), '--datastore-root', path.join(dir, 'ds')],
    env: { DRPLANE_FAILPOINTS: failpoints },
  });
}

async function runCase(t: Test, seed: number, failpoints: string, timedKillMs?: number): Promise<void> {
  t.comment(`seed ${seed} failpoints ${failpoints || '(none)'} timed kill ${timedKillMs ?? '(none)'}`);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { frames, states } = await plan(seed);
  let mt = await startMasterTarget(dir, failpoints);
  const setup = masterTargetClient(mt.address);
  await unary(setup, setup.createReplica, { diskId: 'd0', path: path.join(dir, 'ds', 'd0.img'), diskBytes, epoch: 1 });
  setup.close();
  const client = masterTargetClient(mt.address);
  const sending = sendFrames(client, frames.flat());
  if (timedKillMs !== undefined) setTimeout(() => void mt.kill(), timedKillMs);
  const exit = await Promise.race([mt.exited, sending.then(() => mt.kill())]);
  client.close();
  t.equal(exit.signal, 'SIGKILL', 'the master target was killed');
  const acked = (await sending).acks.map((a) => a.sequence);

  // A failpoint in the rollback itself kills the first restart too.
  mt = await startMasterTarget(dir, failpoints.startsWith('rollback') ? failpoints : '');
  if (failpoints.startsWith('rollback')) {
    const second = await mt.exited;
    if (second.signal === 'SIGKILL') t.pass('killed again in the middle of the rollback');
    mt = await startMasterTarget(dir);
  }
  t.teardown(() => mt.stop());
  if (/before-images-committed|replica-written=crash/.test(failpoints)) {
    await mt.waitForLog((line) => line.msg === 'rolled back a batch that a crash left half-applied', 5_000);
    t.pass('start-up rolled back the half-applied batch');
  }
  const applied = await checkConsistent(t, mt, dir, states, 'after restart');
  t.ok(applied >= Math.max(0, ...acked), `nothing acknowledged was lost (acked ${Math.max(0, ...acked)}, applied ${applied})`);
  await resumeAndFinish(t, mt, frames);
  const final = await checkConsistent(t, mt, dir, states, 'after resume');
  t.equal(final, batchCount, 'every batch applied');
}

const baseSeed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100000);
const failpointCases = [
  'apply.before-images-committed=crash@4',
  'apply.replica-written=crash@7',
  'apply.applied-committed=crash@5',
  'apply.replica-written=crash@2,rollback.replica-restored=crash@1',
];
failpointCases.forEach((failpoints, index) => {
  t.test(`killed at ${failpoints}`, (t) => runCase(t, baseSeed + index, failpoints));
});
for (let n = 0; n < 3; n++) {
  const seed = baseSeed + 100 + n;
  t.test(`killed by a timer (seed ${seed})`, (t) => runCase(t, seed, 'apply.replica-written=sleep:30', 40 + Math.floor(seededRandom(seed)() * 300)));
}
