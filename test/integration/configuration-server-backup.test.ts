// Goal: the configuration server's database can be backed up while it runs
// and restored after a loss of everything that came later, with the real
// daemons and files:
// - drctl backup writes a consistent copy (an LMDB file drctl restore accepts)
//   and leaves no copy behind in the data directory, also when the caller
//   cancels the stream;
// - drctl restore refuses while a configuration server answers at --server,
//   while the database is open by a process (even with nothing at --server),
//   and a file that is not a drplane configuration database;
// - after a restore and a start at the same address: the machine and its job
//   are back, what was added after the backup is gone, the process server,
//   master target and agent heartbeat (a server registered after the backup
//   registers again by itself), replication carries on (a new recovery point
//   appears) and drctl status works.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { open } from 'lmdb';
import * as grpc from '@grpc/grpc-js';
import { unary } from '../../shared/grpc';
import type { BackupChunk__Output } from '../../generated/drplane/v1/BackupChunk';
import { startDaemon, tempDir } from '../helpers/daemons';
import { changeBlocks, createImage } from '../helpers/disks';
import { eventually, runDrctl, startStack } from '../helpers/stack';
import { freePort } from '../helpers/wait';

const MiB = 1024 * 1024;
const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const pointSequence = (pointId: string) => Number(pointId.slice(pointId.lastIndexOf('@') + 1));
// One hashing thread per daemon (the default is one per core): fewer workers to start.
const oneHashThread = ['--hash-threads', '1'];

