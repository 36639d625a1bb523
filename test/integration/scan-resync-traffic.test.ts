// Goal: a scan-mode resync after an agent restart carries only what changed
// on both hops. The process server gives the agent the replica's block hashes
// (PutScanBaseline) and the new capture's first pass ships only the blocks
// whose hash differs (SCAN_BASELINE_REPLICA): with 1 % of the blocks changed
// while the agent was down, the agent -> process server hop (the process
// server's received bytes) and the process server -> master target hop
// (bytes_sent) each carry at most 1.3x the changed bytes, and the point the
// resync ends at equals the source. An agent that refuses the hashes (an
// older one, a failpoint here) ships the whole disk to the process server,
// whose own first-pass filter still keeps the second hop small. Prints its seed.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { agentClient, masterTargetClient, processServerClient, unary } from '../helpers/clients';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { changeBlocks, createImage, sha256File } from '../helpers/disks';
import { freePort, until } from '../helpers/wait';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 32 * MiB;
const diskId = 'vm7-disk0';

/** The process server's received_bytes_total for the disk, from its Prometheus endpoint. */
function receivedBytes(metricsAddress: string): Promise<number> {
  return new Promise((resolve, reject) => {
    http.get(`http://${metricsAddress}/metrics`, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => {
        const line = body.split('\n').find((text) => text.startsWith('drplane_replication_received_bytes_total{') && text.includes(`disk_id="${diskId}"`));
        resolve(line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0);
      });
    }).on('error', reject);
  });
}

/**
 * An agent that takes the replica's hashes filters the first pass itself: both hops carry the changed blocks only.
 * One that refuses them (an older agent; here a failpoint) leaves the filtering to the process server: the agent
 * ships every block of the disk, and only the process server -> master target hop stays small.
 */
const agentKinds = [
  { kind: 'takes the baseline', env: undefined, atAgent: true },
  { kind: 'refuses the baseline (an older agent)', env: { DRPLANE_FAILPOINTS: 'agent.put-scan-baseline=error:EOPNOTSUPP' }, atAgent: false },
];

