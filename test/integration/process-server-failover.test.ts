// Goal: what a planned failover needs from the process server in scan mode
// (docs/failover.md: shutdown-source, drain, verify, fence):
//   - FlushReplication asks the agent for a pass that starts after the
//     request (the scan interval here is a minute, so nothing else would run
//     one) and resolves with the point that pass made; after ShutdownSource
//     (the source no longer changes) that point is the source: materialised,
//     its sha256 is the source's, and the replica's hash tree root equals the
//     agent's (the verify step);
//   - StopReplication stops the agent's capture, and a stopped session never
//     sends again, even after the process server restarts.
// The source is changed behind the agent's back, as a machine's own writes
// are in scan mode. Prints its seed.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { agentClient, masterTargetClient, processServerClient, unary } from '../helpers/clients';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { changeBlocks, createImage, sha256File } from '../helpers/disks';
import { until } from '../helpers/wait';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 16 * MiB;
const diskId = 'vm7-disk0';
/** Longer than the test: every pass after the first is one a flush asked for. */
const scanIntervalMs = 10 * 60_000;

t.test('scan flush after ShutdownSource: the point is the source; StopReplication ends it for good', async (t) => {
  t.comment(`seed ${seed}`);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const source = path.join(dir, 'source.img');
  createImage(source, diskBytes, seed, MiB);
  const datastore = path.join(dir, 'ds');
  const hookLog = path.join(dir, 'shutdown.log');
  const agent = await startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'agent'), '--disk', source, '--shutdown-hook', `echo "$DRPLANE_MACHINE $DRPLANE_DISKS" >> ${hookLog}`] });
  const masterTarget = await startDaemon('master-target', { args: ['--name', 'mt1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt'), '--datastore-root', datastore] });
  const psArgs = ['--name', 'ps1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'ps'), '--cache-bytes-max', String(64 * MiB)];
  let processServer: RunningDaemon = await startDaemon('process-server', { args: psArgs });
  let ps = processServerClient(processServer.address);
  const mt = masterTargetClient(masterTarget.address);
  const ag = agentClient(agent.address);
  t.teardown(async () => {
    ps.close();
    mt.close();
    ag.close();
    await Promise.all([agent.stop(), masterTarget.stop(), processServer.stop()]);
  });
  await unary(mt, mt.createReplica, { diskId, path: path.join(datastore, `${diskId}.img`), diskBytes, epoch: 1 });
  await unary(ps, ps.startReplication, { diskId, epoch: 1, agentAddress: agent.address, sourcePath: source, masterTargetAddress: masterTarget.address, captureMode: 'CAPTURE_SCAN', scanIntervalMs, crashConsistentIntervalMs: 1_000 });
  const status = () => unary(ps, ps.getReplication, { diskId });
  const materialise = async (pointId: string, name: string) => {
    const materialised = await unary(mt, mt.materialiseRecoveryPoint, { recoveryPointId: pointId, path: path.join(datastore, 'restore', `${name}.img`) });
    const hash = sha256File(materialised.path);
    fs.rmSync(materialised.path);
    return hash;
  };
  const passes = async () => (await unary(ag, ag.listCaptures, {})).captures[0]?.scanPasses ?? 0;

  await t.test('a flush during the first sync: the point of a pass asked for', async (t) => {
    await until('the capture', async () => (await status()).captureId !== '' && true);
    const flushed = await unary(ps, ps.flushReplication, { diskId, timeoutMs: 60_000 });
    t.equal(flushed.recoveryPoint?.kind, 'CRASH_CONSISTENT');
    t.equal(await materialise(flushed.recoveryPoint!.id, 'first'), sha256File(source), 'the first point is the source');
    t.equal(flushed.status?.state, 'REPLICATION_REPLICATING');
  });

  await t.test('changes, ShutdownSource, flush: the point equals the source', async (t) => {
    const before = await status();
    const changed = changeBlocks(source, 0.02, seed + 1);
    const shutdown = await unary(ag, ag.shutdownSource, { paths: [source], machine: 'vm7', reason: 'planned failover job-7' });
    t.equal(shutdown.hookRan, true);
    t.equal(fs.readFileSync(hookLog, 'utf8'), `vm7 ${source}\n`);
    const expected = sha256File(source);
    const passesBefore = await passes();
    const started = Date.now();
    const flushed = await unary(ps, ps.flushReplication, { diskId, timeoutMs: 60_000 });
    const tookMs = Date.now() - started;
    const point = flushed.recoveryPoint!;
    t.comment(`${changed} bytes changed; flush took ${tookMs} ms and ${(await passes()) - passesBefore} passes; point ${point.id} at record ${point.changeSequence}`);
    t.ok(tookMs < scanIntervalMs / 10, 'the flush did not wait for a scheduled pass');
    t.ok(point.changeSequence > before.receivedSequence, 'the point follows the changes');
    t.equal(flushed.status?.backlogBytes, 0);
    t.equal(await materialise(point.id, 'shutdown'), expected, 'the point is the source as the shutdown left it');
    // The failover's verify step: the roots of the source's and the replica's hash trees.
    const [sourceTree, replicaTree] = await Promise.all([unary(ag, ag.openHashTree, { diskId, path: source }), unary(mt, mt.openHashTree, { diskId, rescan: true })]);
    t.same(replicaTree.rootHash, sourceTree.rootHash, 'the replica equals the source');
    t.equal(sha256File(path.join(datastore, `${diskId}.img`)), expected);

    const again = await unary(ps, ps.flushReplication, { diskId, timeoutMs: 60_000 });
    t.ok(again.recoveryPoint!.changeSequence > point.changeSequence, 'each flush gets a pass of its own');
    t.equal(await materialise(again.recoveryPoint!.id, 'again'), expected);
  });

  await t.test('StopReplication stops the capture; a restarted process server does not resume it', async (t) => {
    await unary(ps, ps.stopReplication, { diskId });
    t.same((await unary(ag, ag.listCaptures, {})).captures, [], "the agent's capture is stopped");
    const replicaBefore = await unary(mt, mt.getReplica, { diskId });
    ps.close();
    await processServer.stop();
    processServer = await startDaemon('process-server', { args: psArgs });
    ps = processServerClient(processServer.address);
    t.same((await unary(ps, ps.listReplications, {})).replications, [], 'no session after the restart');
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    t.same((await unary(ag, ag.listCaptures, {})).captures, [], 'no capture was started again');
    t.equal((await unary(mt, mt.getReplica, { diskId })).appliedSequence, replicaBefore.appliedSequence, 'nothing more was applied');
    t.same(fs.readdirSync(path.join(dir, 'ps', 'cache')), [], 'its journal is gone');
  });
});
