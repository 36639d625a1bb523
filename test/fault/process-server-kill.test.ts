// Goal: nothing the agent had acknowledged by the process server is lost when
// the process server is killed. It is SIGKILLed during the first sync, during
// a master target outage (with a journal backlog), and by a failpoint right
// after a group commit, before the agent hears of it; each time it comes back
// on its data directory, resumes the session by itself, and the replica ends
// equal to the source with every point exact (the test keeps the write log).
// Prints its seed.
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import { masterTargetClient, processServerClient, unary } from '../helpers/clients';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { createImage, seededRandom, sha256File } from '../helpers/disks';
import { randomWrite, sha256OfFile, WriteLog } from '../helpers/write-log';
import { freePort, until } from '../helpers/wait';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
// Small, so that materialising and hashing a point is cheap. The first sync still
// spans several batches: 1 MiB data regions (every other one a hole) and 1 MiB
// batches, the smallest the process server takes.
const diskBytes = 16 * MiB;
const regionBytes = MiB;
const batchBytes = MiB;
/** Points materialised per check besides the first, the flushed and the newest one (spread over the points no check listed yet). */
const newPointsSampled = 4;
const diskId = 'vm2-disk0';

t.test('the process server killed at the worst moments loses nothing', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const source = path.join(dir, 'source.img');
  createImage(source, diskBytes, seed, regionBytes);
  const datastore = path.join(dir, 'ds');
  const replicaPath = path.join(datastore, `${diskId}.img`);
  const [agentAddress, mtAddress] = await Promise.all([freePort(), freePort()]);
  const startMasterTarget = () => startDaemon('master-target', { args: ['--name', 'mt1', '--listen', mtAddress, '--data-dir', path.join(dir, 'mt'), '--datastore-root', datastore] });
  let processServer!: RunningDaemon;
  let ps: ReturnType<typeof processServerClient>;
  const startProcessServer = async (failpoints = '') => {
    processServer = await startDaemon('process-server', {
      env: { DRPLANE_FAILPOINTS: failpoints },
      args: ['--name', 'ps1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'ps'), '--batch-bytes-max', String(batchBytes), '--cache-bytes-max', String(64 * MiB), '--memory-queue-bytes-max', String(MiB)],
    });
    ps = processServerClient(processServer.address);
  };
  // The three start together (none needs another to start).
  const [agent, firstMasterTarget] = await Promise.all([
    startDaemon('agent', { args: ['--name', 'agent1', '--listen', agentAddress, '--data-dir', path.join(dir, 'agent'), '--disk', source] }),
    startMasterTarget(),
    // The first process server closes each batch 300 ms late: its first sync (8 batches) lasts long enough
    // for the kill below to land inside it. The ones started after the kills run at full speed.
    startProcessServer('batch-stream.closing=sleep:300'),
  ]);
  let masterTarget: RunningDaemon = firstMasterTarget;
  const mt = masterTargetClient(mtAddress);
  const writer = new WriteThroughClient(agentAddress);
  t.teardown(async () => {
    await writer.close();
    ps.close();
    mt.close();
    await Promise.all([agent.stop(), masterTarget.stop(), processServer.stop()]);
  });
  await unary(mt, mt.createReplica, { diskId, path: replicaPath, diskBytes, epoch: 1 });

  const log = new WriteLog(fs.readFileSync(source));
  let writing = true;
  let workload: Promise<void> = Promise.resolve();
  /** A workload that goes on whatever happens to the process server (the agent holds what is not acknowledged). */
  const startWorkload = () =>
    (workload = (async () => {
      while (writing) {
        const writes = Array.from({ length: 8 }, () => randomWrite(random, diskBytes));
        const done = await Promise.all(writes.map((write) => writer.write(source, write.offset, write.data)));
        done.forEach((written, index) => log.add({ ...written, ...writes[index] }));
        await new Promise((resolve) => setTimeout(resolve, 40));
      }
    })());
  t.teardown(async () => {
    writing = false;
    await workload.catch(() => undefined);
  });
  const status = () => unary(ps, ps.getReplication, { diskId });
  /** The newest point a check has listed: each point is in one check's spread only (the check after it appears). */
  let checkedSequence = 0;
  /**
   * Drains and checks: the replica equals the source, and the capture's points
   * materialise exactly: the first one (at every check: old points survive what
   * happened since), the flushed one, the newest one, and a spread of the points
   * made since the previous check.
   */
  const converged = async (t: Test) => {
    // What the process server had received when the flush was asked for (the workload may go on meanwhile).
    const receivedBefore = (await status()).receivedSequence;
    const flushed = await unary(ps, ps.flushReplication, { diskId, timeoutMs: 60_000 });
    t.ok(flushed.recoveryPoint!.changeSequence >= receivedBefore, `the flushed point (change ${flushed.recoveryPoint!.changeSequence}) covers what was received before the flush (${receivedBefore})`);
    const { recoveryPoints } = await unary(mt, mt.listRecoveryPoints, { diskId });
    const points = recoveryPoints.filter((point) => point.captureId === log.captureId);
    const fresh = points.filter((point) => point.sequence > checkedSequence && point !== points[0] && point !== points[points.length - 1] && point.id !== flushed.recoveryPoint!.id);
    const step = Math.max(1, Math.ceil(fresh.length / newPointsSampled));
    const sampled = new Set([points[0]?.id, ...fresh.filter((_, index) => index % step === 0).map((point) => point.id), flushed.recoveryPoint!.id, points[points.length - 1]?.id]);
    t.ok(points.some((point) => point.id === flushed.recoveryPoint!.id), 'the flushed point is one of the capture\'s points');
    for (const point of points.filter((candidate) => sampled.has(candidate.id))) {
      const materialised = await unary(mt, mt.materialiseRecoveryPoint, { recoveryPointId: point.id, path: path.join(datastore, 'restore', `${point.sequence}.img`) });
      t.equal(sha256OfFile(materialised.path), log.hashAt(point.changeSequence), `${point.id} (change ${point.changeSequence}) is exact`);
      fs.rmSync(materialised.path);
    }
    checkedSequence = Math.max(checkedSequence, ...points.map((point) => point.sequence));
    return flushed.status!;
  };

  t.test('killed during the first sync', async (t) => {
    await unary(ps, ps.startReplication, { diskId, epoch: 1, agentAddress, sourcePath: source, masterTargetAddress: mtAddress, captureMode: 'CAPTURE_WRITE_THROUGH', crashConsistentIntervalMs: 500 });
    await until('the capture', async () => (await status()).captureId);
    startWorkload();
    const syncing = await until('the first sync to send a batch', async () => {
      const current = await status();
      return ((current.sync?.batchesAcked ?? 0) >= 1 || current.state === 'REPLICATION_REPLICATING') && current;
    });
    await processServer.kill();
    t.equal(syncing.state, 'REPLICATION_SYNCING', `killed during the first sync, after ${syncing.sync?.batchesAcked} of its batches were acknowledged`);
    await startProcessServer();
    const resumed = await until('the resumed session to replicate', async () => {
      const current = await status();
      return current.state === 'REPLICATION_REPLICATING' && current;
    }, 60_000);
    t.equal(resumed.resyncs, 0, 'the same capture: no resync');
    t.equal(resumed.captureId, log.captureId);
    await converged(t);
  });

  t.test('killed while the master target is away', async (t) => {
    await masterTarget.kill();
    await until('a backlog in the journal', async () => {
      const current = await status();
      return !current.masterTargetConnected && current.backlogBytes > 2 * MiB && current;
    });
    const before = await status();
    await processServer.kill();
    // The workload goes on: the agent holds what the dead process server never acknowledged.
    const loggedAtKill = log.length;
    await until('writes the dead process server never acknowledged', async () => log.length >= loggedAtKill + 24);
    await startProcessServer();
    const reopened = await until('the session back with its journal', async () => {
      const current = await status();
      return current.receivedSequence >= before.receivedSequence && current.agentConnected && current;
    });
    t.ok(reopened.backlogBytes >= before.backlogBytes, `the journal kept its backlog (${before.backlogBytes} bytes before, ${reopened.backlogBytes} after)`);
    t.equal(reopened.state, 'REPLICATION_DEGRADED', 'the master target is still away');
    masterTarget = await startMasterTarget();
    const final = await converged(t);
    t.equal(final.resyncs, 0, 'nothing was lost, so nothing needed a resync');
  });

  t.test('killed right after a group commit, before the agent heard of it', async (t) => {
    await processServer.stop();
    await startProcessServer('journal.synced=crash@20');
    const exit = await processServer.exited;
    t.equal(exit.signal, 'SIGKILL', 'the failpoint killed the process server');
    await startProcessServer();
    const final = await converged(t);
    t.equal(final.resyncs, 0);
    writing = false;
    await workload;
    const drained = await converged(t);
    t.ok(drained.appliedSequence >= log.lastSequence, `every write logged is applied (${log.lastSequence})`);
    t.equal(drained.backlogBytes, 0, 'the workload stopped: nothing left to apply');
    t.equal(sha256File(replicaPath), sha256File(source), 'the replica equals the source');
  });
});
