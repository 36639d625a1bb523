// Goal: a scan-mode session makes points only where the agent's passes say the
// source was consistent (quiet passes here), each equal to the source then;
// FlushReplication waits until everything received is applied and returns the
// newest point. The source is changed behind the agent's back, as a workload
// that does not write through the agent would. Prints its seed.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { masterTargetClient, processServerClient, unary } from '../helpers/clients';
import { startDaemon, tempDir } from '../helpers/daemons';
import { changeBlocks, createImage, sha256File } from '../helpers/disks';
import { sha256OfFile } from '../helpers/write-log';
import { until } from '../helpers/wait';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 16 * MiB;
const diskId = 'vm4-disk0';

t.test('scan capture: points at quiet passes, each equal to the source', async (t) => {
  t.comment(`seed ${seed}`);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const source = path.join(dir, 'source.img');
  createImage(source, diskBytes, seed, MiB);
  const datastore = path.join(dir, 'ds');
  const replicaPath = path.join(datastore, `${diskId}.img`);
  const [agent, masterTarget, processServer] = await Promise.all([
    startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'agent'), '--disk', source] }),
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
  await unary(mt, mt.createReplica, { diskId, path: replicaPath, diskBytes, epoch: 1 });
  await unary(ps, ps.startReplication, { diskId, epoch: 1, agentAddress: agent.address, sourcePath: source, masterTargetAddress: masterTarget.address, captureMode: 'CAPTURE_SCAN', scanIntervalMs: 300, crashConsistentIntervalMs: 1_000 });
  const status = () => unary(ps, ps.getReplication, { diskId });
  const first = await until('the first point', async () => {
    const current = await status();
    return current.state === 'REPLICATION_REPLICATING' && current.latestRecoveryPointId !== '' && current;
  }, 60_000);
  t.equal(first.captureMode, 'CAPTURE_SCAN');

  for (let round = 1; round <= 2; round++) {
    changeBlocks(source, 0.01, seed + round);
    const expected = sha256File(source);
    const before = await status();
    // The next quiet pass after the change closes a point: the source has not changed since.
    await until(`a point after change ${round}`, async () => {
      const current = await status();
      return current.receivedSequence > before.receivedSequence && current.appliedSequence === current.receivedSequence && current.latestRecoveryPointId !== before.latestRecoveryPointId && current;
    });
    const flushed = await unary(ps, ps.flushReplication, { diskId, timeoutMs: 30_000 });
    const point = flushed.recoveryPoint!;
    t.equal(point.kind, 'CRASH_CONSISTENT');
    t.equal(flushed.status?.backlogBytes, 0, 'everything received is applied');
    const materialised = await unary(mt, mt.materialiseRecoveryPoint, { recoveryPointId: point.id, path: path.join(datastore, 'restore', `${round}.img`) });
    t.equal(sha256OfFile(materialised.path), expected, `round ${round}: the newest point (${point.id}) is the source after the change`);
    fs.rmSync(materialised.path);
  }
  // Scan points only at markers: every point on the master target ends right after one.
  const { recoveryPoints } = await unary(mt, mt.listRecoveryPoints, { diskId });
  t.ok(recoveryPoints.every((point) => point.kind === 'CRASH_CONSISTENT'), `${recoveryPoints.length} crash-consistent points`);
});
