// Goal: the operator's walkthrough works end to end through drctl, against the
// real daemons: register, add a machine, enable continuous replication (the job
// ends at the first recovery point after the initial sync, and the replica
// equals the source), list and materialise its recovery point, resync after a
// change; a configuration server killed in the middle of a job resumes the job;
// and a job watched while the configuration server stops on SIGTERM ends the
// watch with UNAVAILABLE from drplane's error table (its code in the metadata).
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { changeBlocks, createImage, sha256File } from '../helpers/disks';
import { configurationServerClient, processServerClient, unary } from '../helpers/clients';
import { runDrctl, type DrctlRun } from '../helpers/stack';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;

/** Runs drctl as an operator would, with --json. */
function drctl(server: string, ...args: string[]): Promise<DrctlRun> {
  return runDrctl(server, '--json', ...args);
}

/** Runs drctl, expects success, and parses its JSON. */
async function drctlJson<T = Record<string, unknown>>(t: tap.Test, server: string, ...args: string[]): Promise<T> {
  const run = await drctl(server, ...args);
  if (run.code !== 0) t.fail(`drctl ${args.join(' ')} exited ${run.code}: ${run.stderr}`);
  return JSON.parse(run.stdout) as T;
}

interface Site {
  dir: string;
  /** One source disk per entry of `sourceBytes`, in order. */
  sources: string[];
  cs: RunningDaemon;
  /** The process server's address (its sessions' own figures). */
  psAddress: string;
  csArgs: string[];
  passphraseFile: string;
}

/** A configuration server, a process server, a master target and an agent with one source disk per size, all registered. */
async function startSite(t: tap.Test, sourceBytes: number[]): Promise<Site> {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const sources = sourceBytes.map((bytes, index) => {
    const source = path.join(dir, `source${index}.img`);
    createImage(source, bytes, seed + index);
    return source;
  });
  const csArgs = ['--data-dir', path.join(dir, 'cs')];
  const cs = await startDaemon('configuration-server', { args: ['--listen', '127.0.0.1:0', ...csArgs] });
  t.teardown(() => cs.stop());
  const passphraseFile = path.join(dir, 'cs', 'passphrase');
  const link = ['--configuration-server', cs.address, '--passphrase-file', passphraseFile];
  const [ps, mt, agent] = await Promise.all([
    startDaemon('process-server', { args: ['--name', 'ps1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'ps'), ...link] }),
    startDaemon('master-target', { args: ['--name', 'mt1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt'), '--datastore-root', path.join(dir, 'ds'), ...link] }),
    startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'agent'), ...sources.flatMap((source) => ['--disk', source]), ...link] }),
  ]);
  for (const daemon of [ps, mt, agent]) {
    t.teardown(() => daemon.stop());
    await daemon.waitForLog((line) => line.msg === 'registered with the configuration server');
  }
  return { dir, sources, cs, psAddress: ps.address, csArgs, passphraseFile };
}

// Both tests use one site (its daemons' start-ups are not what either is about):
// the walkthrough replicates vm1 from the first disk, the killed configuration
// server's job enables vm2 from the second.
const walkthroughDiskBytes = 8 * MiB;
// The kill lands at once, while the job still runs: an enable job ends at the
// first point after the sync, which a scan capture makes at its first quiet pass,
// a scan interval (5 s by default) after the sync; the disk size does not matter.
const killedJobDiskBytes = 16 * MiB;
let site: Site;
t.before(async () => {
  site = await startSite(t, [walkthroughDiskBytes, killedJobDiskBytes]);
});