t.test('backup while running, restore offline, everything carries on', async (t) => {
  t.comment(`seed ${seed}`);
  const dir = tempDir();
  const sources = ['a', 'b'].map((name, index) => {
    const file = path.join(dir, `${name}.img`);
    // Small: the size is not what the test is about (vm1 is scanned every 500 ms).
    createImage(file, 2 * MiB, seed + index, MiB);
    return file;
  });
  const stack = await startStack(t, { dir, psArgs: oneHashThread, agents: [{ name: 'agent1', disks: sources, args: oneHashThread }] });
  const { csClient } = stack;
  const csDir = path.join(dir, 'cs');
  const human = (...args: string[]) => runDrctl(stack.cs.address, ...args);
  const leftovers = () => fs.readdirSync(csDir).filter((name) => name.endsWith('.tmp'));

  // The state to back up is made through the API (what drctl policy create and machine add call; a drctl
  // run is a process of its own, about a CPU-second); drctl is run for what this test is about.
  await unary(csClient, csClient.createPolicy, { name: 'fast', crashConsistentIntervalMs: 500 });
  const vm1 = await unary(csClient, csClient.addMachine, { name: 'vm1', agent: 'agent1', disks: [{ sourcePath: sources[0]! }] });
  const enabled = await stack.drctl('enable', 'vm1', '--datastore', path.join(stack.datastore, 'vm1'), '--policy', 'fast', '--scan-interval', '500ms');
  t.equal(enabled.code, 0, `vm1 is protected (${enabled.stderr.trim()})`);
  const enableJob = JSON.parse(enabled.stdout) as { jobId: string };

  // The backup, while everything runs.
  const backupFile = path.join(dir, 'backups', 'cs.lmdb');
  fs.mkdirSync(path.dirname(backupFile));
  const backup = await human('backup', backupFile);
  t.equal(backup.code, 0, backup.stderr);
  t.match(backup.stdout, new RegExp(`^wrote a backup of the configuration server at ${stack.cs.address} to ${backupFile}: [\\d.]+ (KiB|MiB), taken at \\d{4}-\\d\\d-\\d\\d `));
  t.notOk(fs.existsSync(`${backupFile}.tmp`), 'drctl renamed its temporary file');
  const asJson = await stack.drctlJson<{ file: string; totalBytes: number; timeMs: number }>('backup', path.join(dir, 'backups', 'second.lmdb'));
  t.equal(asJson.totalBytes, fs.statSync(asJson.file).size, 'the file holds every byte the stream announced');
  t.ok(Math.abs(asJson.timeMs - Date.now()) < 60_000, 'the first chunk says when the copy was taken');
  t.same(leftovers(), [], 'the server deleted its copies after streaming them');

  // A caller that goes away mid-stream: the copy is deleted all the same.
  await new Promise<void>((resolve) => {
    const call = csClient.backup({});
    call.on('data', (_chunk: BackupChunk__Output) => call.cancel());
    call.on('error', (_error: grpc.ServiceError) => resolve());
    call.on('end', () => resolve());
  });
  await eventually('the cancelled backup copy to be deleted', async () => (leftovers().length === 0 ? true : undefined), 10_000);
  t.pass('a cancelled backup leaves no copy behind');

  // State after the backup, which the restore loses.
  await unary(csClient, csClient.createPolicy, { name: 'later' });
  await unary(csClient, csClient.addMachine, { name: 'vm2', agent: 'agent1', disks: [{ sourcePath: sources[1]! }] });
  await unary(csClient, csClient.createRecoveryPlan, { name: 'later-plan', members: [{ machine: 'vm2' }] });
  const ps2Args = ['--name', 'ps2', '--listen', await freePort(), '--data-dir', path.join(dir, 'ps2'), '--configuration-server', stack.cs.address, '--passphrase-file', path.join(csDir, 'passphrase'), ...oneHashThread];
  const ps2 = await startDaemon('process-server', { args: ps2Args });
  t.teardown(() => ps2.stop());
  await ps2.waitForLog((line) => line.msg === 'registered with the configuration server');
  const pointsBefore = await unary(csClient, csClient.listRecoveryPoints, { machine: 'vm1', diskId: '' });
  const newestBefore = Math.max(...pointsBefore.recoveryPoints.map((point) => pointSequence(point.id)));

  // Restore refused while the server runs: it answers at --server, and it has the database open.
  // (Both refuse before they write anything, so they run side by side.)
  const nobody = await freePort();
  const [whileRunning, elsewhere] = await Promise.all([human('restore', backupFile, '--data-dir', csDir), runDrctl(nobody, 'restore', backupFile, '--data-dir', csDir)]);
  t.equal(whileRunning.code, 1);
  t.match(whileRunning.stderr, new RegExp(`^drctl: FAILED_PRECONDITION: a configuration server answers at ${stack.cs.address}: stop the service first`));
  t.equal(elsewhere.code, 1);
  t.match(elsewhere.stderr, new RegExp(`^drctl: FAILED_PRECONDITION: ${path.join(csDir, 'config.lmdb')} is in use by process ${stack.cs.process.pid} \\(a configuration server\\?\\): stop the service first`));

  await stack.cs.stop();
  const offline = (...args: string[]) => runDrctl(stack.cs.address, ...args);
  // Not a drplane database: bytes of something else, an LMDB file whose pages are damaged (LMDB trusts
  // its file and crashes on it: the check runs in a process of its own), and an LMDB file of another program.
  const junk = path.join(dir, 'junk.lmdb');
  fs.writeFileSync(junk, Buffer.alloc(64 * 1024, 7));
  const damaged = path.join(dir, 'damaged.lmdb');
  const damagedBytes = Buffer.alloc(fs.statSync(backupFile).size, 0x5a);
  fs.readFileSync(backupFile).copy(damagedBytes, 0, 0, 32);
  fs.writeFileSync(damaged, damagedBytes);
  const otherLmdb = path.join(dir, 'other.lmdb');
  const other = open({ path: otherLmdb, noSubdir: true });
  other.openDB({ name: 'things' }).putSync('a', 1);
  await other.close();
  for (const [file, expected] of [
    [junk, /^drctl: INVALID_ARGUMENT: .*junk\.lmdb is not a drplane configuration database: it is not an LMDB file \(no LMDB meta page at its start\)\n$/],
    [damaged, /^drctl: INVALID_ARGUMENT: .*damaged\.lmdb is not a drplane configuration database \(LMDB could not read it: the check was ended by SIG[A-Z]+/],
    [otherLmdb, /is not a drplane configuration database: it has no servers, machines, jobs, counters, policies, settings sub-databases/],
    [path.join(dir, 'missing.lmdb'), /^drctl: INVALID_ARGUMENT: cannot read .*missing\.lmdb: ENOENT/],
  ] as const) {
    const refused = await offline('restore', file, '--data-dir', csDir);
    t.equal(refused.code, 1, `restore ${path.basename(file)} is refused`);
    t.match(refused.stderr, expected);
  }
  t.same(fs.readdirSync(csDir).filter((name) => name.includes('restor')), [], 'a refused restore leaves the data directory as it was');

  const restored = await offline('restore', backupFile, '--data-dir', csDir);
  t.equal(restored.code, 0, restored.stderr);
  t.match(restored.stdout, /^restored .*cs\.lmdb as .*config\.lmdb \([\d.]+ (KiB|MiB); configuration server cs-[0-9a-f]+, 1 machines, 3 servers, 1 jobs\)\nthe database it replaced is kept as .*config\.lmdb\.before-restore-\d+\n/);
  const kept = fs.readdirSync(csDir).filter((name) => name.startsWith('config.lmdb.before-restore-'));
  t.equal(kept.length, 1, 'the previous database is kept beside it');

  const cs = await startDaemon('configuration-server', { args: stack.restartArgs.cs });
  t.teardown(() => cs.stop());
  // What the restored database holds, asked through the API (what drctl machine show, jobs, policy show and plan show call).
  const machine = await unary(csClient, csClient.getMachine, { machine: 'vm1' });
  t.match(machine, { machineId: vm1.machineId, state: 'PROTECTED' }, 'the machine is back, protected');
  const jobs = await unary(csClient, csClient.listJobs, { machine: 'vm1' });
  t.match(jobs.jobs, [{ jobId: enableJob.jobId, kind: 'enable-replication', state: 'JOB_SUCCEEDED' }], 'and its job');
  await t.rejects(unary(csClient, csClient.getMachine, { machine: 'vm2' }), { code: grpc.status.NOT_FOUND }, 'a machine added after the backup is not');
  await t.rejects(unary(csClient, csClient.getPolicy, { policy: 'later' }), { code: grpc.status.NOT_FOUND }, 'nor a policy');
  await t.rejects(unary(csClient, csClient.getRecoveryPlan, { plan: 'later-plan' }), { code: grpc.status.NOT_FOUND }, 'nor a plan');

  // Heartbeats: the servers known to the backup go on; ps2, unknown to it, registers again (NOT_FOUND on its heartbeat).
  await ps2.waitForLog((line) => line.msg === 'registered with the configuration server' && ps2.logs.filter((candidate) => candidate.msg === 'registered with the configuration server').length >= 2, 30_000);
  const status = await eventually('every server to be healthy', async () => {
    const current = await unary(csClient, csClient.getStatus, {});
    return current.servers.length === 4 && current.servers.every((server) => server.healthy) ? current : undefined;
  }, 30_000);
  t.same(status.servers.map((server) => server.name).sort(), ['agent1', 'mt1', 'ps1', 'ps2'], 'ps1, mt1, agent1 heartbeat, ps2 registered again');

  // Replication carried on while the configuration server was away, and still does.
  changeBlocks(sources[0]!, 0.01, seed);
  const newer = await eventually('a recovery point newer than before the restore', async () => {
    const { recoveryPoints } = await unary(csClient, csClient.listRecoveryPoints, { machine: 'vm1', diskId: '' });
    return recoveryPoints.find((point) => pointSequence(point.id) > newestBefore);
  }, 60_000);
  t.ok(newer, `new recovery point ${newer.id} (newest before: ${newestBefore})`);
  const humanStatus = await offline('status');
  t.equal(humanStatus.code, 0, humanStatus.stderr);
  t.match(humanStatus.stdout, /MACHINES\nNAME\s+STATE.*\nvm1\s+PROTECTED/);
  t.match(humanStatus.stdout, /vm1-disk0\s+vm1\s+replicating/);
});
