// Goal: a caller cannot hold a daemon's streams. The N+1th concurrent stream
// of one method from one peer is refused (RESOURCE_EXHAUSTED naming the peer
// and the method), a stream that sends and takes nothing for the idle limit is
// ended with DEADLINE_EXCEEDED and its place freed, and the daemon keeps
// serving others meanwhile. The limits are lowered for the test through
// DRPLANE_TEST_STREAM_IDLE_MS and DRPLANE_TEST_STREAMS_PER_PEER_MAX (lower
// only: shared/stream-guard.ts); production keeps shared/limits.ts.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { open } from 'lmdb';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { agentClient, configurationServerClient, makeExtent, sendFrames, startMasterTarget, unary } from '../helpers/clients';
import { startDaemon, tempDir } from '../helpers/daemons';
import { v1 } from '../../shared/proto';

const idleMs = 1_500;
const perPeerMax = 2;
const env = { DRPLANE_TEST_STREAM_IDLE_MS: String(idleMs), DRPLANE_TEST_STREAMS_PER_PEER_MAX: String(perPeerMax) };

/** Resolves with the call's final status (or the error it ended with) and when it came. */
function ended(call: grpc.ClientReadableStream<unknown> | grpc.ClientDuplexStream<unknown, unknown>): Promise<{ code: number; details: string; atMs: number }> {
  return new Promise((resolve) => {
    call.on('data', () => undefined);
    call.on('error', () => undefined);
    call.once('status', (status: grpc.StatusObject) => resolve({ code: status.code, details: status.details, atMs: Date.now() }));
  });
}

t.test('master target: idle ApplyBatches streams end, the third from one peer is refused, others are served', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { mt, client, datastore } = await startMasterTarget(t, dir, env);
  const replicaPath = path.join(datastore, 'd.img');
  await unary(client, client.createReplica, { diskId: 'd', path: replicaPath, diskBytes: 1024 * 1024, epoch: 1 });

  // Two streams held open: one sent half a batch and stopped, one sent nothing at all.
  const openedMs = Date.now();
  const half = client.applyBatches();
  const halfEnded = ended(half);
  half.write({ diskId: 'd', epoch: 1, sequence: 1, extents: [await makeExtent(0, Buffer.alloc(4096, 7))], last: false });
  const silent = client.applyBatches();
  const silentEnded = ended(silent);
  await new Promise((resolve) => setTimeout(resolve, 200));

  const third = await sendFrames(client, [{ diskId: 'd', epoch: 1, sequence: 1, extents: [await makeExtent(0, Buffer.alloc(4096, 1))], last: true }]);
  t.equal(third.error?.code, grpc.status.RESOURCE_EXHAUSTED, `the third stream is refused: ${third.error?.details}`);
  t.match(third.error?.details, /already holds 2 ApplyBatches streams/);
  t.equal(third.acks.length, 0, 'nothing of the refused stream was applied');
  const status = await unary(client, client.getStatus, {});
  t.equal(Number(status.batchesApplied), 0, 'the master target still answers unary calls');

  for (const [name, result] of [['half a batch', await halfEnded], ['nothing', await silentEnded]] as const) {
    t.equal(result.code, grpc.status.DEADLINE_EXCEEDED, `the stream that sent ${name} ends DEADLINE_EXCEEDED: ${result.details}`);
    t.match(result.details, /sent and took nothing for 1\.5 s/);
    t.ok(result.atMs - openedMs >= idleMs - 100 && result.atMs - openedMs < idleMs + 3_000, `after the idle limit (${result.atMs - openedMs} ms)`);
  }
  t.ok(fs.readFileSync(replicaPath).subarray(0, 4096).equals(Buffer.alloc(4096)), 'the half batch of the idle stream was not applied');

  // Their places are free: a stream now applies.
  const after = await sendFrames(client, [{ diskId: 'd', epoch: 1, sequence: 1, extents: [await makeExtent(0, Buffer.alloc(4096, 1))], last: true }]);
  t.error(after.error, 'a new stream is accepted once the idle ones ended');
  t.equal(after.acks[0]?.sequence, 1);
  t.ok(fs.readFileSync(replicaPath).subarray(0, 4096).equals(Buffer.alloc(4096, 1)), 'and its batch is applied');
  t.ok(mt.logs.some((line) => line.msg === 'idle stream ended' && line.method === 'ApplyBatches'), 'the master target logged the idle stream');
});

