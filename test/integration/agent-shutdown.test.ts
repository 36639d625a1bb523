// Goal: the real agent process shuts disks down as a source for a planned
// failover and lets them go again (docs/failover.md):
//   - ShutdownSource runs the shutdown hook once (DRPLANE_DISKS, DRPLANE_MACHINE),
//     then writes (Write and WriteStream) are refused with FAILED_PRECONDITION,
//     no capture starts, the agent holds no file of the disk open, and a
//     capture that ran before still delivers its records (the drain needs them);
//   - a failing hook shuts nothing down and quotes the tail of its output;
//   - the shut-down set survives an agent restart; ReleaseSource lifts it
//     (idempotent); after a failback-style replacement of the file (rename),
//     the next write and capture use the new file, not the old inode;
//   - --disk-root: a file created later under the root may be read and
//     written; paths outside it (.., a symlink out, another directory) are refused.
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import t from 'tap';
import { createClient, unary } from '../../shared/grpc';
import { v1 } from '../../shared/proto';
import { blockBytes } from '../../shared/limits';
import type { ChangeBatch__Output } from '../../generated/drplane/v1/ChangeBatch';
import type { WriteResponse__Output } from '../../generated/drplane/v1/WriteResponse';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { createImage, sha256File } from '../helpers/disks';

const MiB = 1024 * 1024;
const diskBytes = 4 * MiB;
type AgentClient = ReturnType<typeof agentClient>;
const agentClient = (address: string) => createClient(v1.Agent, address);

/** Files of `diskPath` the process holds open: fd links name the path (with " (deleted)" once it was renamed over). */
function openFilesOf(pid: number, diskPath: string): string[] {
  const found: string[] = [];
  for (const fd of fs.readdirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = fs.readlinkSync(`/proc/${pid}/fd/${fd}`);
    } catch {
      continue;
    }
    if (target === diskPath || target.startsWith(`${diskPath} `)) found.push(target);
  }
  return found;
}

/** Writes through a WriteStream; resolves with the answers and the status that ended it. */
function writeStream(client: AgentClient, requests: { path: string; offset: number; data: Buffer }[]): Promise<{ answers: WriteResponse__Output[]; error?: grpc.ServiceError }> {
  return new Promise((resolve) => {
    const answers: WriteResponse__Output[] = [];
    const call = client.writeStream();
    call.on('data', (answer: WriteResponse__Output) => answers.push(answer));
    call.on('error', (error: grpc.ServiceError) => resolve({ answers, error }));
    call.on('end', () => resolve({ answers }));
    for (const request of requests) call.write({ ...request, sync: false });
    call.end();
  });
}

/** Collects a StreamChanges call's records until asked to stop. */
function streamChanges(client: AgentClient, diskPath: string, captureId: string) {
  const batches: ChangeBatch__Output[] = [];
  const call = client.streamChanges();
  call.on('data', (batch: ChangeBatch__Output) => batches.push(batch));
  call.on('error', () => undefined);
  call.write({ path: diskPath, captureId, fromSequence: 1 });
  return {
    records: () => batches.flatMap((batch) => batch.records),
    close: () => call.cancel(),
  };
}

