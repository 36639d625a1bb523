// Goal: a session started on a replica that already holds the disk's older
// data (reprotect to the original location: CreateReplica seed_path, a copy of
// the machine's old disk on the master target's host) sends about what
// differs, not the disk, and ends byte-exact:
//   - scan capture: the process server fetches the replica's block hashes
//     from the master target's hash tree and gives them to the agent
//     (PutScanBaseline); the first pass (SCAN_BASELINE_REPLICA) ships only the
//     blocks whose hash differs; the session's bytes_sent is about the changed
//     blocks, and so is what it received;
//   - write-through capture with initial_sync DELTA: the hash trees are
//     compared (the master target rereads the seeded replica) and only the
//     differing blocks travel;
//   - an adopted replica (adopt_existing: data, nothing applied) is not
//     mistaken for an empty one.
// The changes include blocks that became zeros and zero blocks that got data.
// Prints its seed.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { masterTargetClient, processServerClient, unary } from '../helpers/clients';
import { startDaemon, tempDir } from '../helpers/daemons';
import { changeBlocks, createImage, randomBytes, seededRandom, sha256File } from '../helpers/disks';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import { until } from '../helpers/wait';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const blockBytes = 4096;
const diskBytes = 32 * MiB;

/** The machine's old disk and its newer version: they differ in ~1% of blocks, some now zero, some zero before. */
function makeDisks(dir: string, name: string, seedValue: number): { old: string; current: string; differingBytes: number } {
  const current = path.join(dir, `${name}.img`);
  const old = path.join(dir, 'ds', 'original', `${name}.img`);
  fs.mkdirSync(path.dirname(old), { recursive: true });
  createImage(current, diskBytes, seedValue, MiB);
  fs.copyFileSync(current, old);
  changeBlocks(current, 0.01, seedValue + 1);
  const random = seededRandom(seedValue + 2);
  const fd = fs.openSync(current, 'r+');
  try {
    // Blocks 0-7 lie in a data region (createImage starts with one): zeroed. Blocks in the second MiB (a hole): written.
    fs.writeSync(fd, Buffer.alloc(8 * blockBytes), 0, 8 * blockBytes, 0);
    fs.writeSync(fd, randomBytes(8 * blockBytes, random), 0, 8 * blockBytes, MiB + 16 * blockBytes);
  } finally {
    fs.closeSync(fd);
  }
  return { old, current, differingBytes: differingBytes(old, current) };
}

/** Bytes of the 4 KiB blocks in which two images differ. */
function differingBytes(a: string, b: string): number {
  const [left, right] = [fs.readFileSync(a), fs.readFileSync(b)];
  let bytes = 0;
  for (let offset = 0; offset < left.length; offset += blockBytes) if (left.compare(right, offset, offset + blockBytes, offset, offset + blockBytes) !== 0) bytes += blockBytes;
  return bytes;
}