for (const { kind, env, atAgent } of agentKinds) t.test(`a scan resync after an agent restart ships only the changed blocks (agent ${kind})`, async (t) => {
  t.comment(`seed ${seed}`);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const source = path.join(dir, 'source.img');
  createImage(source, diskBytes, seed, MiB);
  const datastore = path.join(dir, 'ds');
  const agentListen = await freePort();
  const startAgent = (agentEnv?: NodeJS.ProcessEnv) => startDaemon('agent', { args: ['--name', 'agent1', '--listen', agentListen, '--data-dir', path.join(dir, 'agent'), '--disk', source], env: agentEnv });
  let agent: RunningDaemon = await startAgent();
  const [masterTarget, processServer] = await Promise.all([
    startDaemon('master-target', { args: ['--name', 'mt1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt'), '--datastore-root', datastore] }),
    startDaemon('process-server', { args: ['--name', 'ps1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'ps'), '--metrics-listen', '127.0.0.1:0'] }),
  ]);
  const metricsAddress = String(processServer.logs.find((line) => line.msg === 'listening')?.metricsAddress ?? '');
  t.match(metricsAddress, /^127\.0\.0\.1:\d+$/, 'the process server serves metrics');
  const ps = processServerClient(processServer.address);
  const mt = masterTargetClient(masterTarget.address);
  t.teardown(async () => {
    ps.close();
    mt.close();
    await Promise.all([agent.stop(), masterTarget.stop(), processServer.stop()]);
  });
  await unary(mt, mt.createReplica, { diskId, path: path.join(datastore, `${diskId}.img`), diskBytes, epoch: 1 });
  await unary(ps, ps.startReplication, { diskId, epoch: 1, agentAddress: agent.address, sourcePath: source, masterTargetAddress: masterTarget.address, captureMode: 'CAPTURE_SCAN', scanIntervalMs: 300, crashConsistentIntervalMs: 1_000 });
  const status = () => unary(ps, ps.getReplication, { diskId });
  await until('the first point', async () => {
    const current = await status();
    return current.state === 'REPLICATION_REPLICATING' && current.latestRecoveryPointId !== '' && current;
  }, 60_000);
  await unary(ps, ps.flushReplication, { diskId, timeoutMs: 30_000 });

  await agent.stop();
  const changedBytes = changeBlocks(source, 0.01, seed + 1);
  const expected = sha256File(source);
  const before = await status();
  const receivedBefore = await receivedBytes(metricsAddress);
  agent = await startAgent(env);

  // The agent came back without its capture: the session starts a new one, whose first pass is the resync.
  const after = await until('a point of the new capture', async () => {
    const current = await status();
    return current.captureId !== before.captureId && current.state === 'REPLICATION_REPLICATING' && current.latestRecoveryPointId !== before.latestRecoveryPointId && current;
  }, 60_000);
  t.ok(after.resyncs > before.resyncs, `the session resynced (${after.resyncs} resyncs)`);
  if (atAgent) t.ok(processServer.logs.some((line) => line.atAgent === true), "the agent took the replica's hashes (SCAN_BASELINE_REPLICA)");
  else t.ok(processServer.logs.some((line) => line.atAgent === false), 'the agent refused the hashes: the process server filters the first pass');
  const flushed = await unary(ps, ps.flushReplication, { diskId, timeoutMs: 30_000 });
  const materialised = await unary(mt, mt.materialiseRecoveryPoint, { recoveryPointId: flushed.recoveryPoint!.id, path: path.join(datastore, 'restore', 'after.img') });
  t.equal(sha256File(materialised.path), expected, 'the point after the resync equals the source');

  const hop1 = (await receivedBytes(metricsAddress)) - receivedBefore;
  const hop2 = flushed.status!.bytesSent - before.bytesSent;
  t.comment(`changed ${changedBytes} bytes; agent -> process server ${hop1}; process server -> master target ${hop2}`);
  if (atAgent) t.ok(hop1 > 0 && hop1 <= 1.3 * changedBytes, `agent -> process server: ${hop1} bytes for ${changedBytes} changed (at most 1.3x)`);
  // createImage writes data in every other MiB: the first pass of an agent without a baseline ships that half.
  else t.ok(hop1 >= diskBytes / 2, `agent -> process server: ${hop1} bytes, the disk's data (the agent filters nothing)`);
  t.ok(hop2 > 0 && hop2 <= 1.3 * changedBytes, `process server -> master target: ${hop2} bytes for ${changedBytes} changed (at most 1.3x)`);
});

t.test('PutScanBaseline takes exactly the hashes of the disk; StartCapture with SCAN_BASELINE_REPLICA needs them', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const source = path.join(dir, 'source.img');
  createImage(source, 4 * MiB, seed, MiB);
  const agent = await startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'agent'), '--disk', source] });
  const client = agentClient(agent.address);
  t.teardown(async () => {
    client.close();
    await agent.stop();
  });
  const put = (chunks: { path?: string; blockHashes?: Buffer }[]) =>
    new Promise<{ error?: grpc.ServiceError; blocks?: number }>((resolve) => {
      const call = client.putScanBaseline((error, response) => resolve(error ? { error } : { blocks: Number(response!.blocks) }));
      for (const chunk of chunks) call.write(chunk);
      call.end();
    });
  const blocks = (4 * MiB) / 4096;
  const start = () => unary(client, client.startCapture, { path: source, mode: 'CAPTURE_SCAN', scanIntervalMs: 60_000, scanBaseline: 'SCAN_BASELINE_REPLICA' }).then(() => undefined, (error: grpc.ServiceError) => error);

  t.equal((await start())?.code, grpc.status.ABORTED, 'no baseline put: ABORTED (a process server puts it and tries again)');
  t.equal((await put([{ path: source, blockHashes: Buffer.alloc(8 * (blocks - 1)) }])).error?.code, grpc.status.INVALID_ARGUMENT, 'one block short: INVALID_ARGUMENT');
  t.equal((await put([{ path: source, blockHashes: Buffer.alloc(8 * (blocks + 1)) }])).error?.code, grpc.status.OUT_OF_RANGE, 'one block too many: OUT_OF_RANGE');
  t.equal((await put([{ path: path.join(dir, 'other.img'), blockHashes: Buffer.alloc(8) }])).error?.code, grpc.status.PERMISSION_DENIED, 'a disk the agent was not given: refused');
  t.equal((await start())?.code, grpc.status.ABORTED, 'refused puts leave no baseline');
  t.same(await put([{ path: source, blockHashes: Buffer.alloc(8 * blocks) }]), { blocks }, 'a whole baseline is taken');
  await unary(client, client.stopCapture, { path: source });
  t.equal((await start())?.code, grpc.status.ABORTED, 'StopCapture drops a baseline put before it (it is for the capture after a stop)');
  t.same(await put([{ path: source, blockHashes: Buffer.alloc(8 * (blocks / 2)) }, { blockHashes: Buffer.alloc(8 * (blocks / 2)) }]), { blocks }, 'the hashes of every block, in two chunks');
  t.equal(await start(), undefined, 'StartCapture with SCAN_BASELINE_REPLICA starts');
  const { captures } = await unary(client, client.listCaptures, {});
  // The replica's hashes said "all zeros": the first pass shipped the source's non-zero blocks, the data half of the image.
  t.equal(Number(captures[0]?.nextSequence) > 1, true, 'the first pass recorded the blocks that differ from the replica');
  t.equal((await start())?.code, undefined, 'joining the running capture needs no baseline');
});
