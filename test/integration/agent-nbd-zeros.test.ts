// Goal (issue 12: "TRIM and WRITE_ZEROES are captured as zeros without
// shipping zero bytes"): qemu-io zeroes 256 MiB of data it wrote before
// through the agent's NBD export (WRITE_ZEROES and TRIM). The capture records
// them as zero runs (records with no data); what the agent streams to the
// process server and what the process server sends to the master target for
// them is a small fraction of 256 MiB; a point from before the zeroing and the
// latest one after it materialise exactly (byte compare, and qemu-img compare
// through NBD). Then, with the master target down, more zero runs are
// journaled (the journal grows by far less than they cover), the process
// server is SIGKILLed and restarted: it reads them back from its journal
// (the agent no longer holds them) and the replica ends equal to the source.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import type { RecoveryPoint__Output } from '../../generated/drplane/v1/RecoveryPoint';
import type { ReplicationStatus__Output } from '../../generated/drplane/v1/ReplicationStatus';
import { unary } from '../../shared/grpc';
import { startDaemon } from '../helpers/daemons';
import { sha256File } from '../helpers/disks';
import { mustSucceed, nbdUri, qemuIo, run, whyNoNbdClients } from '../helpers/nbd';
import { eventually, startStack } from '../helpers/stack';

const MiB = 1024 * 1024;
const diskBytes = 320 * MiB;
const zeroedBytes = 256 * MiB;
const why = whyNoNbdClients();