t.test('agent: idle StreamChanges and ReadDisk calls end, the third from one peer is refused', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const image = path.join(dir, 'source.img');
  fs.writeFileSync(image, Buffer.alloc(64 * 1024 * 1024, 5));
  const agent = await startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'), '--disk', image], env });
  t.teardown(() => agent.stop());
  const client = agentClient(agent.address);
  t.teardown(() => client.close());
  await unary(client, client.startCapture, { path: image, mode: 'CAPTURE_WRITE_THROUGH' });

  // StreamChanges: two opened that never send their first request.
  const openedMs = Date.now();
  const changes = [client.streamChanges(), client.streamChanges()];
  const changesEnded = changes.map((call) => ended(call));
  await new Promise((resolve) => setTimeout(resolve, 200));
  const refused = ended(client.streamChanges());
  t.equal((await refused).code, grpc.status.RESOURCE_EXHAUSTED, `the third StreamChanges is refused: ${(await refused).details}`);
  t.match((await refused).details, /already holds 2 StreamChanges streams/);
  for (const result of await Promise.all(changesEnded)) {
    t.equal(result.code, grpc.status.DEADLINE_EXCEEDED, `an idle StreamChanges ends DEADLINE_EXCEEDED: ${result.details}`);
    t.ok(result.atMs - openedMs < idleMs + 3_000, `soon after the idle limit (${result.atMs - openedMs} ms)`);
  }
  // The capture serves a stream that reads: its first batch comes.
  const reader = client.streamChanges();
  const first = new Promise((resolve) => reader.once('data', resolve));
  reader.on('error', () => undefined);
  reader.write({ path: image, captureId: '', fromSequence: 0 });
  t.ok(await first, 'a new StreamChanges is served once the idle ones ended');
  reader.cancel();

  // ReadDisk: two callers that stop reading (64 MiB is more than HTTP/2 and grpc-js buffer), then a third.
  const readOpenedMs = Date.now();
  const reads = [0, 1].map(() => client.readDisk({ path: image, ranges: [{ offset: 0, length: 64 * 1024 * 1024 }], skipZero: false, packSmallPieces: false }));
  const readsEnded = reads.map((call) => {
    const result = new Promise<{ code: number; details: string; atMs: number }>((resolve) => {
      call.on('error', () => undefined);
      call.once('status', (status: grpc.StatusObject) => resolve({ code: status.code, details: status.details, atMs: Date.now() }));
    });
    // Read one message, then stop reading.
    call.once('data', () => call.pause());
    return result;
  });
  await new Promise((resolve) => setTimeout(resolve, 300));
  const thirdRead = client.readDisk({ path: image, ranges: [{ offset: 0, length: 4096 }], skipZero: false, packSmallPieces: false });
  const thirdEnded = await ended(thirdRead);
  t.equal(thirdEnded.code, grpc.status.RESOURCE_EXHAUSTED, `the third ReadDisk is refused: ${thirdEnded.details}`);
  t.match(thirdEnded.details, /already holds 2 ReadDisk streams/);
  const statusWhileHeld = await unary(client, client.getStatus, {});
  t.equal(statusWhileHeld.name, 'agent1', 'the agent answers unary calls while the reads are held');
  // A caller that does not read cannot receive a status queued behind its data: the stream is reset (CANCELLED) or
  // ends DEADLINE_EXCEEDED; either way it ends, and its place is free.
  for (const call of reads) setTimeout(() => call.resume(), idleMs + 2_500);
  for (const result of await Promise.all(readsEnded)) {
    t.ok(result.code === grpc.status.DEADLINE_EXCEEDED || result.code === grpc.status.CANCELLED, `a held ReadDisk is ended (${grpc.status[result.code]}: ${result.details})`);
    t.ok(result.atMs - readOpenedMs < idleMs + 5_000, `soon after the idle limit (${result.atMs - readOpenedMs} ms)`);
  }
  // Calls read to their end free their place too: more of them, one after another, than one peer may hold at once.
  for (let index = 0; index < perPeerMax + 3; index++) {
    const readAgain = client.readDisk({ path: image, ranges: [{ offset: 0, length: 4096 }], skipZero: false, packSmallPieces: false });
    const readAgainEnded = await ended(readAgain);
    t.equal(readAgainEnded.code, grpc.status.OK, `ReadDisk ${index + 1} after the held ones ended is served: ${readAgainEnded.details}`);
  }
  t.equal(agent.logs.filter((line) => line.msg === 'idle stream ended' && line.method === 'ReadDisk').length, 2, 'the agent logged both idle reads');
  t.equal(agent.process.exitCode, null, 'the agent still runs');
});