t.test('sessions on a replica that holds data send what differs', async (t) => {
  t.comment(`seed ${seed}`);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const datastore = path.join(dir, 'ds');
  const scanDisk = makeDisks(dir, 'scan', seed);
  const throughDisk = makeDisks(dir, 'through', seed + 10);
  const adoptedDisk = makeDisks(dir, 'adopted', seed + 20);
  const resumedDisk = makeDisks(dir, 'resumed', seed + 30);
  const [agent, masterTarget, processServer] = await Promise.all([
    startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'agent'), '--disk', scanDisk.current, '--disk', throughDisk.current, '--disk', adoptedDisk.current, '--disk', resumedDisk.current] }),
    startDaemon('master-target', { args: ['--name', 'mt1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt'), '--datastore-root', datastore] }),
    startDaemon('process-server', { args: ['--name', 'ps1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'ps'), '--cache-bytes-max', String(64 * MiB)] }),
  ]);
  const ps = processServerClient(processServer.address);
  const mt = masterTargetClient(masterTarget.address);
  t.teardown(async () => {
    ps.close();
    mt.close();
    await Promise.all([agent.stop(), masterTarget.stop(), processServer.stop()]);
  });
  const start = (diskId: string, sourcePath: string, captureMode: 'CAPTURE_SCAN' | 'CAPTURE_WRITE_THROUGH', initialSync: 'SYNC_MODE_DELTA' | 'SYNC_MODE_UNSPECIFIED' = 'SYNC_MODE_UNSPECIFIED') =>
    unary(ps, ps.startReplication, { diskId, epoch: 1, agentAddress: agent.address, sourcePath, masterTargetAddress: masterTarget.address, captureMode, scanIntervalMs: 300, crashConsistentIntervalMs: 1_000, initialSync });
  const replicating = (diskId: string) =>
    until(`${diskId} replicating`, async () => {
      const status = await unary(ps, ps.getReplication, { diskId });
      return status.state === 'REPLICATION_REPLICATING' && status.latestRecoveryPointId !== '' && status;
    }, 60_000);
  const materialised = async (pointId: string, name: string) => {
    const done = await unary(mt, mt.materialiseRecoveryPoint, { recoveryPointId: pointId, path: path.join(datastore, 'restore', `${name}.img`) });
    const hash = sha256File(done.path);
    fs.rmSync(done.path);
    return hash;
  };

  await t.test('scan capture on a seeded replica', async (t) => {
    const diskId = 'vm8-disk0';
    const replica = await unary(mt, mt.createReplica, { diskId, path: path.join(datastore, `${diskId}.img`), diskBytes, epoch: 1, seedPath: scanDisk.old });
    t.equal(replica.seeded, true, 'the master target seeded the replica');
    t.equal(replica.appliedSequence, 0);
    await start(diskId, scanDisk.current, 'CAPTURE_SCAN');
    await replicating(diskId);
    const flushed = await unary(ps, ps.flushReplication, { diskId, timeoutMs: 60_000 });
    const status = flushed.status!;
    t.comment(`scan: ${scanDisk.differingBytes} bytes differ, ${status.bytesSent} bytes sent to the master target, ${status.bytesApplied} applied, of a ${diskBytes}-byte disk`);
    t.ok(status.bytesSent < diskBytes / 10, `far fewer bytes than the disk were sent (${status.bytesSent})`);
    t.equal(status.bytesApplied, scanDisk.differingBytes, 'exactly the differing blocks were applied');
    t.equal(status.resyncs, 0);
    const expected = sha256File(scanDisk.current);
    t.equal(await materialised(flushed.recoveryPoint!.id, 'scan'), expected, 'the point is the source');
    t.equal(sha256File(path.join(datastore, `${diskId}.img`)), expected, 'the replica is the source');
    // Later passes are not filtered: a change after the first pass arrives as usual.
    changeBlocks(scanDisk.current, 0.005, seed + 3);
    const later = await unary(ps, ps.flushReplication, { diskId, timeoutMs: 60_000 });
    t.equal(await materialised(later.recoveryPoint!.id, 'scan-later'), sha256File(scanDisk.current), 'a later change reaches the replica');
  });

  await t.test('write-through capture with a DELTA initial sync on a seeded replica', async (t) => {
    const diskId = 'vm8-disk1';
    const replica = await unary(mt, mt.createReplica, { diskId, path: path.join(datastore, `${diskId}.img`), diskBytes, epoch: 1, seedPath: throughDisk.old });
    t.equal(replica.seeded, true);
    await start(diskId, throughDisk.current, 'CAPTURE_WRITE_THROUGH', 'SYNC_MODE_DELTA');
    const status = await replicating(diskId);
    t.comment(`write-through: ${throughDisk.differingBytes} bytes differ; the DELTA sync sent ${status.sync?.bytesSent} bytes (${status.sync?.bytesChanged} changed, ${status.sync?.hashBytesExchanged} hash bytes)`);
    t.equal(status.sync?.mode, 'SYNC_MODE_DELTA');
    t.equal(status.sync!.bytesChanged, throughDisk.differingBytes, 'only the differing blocks were read and sent');
    t.ok(Number(status.bytesSent) + Number(status.sync!.bytesSent) < diskBytes / 10);
    const writer = new WriteThroughClient(agent.address);
    t.teardown(() => writer.close());
    const random = seededRandom(seed + 4);
    for (let index = 0; index < 20; index++) await writer.write(throughDisk.current, Math.floor(random() * (diskBytes / blockBytes)) * blockBytes, randomBytes(blockBytes, random));
    const flushed = await unary(ps, ps.flushReplication, { diskId, timeoutMs: 60_000 });
    t.equal(await materialised(flushed.recoveryPoint!.id, 'through'), sha256File(throughDisk.current), 'the point after later writes is the source');
  });

  await t.test('scan capture on an adopted replica (data, nothing applied) is not taken for an empty one', async (t) => {
    const diskId = 'vm8-disk2';
    const replicaPath = path.join(datastore, `${diskId}.img`);
    fs.copyFileSync(adoptedDisk.old, replicaPath);
    const replica = await unary(mt, mt.createReplica, { diskId, path: replicaPath, diskBytes, epoch: 1, adoptExisting: true });
    t.equal(replica.seeded, false);
    await start(diskId, adoptedDisk.current, 'CAPTURE_SCAN');
    await replicating(diskId);
    const flushed = await unary(ps, ps.flushReplication, { diskId, timeoutMs: 60_000 });
    t.comment(`adopted: ${adoptedDisk.differingBytes} bytes differ, ${flushed.status!.bytesSent} bytes sent`);
    t.ok(flushed.status!.bytesSent < diskBytes / 10);
    t.equal(await materialised(flushed.recoveryPoint!.id, 'adopted'), sha256File(adoptedDisk.current), 'blocks zero on the source but not on the replica were sent too');
  });

  await t.test('a process server killed during the first pass: the same capture goes on, the rest of the pass still filtered', async (t) => {
    const diskId = 'vm8-disk3';
    await unary(mt, mt.createReplica, { diskId, path: path.join(datastore, `${diskId}.img`), diskBytes, epoch: 1, seedPath: resumedDisk.old });
    // Its own process server, killed (SIGKILL) after its first journal commit: in the first pass, whose records the
    // agent filtered against the replica's hashes (the capture, and those hashes, live on at the agent).
    const psDir = path.join(dir, 'ps-killed');
    const psArgs = ['--name', 'ps2', '--listen', '127.0.0.1:0', '--data-dir', psDir, '--cache-bytes-max', String(64 * MiB), '--batch-bytes-max', String(2 * MiB)];
    const doomed = await startDaemon('process-server', { args: psArgs, env: { DRPLANE_FAILPOINTS: 'journal.synced=crash@1' } });
    const first = processServerClient(doomed.address);
    await unary(first, first.startReplication, { diskId, epoch: 1, agentAddress: agent.address, sourcePath: resumedDisk.current, masterTargetAddress: masterTarget.address, captureMode: 'CAPTURE_SCAN', scanIntervalMs: 300, crashConsistentIntervalMs: 100 });
    const { signal } = await doomed.exited;
    first.close();
    t.equal(signal, 'SIGKILL', 'killed after its first journal commit');
    const appliedAtKill = (await unary(mt, mt.getReplica, { diskId })).appliedSequence;
    const restarted = await startDaemon('process-server', { args: psArgs });
    const second = processServerClient(restarted.address);
    t.teardown(async () => {
      second.close();
      await restarted.stop();
    });
    const flushed = await unary(second, second.flushReplication, { diskId, timeoutMs: 60_000 });
    const replica = await unary(mt, mt.getReplica, { diskId });
    t.comment(`killed with ${appliedAtKill} batches applied; after the restart ${flushed.status!.bytesSent} bytes sent, ${flushed.status!.bytesApplied} applied; ${resumedDisk.differingBytes} bytes differ`);
    t.equal(flushed.status!.resyncs, 0, 'the same capture went on (no resync)');
    t.ok(flushed.status!.bytesSent < diskBytes / 10, 'the rest of the first pass was filtered too');
    t.ok(replica.appliedSequence > appliedAtKill);
    t.equal(await materialised(flushed.recoveryPoint!.id, 'resumed'), sha256File(resumedDisk.current), 'the point is the source');
    t.equal(sha256File(path.join(datastore, `${diskId}.img`)), sha256File(resumedDisk.current), 'the replica is the source');
  });
});