t.test('the walkthrough: enable, points, materialise, resync', async (t) => {
  t.comment(`seed ${seed}`);
  const diskBytes = walkthroughDiskBytes;
  const { dir, cs } = site;
  const source = site.sources[0]!;
  const server = cs.address;
  const originalHash = sha256File(source);

  const servers = await drctlJson<{ servers: { kind: string; name: string; healthy: boolean }[] }>(t, server, 'servers');
  t.same(servers.servers.map((entry) => [entry.kind, entry.name, entry.healthy]).sort(), [
    ['AGENT', 'agent1', true],
    ['MASTER_TARGET', 'mt1', true],
    ['PROCESS_SERVER', 'ps1', true],
  ]);

  const unknownAgent = await drctl(server, 'machine', 'add', 'vm0', '--agent', 'nobody', '--disk', source);
  t.equal(unknownAgent.code, 1);
  t.match(unknownAgent.stderr, /^drctl: NOT_FOUND: .*nobody/);

  const added = await drctlJson<{ name: string; state: string; disks: { diskId: string; diskBytes: number }[] }>(t, server, 'machine', 'add', 'vm1', '--agent', 'agent1', '--disk', source);
  t.match(added, { name: 'vm1', state: 'UNPROTECTED', disks: [{ diskId: 'vm1-disk0', diskBytes }] });
  const duplicate = await drctl(server, 'machine', 'add', 'vm1', '--agent', 'agent1', '--disk', source);
  t.match(duplicate.stderr, /^drctl: ALREADY_EXISTS: /);

  const notYet = await drctl(server, 'points', 'vm1');
  t.match(notYet.stderr, /^drctl: FAILED_PRECONDITION: machine vm1 is not replicated: drctl enable/);
  const relative = await drctl(server, 'enable', 'vm1', '--datastore', 'ds/vm1');
  t.match(relative.stderr, /^drctl: INVALID_ARGUMENT: datastore: must be an absolute path/);
  const noSuchTarget = await drctl(server, 'enable', 'vm1', '--datastore', path.join(dir, 'ds', 'vm1'), '--master-target', 'mt9');
  t.match(noSuchTarget.stderr, /^drctl: NOT_FOUND: no master target named "mt9" is registered \(registered: mt1\)/);
  t.equal((await drctlJson<{ state: string }>(t, server, 'machine', 'show', 'vm1')).state, 'UNPROTECTED', 'refused requests change nothing');

  const enabled = await drctlJson<{ state: string; kind: string; bytesTotal: number; percent: number }>(t, server, 'enable', 'vm1', '--datastore', path.join(dir, 'ds', 'vm1'));
  t.match(enabled, { state: 'JOB_SUCCEEDED', kind: 'enable-replication', bytesTotal: diskBytes, percent: 100 });
  t.equal(sha256File(path.join(dir, 'ds', 'vm1', 'vm1-disk0.img')), originalHash, 'the replica equals the source');

  const machine = await drctlJson<{ state: string; disks: { epoch: number; latestRecoveryPointId: string }[] }>(t, server, 'machine', 'show', 'vm1');
  t.equal(machine.state, 'PROTECTED');
  t.equal(machine.disks[0]!.epoch, 1, 'the first epoch was issued');
  const firstPoint = machine.disks[0]!.latestRecoveryPointId;
  t.ok(firstPoint, 'the disk has a recovery point');

  const points = await drctlJson<{ recoveryPoints: { id: string; diskId: string; tag: string }[] }>(t, server, 'points', 'vm1');
  t.ok(points.recoveryPoints.length >= 1, 'recovery points after the initial sync (replication goes on: more may follow)');
  t.ok(points.recoveryPoints.some((point) => point.id === firstPoint), 'the machine names one of them');
  t.equal(points.recoveryPoints[0]!.tag, 'initial-sync', 'the first point is tagged initial-sync');

  const materialised = await drctlJson<{ path: string }>(t, server, 'materialise', firstPoint, path.join(dir, 'ds', 'restore', 'first.img'));
  t.equal(sha256File(materialised.path), originalHash, 'the materialised point equals the source');

  const again = await drctl(server, 'enable', 'vm1', '--datastore', path.join(dir, 'ds', 'vm1'));
  t.equal(again.code, 1);
  t.match(again.stderr, /^drctl: FAILED_PRECONDITION: .*resync/, 'enabling twice says to resync');

  // The scan capture may ship some changes itself before the resync restarts it, so the session's own
  // counter is the measure: between the change and the resync's end it sent at least the changed bytes
  // (random data does not compress) and far less than the disk. The job's figure is the part sent after
  // the resync was asked, so it is never more than that (0 when a scan pass had shipped it all).
  const ps = processServerClient(site.psAddress);
  t.teardown(() => ps.close());
  const sessionSent = async () => Number((await unary(ps, ps.getReplication, { diskId: 'vm1-disk0' })).bytesSent);
  const sentBefore = await sessionSent();
  const changedBytes = changeBlocks(source, 0.01, seed + 1);
  const resynced = await drctlJson<{ state: string; kind: string; bytesSent: number }>(t, server, 'resync', 'vm1');
  t.match(resynced, { state: 'JOB_SUCCEEDED', kind: 'resync' });
  const sentSince = (await sessionSent()) - sentBefore;
  t.ok(sentSince >= changedBytes && sentSince < diskBytes / 4, `a delta resync sends about the changes: ${sentSince} bytes on the wire for ${changedBytes} changed, of ${diskBytes}`);
  t.ok(resynced.bytesSent <= sentSince, `the job's figure is never more than went on the wire (${resynced.bytesSent} of ${sentSince})`);
  t.equal(sha256File(path.join(dir, 'ds', 'vm1', 'vm1-disk0.img')), sha256File(source), 'the replica equals the changed source');

  const pointsAfter = await drctlJson<{ recoveryPoints: { id: string }[] }>(t, server, 'points', 'vm1');
  t.ok(pointsAfter.recoveryPoints.length > points.recoveryPoints.length, 'the resync (and the capture) made newer points');
  const older = await drctlJson<{ path: string }>(t, server, 'materialise', firstPoint, path.join(dir, 'ds', 'restore', 'first-again.img'));
  t.equal(sha256File(older.path), originalHash, 'the first point still materialises to the original source');

  const jobs = await drctlJson<{ jobs: { kind: string; state: string }[] }>(t, server, 'jobs', '--machine', 'vm1');
  t.same(
    jobs.jobs.map((job) => [job.kind, job.state]),
    [
      ['enable-replication', 'JOB_SUCCEEDED'],
      ['resync', 'JOB_SUCCEEDED'],
    ],
  );
});