t.test('configuration server: one Backup per peer, an unread one ends', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const dataDir = path.join(dir, 'cs');
  const args = ['--listen', '127.0.0.1:0', '--data-dir', dataDir];
  // A database of 24 MiB (padding under keys the server never reads): more than grpc-js queues (16 messages of
  // 1 MiB) and HTTP/2 lets through to a reader that does not read, so an unread backup really holds the stream.
  await (await startDaemon('configuration-server', { args })).stop();
  const database = open({ path: path.join(dataDir, 'config.lmdb'), noSubdir: true, maxDbs: 16 });
  const settings = database.openDB<Buffer, string>({ name: 'settings', encoding: 'binary' });
  for (let index = 0; index < 24; index++) await settings.put(`test-padding-${index}`, crypto.randomBytes(1024 * 1024));
  await database.close();
  const cs = await startDaemon('configuration-server', { args, env: { ...env, DRPLANE_TEST_STREAMS_PER_PEER_MAX: '' } });
  t.teardown(() => cs.stop());
  const client = configurationServerClient(cs.address);
  t.teardown(() => client.close());
  // The default HTTP/2 window (64 KiB), not drplane's 16 MiB.
  const smallWindow = new v1.ConfigurationServer(cs.address, grpc.credentials.createInsecure()) as ReturnType<typeof configurationServerClient>;
  t.teardown(() => smallWindow.close());
  const openedMs = Date.now();
  const held = smallWindow.backup({});
  const heldEnded = new Promise<{ code: number; atMs: number }>((resolve) => {
    held.on('error', () => undefined);
    held.once('status', (status: grpc.StatusObject) => resolve({ code: status.code, atMs: Date.now() }));
  });
  held.once('data', (chunk: { totalBytes: number }) => {
    t.comment(`backup of ${chunk.totalBytes} bytes`);
    held.pause();
  });
  await new Promise((resolve) => setTimeout(resolve, 300));
  const second = await ended(client.backup({}));
  t.equal(second.code, grpc.status.RESOURCE_EXHAUSTED, `a second Backup from the same peer is refused: ${second.details}`);
  t.match(second.details, /already holds 1 Backup streams/);
  setTimeout(() => held.resume(), idleMs + 2_500);
  const heldResult = await heldEnded;
  t.not(heldResult.code, grpc.status.OK, `the unread backup is ended (${grpc.status[heldResult.code]})`);
  t.ok(heldResult.atMs - openedMs < idleMs + 5_000, `soon after the idle limit (${heldResult.atMs - openedMs} ms)`);
  // Its copy of the database is deleted, and a new backup streams to its end.
  await new Promise((resolve) => setTimeout(resolve, 200));
  t.same(fs.readdirSync(dataDir).filter((name) => name.includes('.backup-')), [], 'the idle backup\'s copy was deleted');
  for (let index = 0; index < 3; index++) {
    const again = await ended(client.backup({}));
    t.equal(again.code, grpc.status.OK, `backup ${index + 1} after the idle one is served (each read to its end frees the place): ${again.details}`);
  }
});
