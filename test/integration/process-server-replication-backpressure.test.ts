// Goal: back-pressure, not loss. With the master target away, the journal
// fills the cache up to cacheBytesMax and no further: the session says "cache
// full", stops acknowledging, and the agent's held records grow until its
// capture overflows (a new capture id). When the master target is back the
// session resyncs under the new capture and the replica converges to the
// source. Tiny limits (cache 32 MiB, agent 8 MiB held) so every path runs.
// Prints its seed.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import { agentClient, masterTargetClient, processServerClient, unary } from '../helpers/clients';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { createImage, randomBytes, seededRandom, sha256File } from '../helpers/disks';
import { freePort, until } from '../helpers/wait';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 32 * MiB;
const diskId = 'vm3-disk0';
const cacheBytesMax = 32 * MiB;

t.test('a full cache holds the agent back; its overflow ends in a resync', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const source = path.join(dir, 'source.img');
  createImage(source, diskBytes, seed);
  const datastore = path.join(dir, 'ds');
  const replicaPath = path.join(datastore, `${diskId}.img`);
  const mtAddress = await freePort();
  const startMasterTarget = () => startDaemon('master-target', { args: ['--name', 'mt1', '--listen', mtAddress, '--data-dir', path.join(dir, 'mt'), '--datastore-root', datastore] });
  let masterTarget: RunningDaemon = await startMasterTarget();
  const [agent, processServer] = await Promise.all([
    startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'agent'), '--disk', source, '--held-bytes-max', String(8 * MiB)] }),
    startDaemon('process-server', { args: ['--name', 'ps1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'ps'), '--cache-bytes-max', String(cacheBytesMax), '--memory-queue-bytes-max', String(2 * MiB)] }),
  ]);
  const ps = processServerClient(processServer.address);
  const mt = masterTargetClient(mtAddress);
  const agentSide = agentClient(agent.address);
  const writer = new WriteThroughClient(agent.address);
  t.teardown(async () => {
    await writer.close();
    ps.close();
    mt.close();
    agentSide.close();
    await Promise.all([agent.stop(), masterTarget.stop(), processServer.stop()]);
  });
  await unary(mt, mt.createReplica, { diskId, path: replicaPath, diskBytes, epoch: 1 });
  await unary(ps, ps.startReplication, { diskId, epoch: 1, agentAddress: agent.address, sourcePath: source, masterTargetAddress: mtAddress, captureMode: 'CAPTURE_WRITE_THROUGH', crashConsistentIntervalMs: 500 });
  const status = () => unary(ps, ps.getReplication, { diskId });
  const first = await until('the first sync to end', async () => {
    const current = await status();
    return current.state === 'REPLICATION_REPLICATING' && current;
  }, 60_000);
  const server = await unary(ps, ps.getStatus, {});
  t.equal(server.cacheBytesMax, cacheBytesMax, 'the configured cache bound');
  // A bound the file system cannot give stops the daemon at start-up with one line.
  const refused = await startDaemon('process-server', { expectExit: true, args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'ps-too-big'), '--cache-bytes-max', String(60 * 1024 * 1024 * MiB)] });
  const exit = await refused.exited;
  t.not(exit.code, 0, 'a cache larger than the free space is refused');
  t.match(refused.stderr.join('\n'), /cacheBytesMax.*more than the file system/);

  await masterTarget.kill();
  /** Writes of 256 KiB at random places; returns the capture ids the agent answered with. */
  const captureIds = new Set<string>();
  const write = async (bytes: number) => {
    for (let done = 0; done < bytes; done += 8 * 256 * 1024) {
      const writes = Array.from({ length: 8 }, () => ({ offset: Math.floor(random() * (diskBytes / (256 * 1024))) * 256 * 1024, data: randomBytes(256 * 1024, random) }));
      for (const written of await Promise.all(writes.map((w) => writer.write(source, w.offset, w.data)))) captureIds.add(written.captureId);
    }
  };
  // More than the cache holds: the journal stops at its bound and the agent holds the rest.
  await write(28 * MiB);
  const full = await until('the cache to be full', async () => {
    const current = await status();
    return /cache full/.test(current.stateReason) && current;
  });
  t.equal(full.state, 'REPLICATION_DEGRADED');
  const totals = await unary(ps, ps.getStatus, {});
  t.ok(totals.cacheBytes <= cacheBytesMax, `the cache holds ${totals.cacheBytes} bytes, within its bound of ${cacheBytesMax}`);
  t.ok(full.backlogBytes > 16 * MiB, `a backlog of ${full.backlogBytes} bytes`);
  const { captures } = await unary(agentSide, agentSide.listCaptures, {});
  const capture = captures.find((candidate) => candidate.path === source)!;
  t.ok(capture.heldBytes > 0 || capture.overflows > 0, `the agent holds ${capture.heldBytes} bytes the process server has not acknowledged (overflows ${capture.overflows})`);

  // Past the agent's bound its capture overflows and starts over under a new id.
  await write(12 * MiB);
  const overflowed = await until('the capture to overflow', async () => {
    const { captures: now } = await unary(agentSide, agentSide.listCaptures, {});
    return now.find((candidate) => candidate.path === source && candidate.overflows > 0);
  });
  t.ok(overflowed.captureId !== first.captureId, `a new capture id ${overflowed.captureId}`);
  t.ok(captureIds.size >= 2, 'writes were answered under the old and the new capture');

  masterTarget = await startMasterTarget();
  const resynced = await until('the resync under the new capture', async () => {
    const current = await status();
    return current.resyncs >= 1 && current.state === 'REPLICATION_REPLICATING' && current.captureId === overflowed.captureId && current;
  }, 60_000);
  t.equal(resynced.sync?.mode, 'SYNC_MODE_DELTA', 'the resync compares hashes');
  await unary(ps, ps.flushReplication, { diskId, timeoutMs: 60_000 });
  t.equal(sha256File(replicaPath), sha256File(source), 'the replica equals the source');
  const drained = await status();
  t.equal(drained.backlogBytes, 0);
  t.notMatch(drained.stateReason, /cache full/, 'the cache is not full any more');
});