t.test('a configuration server killed during a job resumes it after a restart', async (t) => {
  t.comment(`seed ${seed}`);
  const { dir, csArgs } = site;
  const source = site.sources[1]!;
  const server = site.cs.address;
  await drctlJson(t, server, 'machine', 'add', 'vm2', '--agent', 'agent1', '--disk', source);
  const started = await drctlJson<{ jobId: string; state: string }>(t, server, 'enable', 'vm2', '--datastore', path.join(dir, 'ds', 'vm2'), '--no-watch');
  t.ok(started.jobId);

  // kill -9: no chance to save anything the database did not already hold.
  const killed = await site.cs.kill();
  t.equal(killed.signal, 'SIGKILL');
  // Same address: the other daemons and drctl know it.
  const restarted = await startDaemon('configuration-server', { args: ['--listen', server, ...csArgs] });
  t.teardown(() => restarted.stop());
  await restarted.waitForLog((line) => line.msg === 'resuming job' && line.jobId === started.jobId);
  t.pass('the restarted configuration server resumed the job');

  const watched = await drctl(server, 'job', 'watch', started.jobId);
  t.equal(watched.code, 0, `job watch exits 0 for a job that succeeds (${watched.stderr})`);
  const updates = watched.stdout.trim().split('\n').map((line) => JSON.parse(line) as { state: string });
  t.equal(updates[updates.length - 1]!.state, 'JOB_SUCCEEDED', 'the job ended SUCCEEDED');
  t.equal(sha256File(path.join(dir, 'ds', 'vm2', 'vm2-disk0.img')), sha256File(source), 'the replica equals the source');

  const machine = await drctlJson<{ state: string; disks: { epoch: number }[] }>(t, server, 'machine', 'show', 'vm2');
  t.equal(machine.state, 'PROTECTED');
  t.equal(machine.disks[0]!.epoch, 1, 'the resumed job reused the epoch it had issued');
  const points = await drctlJson<{ recoveryPoints: unknown[] }>(t, server, 'points', 'vm2');
  t.ok(points.recoveryPoints.length >= 1, 'the disk has recovery points');
});

t.test('a watch open while the configuration server stops on SIGTERM ends UNAVAILABLE, with drplane\'s error code', async (t) => {
  const own = await startSite(t, [killedJobDiskBytes]);
  const server = own.cs.address;
  await drctlJson(t, server, 'machine', 'add', 'vm3', '--agent', 'agent1', '--disk', own.sources[0]!);
  // A scan capture's enable job runs until the first quiet pass, a scan interval (5 s) after the sync.
  const started = await drctlJson<{ jobId: string }>(t, server, 'enable', 'vm3', '--datastore', path.join(own.dir, 'ds', 'vm3'), '--no-watch');
  const client = configurationServerClient(server);
  t.teardown(() => client.close());
  const watch = client.watchJob({ jobId: started.jobId });
  const ended = new Promise<{ code: number; details: string; errorCode: unknown }>((resolve) => {
    watch.on('data', () => undefined);
    watch.on('error', (error: { code: number; details: string; metadata?: { get(key: string): unknown[] } }) =>
      resolve({ code: error.code, details: error.details, errorCode: error.metadata?.get('drplane-error-code')[0] }),
    );
    watch.on('end', () => resolve({ code: 0, details: 'ended without an error', errorCode: undefined }));
  });
  await new Promise((resolve) => watch.once('data', resolve));
  const stopped = await own.cs.stop();
  t.same(stopped, { code: 0, signal: null }, 'the configuration server stops on SIGTERM');
  const end = await ended;
  t.equal(end.code, 14, `the watch ends UNAVAILABLE (${end.details})`);
  t.equal(end.details, 'the configuration server is stopping: watch the job again when it is back');
  t.equal(end.errorCode, 'unavailable', "drplane's own code travels in the metadata, as for every other error");
});