t.test('TRIM and WRITE_ZEROES travel as zero runs, and every point stays exact', { skip: why || false }, async (t) => {
  const dir = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'drplane-nbd-zeros-'));
  const source = path.join(dir, 'vm1-disk0.img');
  fs.writeFileSync(source, '');
  fs.truncateSync(source, diskBytes);
  const socket = path.join(dir, 'nbd.sock');
  const stack = await startStack(t, { dir, agents: [{ name: 'agent1', disks: [source], args: ['--nbd-listen', `unix:${socket}`] }] });
  const uri = nbdUri(socket);
  const agent = stack.agentClientFor('agent1');

  await stack.drctlJson('policy', 'create', 'fast', '--crash-interval', '1s', '--retention', '1h', '--rpo-threshold', '1m', '--app-interval', '0', '--group-interval', '0');
  await stack.drctlJson('machine', 'add', 'vm1', '--agent', 'agent1', '--disk', source);
  const job = await stack.drctlJson<{ jobId: string }>('enable', 'vm1', '--datastore', path.join(stack.datastore, 'vm1'), '--policy', 'fast', '--capture', 'write-through', '--no-watch');
  const watched = await stack.drctl('job', 'watch', job.jobId);
  t.equal(watched.code, 0, `the enable job succeeded (${watched.stderr.trim()})`);

  const captureOf = async () => (await unary(agent, agent.listCaptures, {})).captures.find((capture) => capture.path === source)!;
  const replication = async (): Promise<ReplicationStatus__Output> => (await unary(stack.psClient, stack.psClient.listReplications, {})).replications[0]!;
  const latestPoint = async () => (await stack.drctlJson<{ recoveryPoints: RecoveryPoint__Output[] }>('points', 'vm1', '--select', 'latest')).recoveryPoints[0]!;
  const materialise = async (point: RecoveryPoint__Output, name: string) => (await unary(stack.csClient, stack.csClient.materialiseRecoveryPoint, { recoveryPointId: point.id, path: path.join(stack.datastore, 'restore', name) })).path;

  // Data first, through NBD: what the zeroing will overwrite.
  await qemuIo(uri, ['write -P 0x5a 0 128M', 'write -P 0xa5 134217728 128M', 'write -P 0x3c 268435456 64M', 'write -P 0x11 1000 3000', 'flush']);
  const before = await latestPoint();
  const atBefore = path.join(dir, 'source-at-before.img');
  fs.copyFileSync(source, atBefore);
  const captureBefore = await captureOf();
  const sentBefore = Number((await replication()).bytesSent);

  // 256 MiB zeroed: WRITE_ZEROES over the first 128 MiB, TRIM over the next, and an unaligned WRITE_ZEROES.
  await qemuIo(uri, ['write -z 0 128M', 'discard 134217728 128M', 'write -z 300000 5000', 'flush']);
  const after = await latestPoint();
  const captureAfter = await captureOf();
  const sentAfter = Number((await replication()).bytesSent);
  t.equal(captureAfter.captureId, captureBefore.captureId, 'one capture throughout (no overflow, no resync)');

  const zeroRuns = Number(captureAfter.zeroRunBytes) - Number(captureBefore.zeroRunBytes);
  const streamed = Number(captureAfter.streamedBytes) - Number(captureBefore.streamedBytes);
  const sent = sentAfter - sentBefore;
  t.comment(`zeroing ${zeroedBytes / MiB} MiB: zero runs recorded ${zeroRuns} bytes; agent -> process server ${streamed} bytes; process server -> master target ${sent} bytes of extent data`);
  t.ok(zeroRuns >= zeroedBytes, `the capture recorded the zeroing as zero runs (${zeroRuns} bytes)`);
  t.ok(streamed < MiB, `the agent streamed ${streamed} bytes for it, far less than ${zeroedBytes}`);
  // Before zero runs the zeros were LZ4-compressed on this hop (about 4 KiB per MiB: 1 MiB here); now no data at all.
  t.ok(sent < 64 * 1024, `the process server sent ${sent} bytes of extent data to the master target for it`);

  const beforeImage = await materialise(before, 'before.img');
  t.equal(sha256File(beforeImage), sha256File(atBefore), `the point from before the zeroing (${before.id}) materialises to the source as it was`);
  const afterImage = await materialise(after, 'after.img');
  t.equal(sha256File(afterImage), sha256File(source), `the point after it (${after.id}) materialises equal to the source`);
  t.match(mustSucceed(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', afterImage, uri]), 'qemu-img compare').stdout, /Images are identical/, 'qemu-img compare, reading the source through NBD, agrees');
  fs.rmSync(beforeImage);
  fs.rmSync(afterImage);

  // The master target away: zero runs wait in the process server's journal.
  await stack.mt.stop();
  const journalBefore = Number((await replication()).cacheBytes);
  await qemuIo(uri, ['write -z 268435456 64M', 'write -P 0x99 4096 4096', 'flush']);
  const nextSequence = Number((await captureOf()).nextSequence);
  const journaled = await eventually('the process server to journal every record and the agent to drop them', async () => {
    const [status, capture] = await Promise.all([replication(), captureOf()]);
    return Number(status.receivedSequence) >= nextSequence - 1 && Number(capture.firstHeldSequence) >= nextSequence ? status : undefined;
  });
  const journalGrowth = Number(journaled.cacheBytes) - journalBefore;
  t.ok(journalGrowth < MiB, `64 MiB of zero runs and a 4 KiB write grew the journal by ${journalGrowth} bytes`);
  t.ok(Number(journaled.appliedSequence) < nextSequence - 1, `they are not applied yet (applied ${journaled.appliedSequence} of ${nextSequence - 1})`);

  await stack.ps.kill();
  const ps = await startDaemon('process-server', { args: stack.restartArgs.ps });
  t.teardown(() => ps.stop());
  const opened = await ps.waitForLog((line) => line.msg === 'journal opened');
  t.ok(Number(opened.durableSequence) >= nextSequence - 1, `the restarted process server read its journal back (durable through ${opened.durableSequence})`);
  const mt = await startDaemon('master-target', { args: stack.restartArgs.mt });
  t.teardown(() => mt.stop());
  const restarted = await eventually('a point at the last record after the restart', async () => {
    const point = await latestPoint();
    return Number(point.changeSequence) >= nextSequence - 1 ? point : undefined;
  }, 120_000, 1_000);
  const restartedImage = await materialise(restarted, 'restarted.img');
  t.equal(sha256File(restartedImage), sha256File(source), `after the restart, the zero runs read back from the journal are applied: ${restarted.id} equals the source`);
});
