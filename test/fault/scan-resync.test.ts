// Goal: a scan-mode session that must resync (the agent restarts, so its
// capture id changes; the operator asks for a resync) while a writer keeps
// changing the source, including a block written back to an earlier value
// (v1 -> v2 -> v1), never makes a point that differs from the source. Scan
// records are samples: a sync under the capture followed by a replay of older
// records would regress blocks no later record fixes, and the first quiet pass
// would then close a point that lies. Every point whose source time is after
// the writer stopped must materialise exactly to the source. Prints its seed.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { masterTargetClient, processServerClient, unary } from '../helpers/clients';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { createImage, sha256File } from '../helpers/disks';
import { freePort, until } from '../helpers/wait';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 16 * MiB;
const diskId = 'vm6-disk0';

let last: () => Promise<unknown> = async () => undefined;

// Writes behind the agent's back, in the first 2 MiB: blocks 0-63 each go v1 -> v2 -> v1 (block b flips every b+1 rounds,
// so they stop at diverse values), the others get random data or zeros.
const writerScript = `
const fs = require('node:fs');
const crypto = require('node:crypto');
const [file, seedText] = process.argv.slice(1);
const blockBytes = 4096, blocks = 512, abaBlocks = 64;
const v1 = Buffer.alloc(blockBytes, 0x11), v2 = Buffer.alloc(blockBytes, 0x22), zero = Buffer.alloc(blockBytes);
const fd = fs.openSync(file, 'r+');
const pause = new Int32Array(new SharedArrayBuffer(4));
let state = Number(seedText) >>> 0;
const next = () => (state = (Math.imul(state, 1664525) + 1013904223) >>> 0);
for (let round = 0; ; round++) {
  for (let block = 0; block < abaBlocks; block++) fs.writeSync(fd, Math.floor(round / (block + 1)) % 2 ? v2 : v1, 0, blockBytes, block * blockBytes);
  const block = next() % blocks;
  if (block >= abaBlocks) fs.writeSync(fd, next() % 4 === 0 ? zero : crypto.randomBytes(blockBytes), 0, blockBytes, block * blockBytes);
  Atomics.wait(pause, 0, 0, 2);
}
`;

t.test('scan capture resyncs under a writer: every point after the writer stops is the source', async (t) => {
  t.comment(`seed ${seed}`);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const source = path.join(dir, 'source.img');
  createImage(source, diskBytes, seed, MiB);
  const datastore = path.join(dir, 'ds');
  const replicaPath = path.join(datastore, `${diskId}.img`);
  const agentAddress = await freePort();
  const startAgent = () => startDaemon('agent', { args: ['--name', 'agent1', '--listen', agentAddress, '--data-dir', path.join(dir, 'agent'), '--disk', source] });
  let agent: RunningDaemon = await startAgent();
  const [masterTarget, processServer] = await Promise.all([
    startDaemon('master-target', { args: ['--name', 'mt1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt'), '--datastore-root', datastore] }),
    startDaemon('process-server', { args: ['--name', 'ps1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'ps'), '--cache-bytes-max', String(64 * MiB)] }),
  ]);
  const ps = processServerClient(processServer.address);
  const mt = masterTargetClient(masterTarget.address);
  const writer = spawn(process.execPath, ['-e', writerScript, source, String(seed)], { stdio: 'ignore' });
  const writerExited = new Promise((resolve) => writer.once('exit', resolve));
  t.teardown(async () => {
    writer.kill('SIGKILL');
    await writerExited;
    ps.close();
    mt.close();
    await Promise.all([agent.stop(), masterTarget.stop(), processServer.stop()]);
  });
  await unary(mt, mt.createReplica, { diskId, path: replicaPath, diskBytes, epoch: 1 });
  await unary(ps, ps.startReplication, { diskId, epoch: 1, agentAddress, sourcePath: source, masterTargetAddress: masterTarget.address, captureMode: 'CAPTURE_SCAN', scanIntervalMs: 200, crashConsistentIntervalMs: 1_000 });
  const status = () => unary(ps, ps.getReplication, { diskId });
  last = status;

  // Under the writer: the agent restarts twice (new capture ids) and the operator asks for a resync.
  await until('records from the first capture', async () => (await status()).receivedSequence > 0 && true);
  for (let restart = 1; restart <= 2; restart++) {
    await new Promise((resolve) => setTimeout(resolve, 700));
    await agent.stop();
    agent = await startAgent();
    t.comment(`agent restarted (${restart})`);
    await until(`resync ${restart} after the agent restarted`, async () => (await status()).resyncs >= restart && true);
  }
  await new Promise((resolve) => setTimeout(resolve, 700));
  await unary(ps, ps.resyncReplication, { diskId, full: false });
  await until('the operator resync', async () => (await status()).resyncs >= 3 && true);
  // Stopping while the resync's first reads are recent is when a sync under the capture went wrong.
  await new Promise((resolve) => setTimeout(resolve, 150));

  t.comment('stopping the writer');
  // SIGKILL: a signal the test runner ignores is ignored by its children too.
  writer.kill('SIGKILL');
  await writerExited;
  const writerStoppedMs = Date.now();
  const expected = sha256File(source);
  await until('a point after the writer stopped', async () => {
    const current = await status();
    return current.state === 'REPLICATION_REPLICATING' && current.latestRecoveryPointTimeMs > writerStoppedMs && current;
  });
  t.comment('a point after the writer stopped');
  // Give the later quiet passes time to make more points, then check every one made after the writer stopped.
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  const { recoveryPoints } = await unary(mt, mt.listRecoveryPoints, { diskId });
  const after = recoveryPoints.filter((point) => point.sourceTimeMs > writerStoppedMs);
  t.ok(after.length >= 1, `${after.length} points after the writer stopped`);
  for (const point of after) {
    const materialised = await unary(mt, mt.materialiseRecoveryPoint, { recoveryPointId: point.id, path: path.join(datastore, 'restore', `${point.sequence}.img`) });
    t.equal(sha256File(materialised.path), expected, `point ${point.id} (${point.kind}) is the source`);
    fs.rmSync(materialised.path);
  }
});
