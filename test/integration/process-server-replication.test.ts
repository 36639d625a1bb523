// Goal: a replication session on the process server turns write-through
// writes into recovery points that each materialise to exactly the source's
// state at their change_sequence (the test keeps the write log and rebuilds
// the expected image). Writes made while the first sync runs are replayed
// after it. With the master target killed the journal grows (backlog, cache
// bytes, RPO) and everything is applied in order once it is back. A restarted
// agent (new capture id) makes the session resync, and the replica converges.
// Real agent, process server and master target processes; prints its seed.
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import t, { type Test } from 'tap';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import type { ReplicationStatus__Output } from '../../generated/drplane/v1/ReplicationStatus';
import type { StartReplicationRequest } from '../../generated/drplane/v1/StartReplicationRequest';
import { agentClient, masterTargetClient, processServerClient, unary } from '../helpers/clients';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { createImage, seededRandom, sha256File } from '../helpers/disks';
import { randomWrite, sha256OfFile, WriteLog } from '../helpers/write-log';
import { freePort, until } from '../helpers/wait';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 16 * MiB;
const diskId = 'vm1-disk0';

t.test('continuous replication through the process server', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const source = path.join(dir, 'source.img');
  createImage(source, diskBytes, seed, MiB);
  const datastore = path.join(dir, 'ds');
  const replicaPath = path.join(datastore, `${diskId}.img`);
  const [agentAddress, mtAddress] = await Promise.all([freePort(), freePort()]);
  const startAgent = () => startDaemon('agent', { args: ['--name', 'agent1', '--listen', agentAddress, '--data-dir', path.join(dir, 'agent'), '--disk', source, '--freeze-hook', 'true'] });
  const startMasterTarget = () => startDaemon('master-target', { args: ['--name', 'mt1', '--listen', mtAddress, '--data-dir', path.join(dir, 'mt'), '--datastore-root', datastore] });
  let agent: RunningDaemon = await startAgent();
  let masterTarget: RunningDaemon = await startMasterTarget();
  // Little memory per disk: most of a backlog is read back from the segments. A small cache: segments of 8 MiB.
  const processServer = await startDaemon('process-server', {
    args: ['--name', 'ps1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'ps'), '--memory-queue-bytes-max', String(MiB), '--batch-bytes-max', String(4 * MiB), '--cache-bytes-max', String(64 * MiB)],
  });
  const ps = processServerClient(processServer.address);
  const mt = masterTargetClient(mtAddress);
  t.teardown(async () => {
    ps.close();
    mt.close();
    await Promise.all([agent.stop(), masterTarget.stop(), processServer.stop()]);
  });
  await unary(mt, mt.createReplica, { diskId, path: replicaPath, diskBytes, epoch: 1 });

  const request: StartReplicationRequest = { diskId, epoch: 1, agentAddress, sourcePath: source, masterTargetAddress: mtAddress, captureMode: 'CAPTURE_WRITE_THROUGH', crashConsistentIntervalMs: 300, tag: 'first' };
  const status = () => unary(ps, ps.getReplication, { diskId });
  const log = new WriteLog(fs.readFileSync(source));
  let writer = new WriteThroughClient(agentAddress);
  t.teardown(() => writer.close());
  /** Writes through the agent for a while, about 2 MB/s, logging each write with its change record. */
  const writeFor = async (ms: number, into: WriteLog) => {
    const endAt = Date.now() + ms;
    while (Date.now() < endAt) {
      const writes = Array.from({ length: 8 }, () => randomWrite(random, diskBytes));
      const done = await Promise.all(writes.map((write) => writer.write(source, write.offset, write.data)));
      done.forEach((written, index) => into.add({ ...written, ...writes[index] }));
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  /** Every point of the current capture materialises to the logged source at its change sequence. */
  const checkPoints = async (t: Test, into: WriteLog, most = 12) => {
    const { recoveryPoints } = await unary(mt, mt.listRecoveryPoints, { diskId });
    const ours = recoveryPoints.filter((point) => point.captureId === into.captureId);
    t.ok(ours.length > 0, `${ours.length} points of capture ${into.captureId}`);
    // The newest, the oldest and some between: each one costs a materialisation.
    const step = Math.max(1, Math.ceil(ours.length / most));
    const chosen = ours.filter((_, index) => index % step === 0 || index === ours.length - 1);
    for (const point of chosen) {
      const target = path.join(datastore, 'restore', `${point.sequence}.img`);
      const materialised = await unary(mt, mt.materialiseRecoveryPoint, { recoveryPointId: point.id, path: target });
      t.equal(sha256OfFile(materialised.path), into.hashAt(point.changeSequence), `${point.id} (${point.kind}, change ${point.changeSequence}) is the source after change ${point.changeSequence}`);
      fs.rmSync(materialised.path);
    }
    return ours;
  };

  t.test('refusals', async (t) => {
    await t.rejects(unary(ps, ps.startReplication, { ...request, captureMode: 'CAPTURE_MODE_UNSPECIFIED' }), { code: grpc.status.INVALID_ARGUMENT, details: /capture_mode/ });
    await t.rejects(unary(ps, ps.startReplication, { ...request, crashConsistentIntervalMs: 10 }), { code: grpc.status.INVALID_ARGUMENT, details: /crash_consistent_interval_ms/ });
    await t.rejects(unary(ps, ps.startReplication, { ...request, diskId: '../x' }), { code: grpc.status.INVALID_ARGUMENT, details: /disk_id/ });
    await t.rejects(unary(ps, ps.startReplication, { ...request, agentAddress: 'nowhere' }), { code: grpc.status.INVALID_ARGUMENT, details: /agent_address/ });
    await t.rejects(unary(ps, ps.getReplication, { diskId: 'vm9' }), { code: grpc.status.NOT_FOUND });
  });

  t.test('write-through writes become exact points, writes during the first sync included', async (t) => {
    const started = await unary(ps, ps.startReplication, request);
    t.equal(started.epoch, 1);
    t.equal(started.crashConsistentIntervalMs, 300);
    await until('the capture', async () => (await status()).captureId);
    // These writes race the first sync: their records are replayed after it.
    await writeFor(2_000, log);
    const synced = await until('replicating with points', async () => {
      const current = await status();
      return current.state === 'REPLICATION_REPLICATING' && current.recoveryPoints > 0 && current;
    }, 60_000);
    t.equal(synced.sync?.state, 'SYNC_STATE_COMPLETED', 'the first sync completed');
    t.equal(synced.sync?.mode, 'SYNC_MODE_FULL', 'a new replica gets a full sync');
    t.equal(synced.sync?.noRecoveryPoint, true, 'and it made no point');
    t.equal(synced.resyncs, 0);
    // The rates are moving averages over the last seconds: read them while writes flow (read after the checks below,
    // on a loaded machine, they may already have decayed to 0).
    const [, during] = await Promise.all([writeFor(2_000, log), new Promise((resolve) => setTimeout(resolve, 1_500)).then(status)]);
    t.ok(during.applyBytesPerSecond > 0 && during.receiveBytesPerSecond > 0, `rates while writing: ${during.receiveBytesPerSecond} B/s in, ${during.applyBytesPerSecond} B/s applied`);
    const flushed = await unary(ps, ps.flushReplication, { diskId, timeoutMs: 30_000 });
    const point = flushed.recoveryPoint!;
    t.ok(point.changeSequence >= log.lastSequence, `the flushed point (change ${point.changeSequence}) covers every write (last ${log.lastSequence})`);
    t.equal(point.captureId, log.captureId);
    t.equal(flushed.status?.backlogBytes, 0, 'nothing left to apply');
    t.equal(sha256File(replicaPath), sha256File(source), 'the replica equals the source');
    const points = await checkPoints(t, log);
    t.equal(points[0].tag, 'first', "the session's first point has StartReplication's tag");
    t.ok(points.length >= 5, `points kept coming (${points.length} in about 3 s at 300 ms)`);
    const after = await status();
    t.ok(after.appliedSequence >= log.lastSequence && after.receivedSequence >= log.lastSequence, 'received and applied sequences');
    t.ok(after.batchesApplied > 0 && after.bytesApplied > 0 && after.bytesSent > 0, 'counters move');
    t.equal(after.etaMs, 0);
    t.ok(after.rpoMs < 10_000, `rpo ${after.rpoMs} ms`);
    t.ok(after.agentConnected && after.masterTargetConnected);
    const server = await unary(ps, ps.getStatus, {});
    t.equal(server.replications, 1);
    t.ok(server.cacheBytesMax > 0 && server.cacheDir.endsWith('cache'), `cache ${server.cacheDir}, at most ${server.cacheBytesMax} bytes`);
    // The same epoch again: idempotent, and the interval may change.
    const again = await unary(ps, ps.startReplication, { ...request, crashConsistentIntervalMs: 400 });
    t.equal(again.crashConsistentIntervalMs, 400);
    t.equal(again.captureId, after.captureId, 'the same session');
    await t.rejects(unary(ps, ps.startReplication, { ...request, epoch: 0 }), { code: grpc.status.INVALID_ARGUMENT });
    await t.rejects(unary(ps, ps.startReplication, { ...request, sourcePath: '/elsewhere' }), { code: grpc.status.FAILED_PRECONDITION });
  });

  t.test('app and group markers close points of their kind, with their tags', async (t) => {
    const agentSide = agentClient(agentAddress);
    t.teardown(() => agentSide.close());
    await writeFor(300, log);
    const app = await unary(agentSide, agentSide.takeAppConsistentPoint, { paths: [source], tag: 'app-1' });
    await writeFor(300, log);
    const barrier = await unary(agentSide, agentSide.prepareBarrier, { barrierId: 'barrier-1', paths: [source], holdMs: 2_000 });
    await unary(agentSide, agentSide.releaseBarrier, { barrierId: 'barrier-1' });
    await writeFor(300, log);
    await unary(ps, ps.flushReplication, { diskId, timeoutMs: 30_000 });
    const { recoveryPoints } = await unary(mt, mt.listRecoveryPoints, { diskId });
    const appPoint = recoveryPoints.find((point) => point.kind === 'APP_CONSISTENT' && point.tag === 'app-1');
    const groupPoint = recoveryPoints.find((point) => point.kind === 'GROUP_CONSISTENT' && point.tag === 'barrier-1');
    t.equal(appPoint?.changeSequence, app.markers[0]?.sequence, 'the app-consistent point ends at its marker');
    t.equal(groupPoint?.changeSequence, barrier.markers[0]?.sequence, 'the group point ends at its marker, tagged with the barrier id');
    for (const point of [appPoint, groupPoint]) {
      if (!point) continue;
      const materialised = await unary(mt, mt.materialiseRecoveryPoint, { recoveryPointId: point.id, path: path.join(datastore, 'restore', `${point.kind}.img`) });
      t.equal(sha256OfFile(materialised.path), log.hashAt(point.changeSequence), `${point.kind} ${point.id} is exact`);
      fs.rmSync(materialised.path);
    }
  });

  t.test('master target away: the journal holds the backlog, then everything is applied in order', async (t) => {
    await masterTarget.kill();
    const away = await until('the session to see the master target gone', async () => {
      await writeFor(300, log);
      const current = await status();
      return !current.masterTargetConnected && current.backlogBytes > 0 && current;
    });
    await writeFor(1_500, log);
    const degraded: ReplicationStatus__Output = await status();
    t.equal(degraded.state, 'REPLICATION_DEGRADED');
    t.match(degraded.stateReason, /master target/);
    t.ok(degraded.backlogBytes > away.backlogBytes, `backlog grows: ${away.backlogBytes} then ${degraded.backlogBytes} bytes`);
    t.ok(degraded.cacheBytes > 0, `${degraded.cacheBytes} journal bytes in the cache`);
    t.ok(degraded.rpoMs > away.rpoMs, `rpo grows: ${away.rpoMs} then ${degraded.rpoMs} ms`);
    // The apply rate is a 10 s moving average: it falls to 0 (eta -1) only 10 s after the last apply.
    t.not(degraded.etaMs, 0, `a backlog has an eta (${degraded.etaMs} ms)`);
    t.ok(degraded.receivedSequence > degraded.appliedSequence);
    const server = await unary(ps, ps.getStatus, {});
    t.ok(server.backlogBytes >= degraded.backlogBytes && server.cacheBytes > 0);

    await t.rejects(unary(ps, ps.flushReplication, { diskId, timeoutMs: 300 }), { code: grpc.status.DEADLINE_EXCEEDED }, 'a flush cannot finish while the master target is away');
    masterTarget = await startMasterTarget();
    const flushed = await unary(ps, ps.flushReplication, { diskId, timeoutMs: 60_000 });
    t.ok(flushed.recoveryPoint!.changeSequence >= log.lastSequence, 'the backlog was applied');
    const drained = await status();
    t.equal(drained.backlogBytes, 0, 'backlog back to 0');
    t.equal(drained.state, 'REPLICATION_REPLICATING');
    t.equal(sha256File(replicaPath), sha256File(source), 'the replica equals the source');
    await checkPoints(t, log);
    await until('applied segments to be deleted', async () => (await status()).cacheBytes === 0);
  });

  t.test('a restarted agent has a new capture: the session resyncs and converges', async (t) => {
    await writer.close();
    await agent.stop();
    agent = await startAgent();
    const resynced = await until('the resync under the new capture', async () => {
      const current = await status();
      return current.resyncs === 1 && current.state === 'REPLICATION_REPLICATING' && current.captureId !== log.captureId && current;
    }, 60_000);
    t.equal(resynced.sync?.mode, 'SYNC_MODE_DELTA', 'a delta sync');
    writer = new WriteThroughClient(agentAddress);
    const second = new WriteLog(fs.readFileSync(source));
    await writeFor(1_500, second);
    t.equal(second.captureId, resynced.captureId, 'writes go to the new capture');
    const flushed = await unary(ps, ps.flushReplication, { diskId, timeoutMs: 30_000 });
    t.ok(flushed.recoveryPoint!.changeSequence >= second.lastSequence);
    t.equal(sha256File(replicaPath), sha256File(source), 'the replica equals the source');
    await checkPoints(t, second, 6);
    // Agent gone and back: write-through points resume.
    const agentSide = agentClient(agentAddress);
    const { captures } = await unary(agentSide, agentSide.listCaptures, {});
    agentSide.close();
    t.ok(captures.some((capture) => capture.captureId === resynced.captureId && capture.streaming), 'the process server streams the new capture');
  });

  t.test('ResyncReplication runs a delta sync under the running capture; points stay exact', async (t) => {
    const before = await status();
    const asked = await unary(ps, ps.resyncReplication, { diskId, full: false });
    t.equal(asked.resyncs, before.resyncs + 1);
    const second = new WriteLog(fs.readFileSync(source));
    // Writes during the resync: replayed after it, under the same capture.
    await writeFor(1_000, second);
    const done = await until('the resync to end', async () => {
      const current = await status();
      return current.state === 'REPLICATION_REPLICATING' && current;
    }, 60_000);
    t.equal(done.captureId, before.captureId, 'the same capture');
    t.equal(done.sync?.mode, 'SYNC_MODE_DELTA');
    const flushed = await unary(ps, ps.flushReplication, { diskId, timeoutMs: 30_000 });
    t.ok(flushed.recoveryPoint!.changeSequence >= second.lastSequence);
    t.equal(sha256File(replicaPath), sha256File(source), 'the replica equals the source');
    const { recoveryPoints } = await unary(mt, mt.listRecoveryPoints, { diskId });
    // Points made after the resync: every write before it is in the base of the second log.
    const lastBefore = Number(before.latestRecoveryPointId.split('@')[1] ?? 0);
    const after = recoveryPoints.filter((point) => point.captureId === before.captureId && point.sequence > lastBefore);
    t.ok(after.length > 0, `${after.length} points since the resync`);
    for (const point of after) {
      const materialised = await unary(mt, mt.materialiseRecoveryPoint, { recoveryPointId: point.id, path: path.join(datastore, 'restore', `resync-${point.sequence}.img`) });
      t.equal(sha256OfFile(materialised.path), second.hashAt(point.changeSequence), `${point.id} after the resync is exact`);
      fs.rmSync(materialised.path);
    }
  });

  t.test('a newer epoch replaces the session; an older one is refused', async (t) => {
    await unary(mt, mt.setEpoch, { diskId, epoch: 2 });
    const replaced = await unary(ps, ps.startReplication, { ...request, epoch: 2 });
    t.equal(replaced.epoch, 2);
    t.equal(replaced.resyncs, 0, 'a new session');
    await t.rejects(unary(ps, ps.startReplication, request), { code: grpc.status.FAILED_PRECONDITION, details: /epoch/ });
    const running = await until('the new session to replicate', async () => {
      const current = await status();
      return current.state === 'REPLICATION_REPLICATING' && current;
    }, 60_000);
    t.equal(running.sync?.mode, 'SYNC_MODE_DELTA', 'the replica holds the disk already: a delta sync');
    await unary(ps, ps.flushReplication, { diskId, timeoutMs: 30_000 });
    t.equal(sha256File(replicaPath), sha256File(source), 'the replica equals the source');
  });

  t.test('StopReplication forgets the session and its journal', async (t) => {
    const stopped = await unary(ps, ps.stopReplication, { diskId });
    t.equal(stopped.state, 'REPLICATION_STOPPED');
    t.same((await unary(ps, ps.listReplications, {})).replications, []);
    t.same(fs.readdirSync(path.join(dir, 'ps', 'cache')), [], 'no journal left');
    t.same(fs.readdirSync(path.join(dir, 'ps', 'replications')), [], 'no session record left');
  });
});