async function until<T>(what: string, probe: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

t.test('ShutdownSource and ReleaseSource', async (t) => {
  const dir = tempDir();
  const image = path.join(dir, 'source.img');
  const other = path.join(dir, 'other.img');
  createImage(image, diskBytes, 11, MiB);
  createImage(other, diskBytes, 12, MiB);
  const hookLog = path.join(dir, 'hook.log');
  // Fails for machine "broken", with more output than an error quotes (the tail names the cause).
  const hook = `if [ "$DRPLANE_MACHINE" = broken ]; then head -c 6000 /dev/zero | tr '\\0' x; echo; echo "cannot stop broken: it is busy" >&2; exit 3; fi; echo "$DRPLANE_MACHINE|$DRPLANE_DISKS" >> ${hookLog}; echo "stopped $DRPLANE_MACHINE"`;
  const dataDir = path.join(dir, 'data');
  const args = ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--disk', image, '--disk', other, '--shutdown-hook', hook, '--hook-timeout-ms', '5000'];
  let agent: RunningDaemon = await startDaemon('agent', { args });
  let client = agentClient(agent.address);
  t.teardown(async () => {
    client.close();
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const block = (value: number) => Buffer.alloc(blockBytes, value);
  const hookLines = () => (fs.existsSync(hookLog) ? fs.readFileSync(hookLog, 'utf8').trim().split('\n') : []);

  t.same((await unary(client, client.getStatus, {})).hooks, ['shutdown'], 'the shutdown hook is listed by name');

  // A write-through capture runs before the shutdown: its records must still reach the process server after it.
  const capture = await unary(client, client.startCapture, { path: image, mode: 'CAPTURE_WRITE_THROUGH' });
  const writer = new WriteThroughClient(agent.address);
  for (let index = 0; index < 8; index++) await writer.write(image, index * blockBytes, block(index + 1));
  await writer.close();
  t.ok(openFilesOf(agent.process.pid!, image).length > 0, 'the agent keeps the disk open for writing while it takes writes');

  t.test('a failing hook shuts nothing down', async (t) => {
    const error = await unary(client, client.shutdownSource, { paths: [image], machine: 'broken', reason: 'planned failover job-1' }).then(
      () => undefined,
      (caught: grpc.ServiceError) => caught,
    );
    t.equal(error?.code, grpc.status.FAILED_PRECONDITION);
    t.match(error?.details, /^shutdown hook failed \(exit 3\): \[output cut\] x+\ncannot stop broken: it is busy; no disk was shut down \(writes go on\)/, 'the error quotes the tail of the output');
    t.same((await unary(client, client.getStatus, {})).shutDownPaths, []);
    t.equal((await unary(client, client.write, { path: image, offset: 0, data: block(9) })).captureId, capture.captureId, 'writes go on');
  });

  t.test('the hook runs once, then writes are refused', async (t) => {
    const first = await unary(client, client.shutdownSource, { paths: [other, image], machine: 'vm1', reason: 'planned failover job-12' });
    t.equal(first.hookRan, true);
    t.equal(first.hookOutput, 'stopped vm1');
    t.same(first.shutDownPaths, [image, other].sort());
    t.same(hookLines(), [`vm1|${[image, other].sort().join(' ')}`], 'DRPLANE_MACHINE and DRPLANE_DISKS');
    const again = await unary(client, client.shutdownSource, { paths: [image], machine: 'vm1', reason: 'planned failover job-12 (retried)' });
    t.equal(again.hookRan, false, 'a repeat does not run the hook again');
    t.match(again.hookOutput, /already shut down since .* \(planned failover job-12\)/);
    t.equal(hookLines().length, 1);

    const refused = /^disk .*source\.img is shut down for failover \(planned failover job-12\): writes resume after the machine is failed back or reprotected here/;
    await t.rejects(unary(client, client.write, { path: image, offset: 0, data: block(10) }), { code: grpc.status.FAILED_PRECONDITION, details: refused });
    const streamed = await writeStream(client, [{ path: image, offset: 0, data: block(10) }]);
    t.equal(streamed.answers.length, 0);
    t.match(streamed.error, { code: grpc.status.FAILED_PRECONDITION, details: refused }, 'WriteStream too');
    await t.rejects(unary(client, client.startCapture, { path: other, mode: 'CAPTURE_SCAN' }), { code: grpc.status.FAILED_PRECONDITION, details: /other\.img is shut down for failover .*no capture starts on it until it is released \(ReleaseSource\)/ });
    t.same(openFilesOf(agent.process.pid!, image), [], 'the agent holds no file of the disk open');

    // The capture that ran before goes on: a process server joins it and drains its records.
    const joined = await unary(client, client.startCapture, { path: image, mode: 'CAPTURE_WRITE_THROUGH' });
    t.equal(joined.captureId, capture.captureId);
    t.equal(joined.nextSequence, 10, '9 writes, no more');
    const changes = streamChanges(client, image, capture.captureId);
    t.teardown(() => changes.close());
    const records = await until('the records written before the shutdown', () => changes.records().length >= 9 && changes.records());
    t.same(records.map((record) => record.data[0]), [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    // Reads (the failover's verify step opens a hash tree of the source) still work.
    const tree = await unary(client, client.openHashTree, { diskId: 'x', path: image });
    t.equal(tree.diskBytes, diskBytes);
    const status = await unary(client, client.getStatus, {});
    t.same(status.shutDownPaths, [image, other].sort());
  });

  t.test('kept across a restart; ReleaseSource lifts it', async (t) => {
    client.close();
    await agent.stop();
    agent = await startDaemon('agent', { args });
    client = agentClient(agent.address);
    t.same((await unary(client, client.getStatus, {})).shutDownPaths, [image, other].sort(), 'the restarted agent remembers');
    await t.rejects(unary(client, client.write, { path: other, offset: 0, data: block(11) }), { code: grpc.status.FAILED_PRECONDITION, details: /other\.img is shut down for failover \(planned failover job-12\)/ });
    await t.rejects(unary(client, client.startCapture, { path: image, mode: 'CAPTURE_WRITE_THROUGH' }), { code: grpc.status.FAILED_PRECONDITION }, 'no capture survived the restart, and none starts');
    const again = await unary(client, client.shutdownSource, { paths: [image], machine: 'vm1', reason: 'again' });
    t.equal(again.hookRan, false, 'nor does the hook run again after a restart');

    await unary(client, client.releaseSource, { paths: [other] });
    await unary(client, client.releaseSource, { paths: [other] });
    t.same((await unary(client, client.getStatus, {})).shutDownPaths, [image], 'idempotent');
    const written = await unary(client, client.write, { path: other, offset: 0, data: block(11) });
    t.equal(written.sequence, 0, 'writes reach the released disk');
    t.equal(fs.readFileSync(other).subarray(0, blockBytes).equals(block(11)), true);
    await t.rejects(unary(client, client.write, { path: image, offset: 0, data: block(11) }), { code: grpc.status.FAILED_PRECONDITION }, 'the other disk still refuses');
  });

  t.test('after a failback replaces the file, writes and captures use the new one', async (t) => {
    // A capture of the released disk, running while it is shut down again: the replacement makes it stale.
    await unary(client, client.startCapture, { path: other, mode: 'CAPTURE_WRITE_THROUGH' });
    await unary(client, client.write, { path: other, offset: 0, data: block(12) });
    t.ok(openFilesOf(agent.process.pid!, other).length > 0);
    await unary(client, client.shutdownSource, { paths: [other], machine: 'vm1', reason: 'planned failover job-13' });
    t.equal(hookLines().length, 2, 'a new shutdown runs the hook again');
    t.same(openFilesOf(agent.process.pid!, other), []);
    // What MaterialiseRecoveryPoint(replace_existing) does: a temporary file beside it, renamed over it.
    const replacement = `${other}.tmp`;
    createImage(replacement, diskBytes, 99, MiB);
    fs.renameSync(replacement, other);
    const tree = await unary(client, client.openHashTree, { diskId: 'x', path: other });
    await unary(client, client.releaseSource, { paths: [other] });
    t.same((await unary(client, client.listCaptures, {})).captures, [], 'the stale capture stopped');
    await t.rejects(unary(client, client.getHashes, { treeId: tree.treeId, level: 0, parents: [0] }), { code: grpc.status.NOT_FOUND }, 'the stale hash tree closed');
    const fresh = await unary(client, client.startCapture, { path: other, mode: 'CAPTURE_WRITE_THROUGH' });
    const written = await unary(client, client.write, { path: other, offset: blockBytes, data: block(13) });
    t.equal(written.captureId, fresh.captureId);
    t.equal(fs.readFileSync(other).subarray(blockBytes, 2 * blockBytes).equals(block(13)), true, 'the write reached the new file');
    t.same(openFilesOf(agent.process.pid!, other), [other], 'one fd, on the new file (no "(deleted)" inode)');
  });

  t.test('a disk whose file stayed the same keeps its capture through a shutdown and release', async (t) => {
    const running = await unary(client, client.startCapture, { path: other, mode: 'CAPTURE_WRITE_THROUGH' });
    await unary(client, client.shutdownSource, { paths: [other], machine: 'vm1', reason: 'planned failover job-14' });
    await unary(client, client.releaseSource, { paths: [other] });
    const written = await unary(client, client.write, { path: other, offset: 0, data: block(14) });
    t.equal(written.captureId, running.captureId, 'a failover stopped before its fence goes on without a resync');
    t.equal(written.sequence, running.nextSequence);
  });
});

t.test('--disk-root', async (t) => {
  const dir = tempDir();
  const root = path.join(dir, 'ds');
  fs.mkdirSync(root);
  const outside = path.join(dir, 'outside.img');
  createImage(outside, diskBytes, 3, MiB);
  const outsideBefore = sha256File(outside);
  const agent = await startDaemon('agent', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'), '--disk-root', root] });
  const client = agentClient(agent.address);
  t.teardown(async () => {
    client.close();
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const status = await unary(client, client.getStatus, {});
  t.same(status.diskRoots, [root]);
  t.same(status.diskPaths, []);

  const recovered = path.join(root, 'recovered', 'vm1-disk0.img');
  await t.rejects(unary(client, client.describeDisks, { paths: [recovered] }), { code: grpc.status.NOT_FOUND, details: /does not exist/ }, 'a disk the failover has not written yet');
  fs.mkdirSync(path.dirname(recovered));
  createImage(recovered, diskBytes, 4, MiB);
  const { disks } = await unary(client, client.describeDisks, { paths: [recovered] });
  t.same(disks, [{ path: recovered, diskBytes, blockDevice: false }], 'a file created later under the root');
  await unary(client, client.write, { path: recovered, offset: 0, data: Buffer.alloc(blockBytes, 7) });
  t.equal(fs.readFileSync(recovered)[0], 7, 'written through the agent');
  const tree = await unary(client, client.openHashTree, { diskId: 'x', path: recovered });
  t.equal(tree.leafCount, diskBytes / blockBytes);
  const captured = await unary(client, client.startCapture, { path: recovered, mode: 'CAPTURE_SCAN', scanIntervalMs: 60_000 });
  t.equal(captured.scanPasses, 1, 'and captured');

  const escape = path.join(root, 'recovered', '..', '..', 'outside.img');
  fs.symlinkSync(outside, path.join(root, 'link.img'));
  fs.symlinkSync(dir, path.join(root, 'up'));
  for (const [what, refused] of [
    ['another directory', outside],
    ['.. out of the root', escape],
    ['a symlink out of the root', path.join(root, 'link.img')],
    ['a path through a symlinked directory', path.join(root, 'up', 'outside.img')],
    ['the root itself', root],
  ]) {
    await t.rejects(unary(client, client.describeDisks, { paths: [refused] }), { code: grpc.status.PERMISSION_DENIED }, `${what}: read refused`);
    await t.rejects(unary(client, client.write, { path: refused, offset: 0, data: Buffer.alloc(blockBytes, 1) }), { code: grpc.status.PERMISSION_DENIED }, `${what}: write refused`);
  }
  t.equal(sha256File(outside), outsideBefore, 'nothing outside was written');
  fs.mkdirSync(path.join(root, 'dir.img'));
  await t.rejects(unary(client, client.describeDisks, { paths: [path.join(root, 'dir.img')] }), { code: grpc.status.INVALID_ARGUMENT, details: /neither an image file nor a block device/ });
});

t.test('an agent needs a disk or a disk root', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const agent = await startDaemon('agent', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data')], expectExit: true });
  const { code } = await agent.exited;
  t.not(code, 0);
  t.match(agent.stderr.join('\n'), /at least one disk is required \(--disk PATH, or --disk-root DIR\)/);
});
