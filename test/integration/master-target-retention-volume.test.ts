// Goal: a retention volume that does not qualify stops the master target at
// start-up with exit code 2 and one line naming the problem, before anything is
// created (no store, no datastore root): a missing directory, a file, the
// install volume, too little free space, the process server cache's volume, and
// out-of-range pruning settings. /dev/shm (a tmpfs, another file system than
// the repository) qualifies, and GetStatus reports it.
// Not covered: an unwritable directory. The tests run as root, for whom
// permission bits do not make a directory unwritable (the check creates,
// fsyncs and removes a probe file, so a read-only mount would be refused).
import t, { type Test } from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { distRoot, startDaemon, tempDir } from '../helpers/daemons';
import { makeExtent, masterTargetClient, sendFrames, unary } from '../helpers/clients';

const shm = '/dev/shm';

/** A fresh directory on /dev/shm, removed at the end of the test. */
function shmDir(t: Test, name: string): string {
  const dir = fs.mkdtempSync(path.join(shm, `drplane-${name}-`));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function expectRefusal(t: Test, dir: string, config: Record<string, unknown>, message: RegExp): Promise<void> {
  const configPath = path.join(dir, 'mt.json');
  const datastore = path.join(dir, 'ds');
  fs.writeFileSync(configPath, JSON.stringify({ datastoreRoots: [datastore], ...config }));
  const mt = await startDaemon('master-target', { args: ['--config', configPath, '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt')], expectExit: true });
  const exit = await mt.exited;
  t.equal(exit.code, 2, 'exit code 2 (configuration or environment)');
  t.equal(mt.stderr.length, 1, 'one line on stderr');
  t.match(mt.stderr[0] ?? '', message, 'the line names the problem');
  t.notOk(fs.existsSync(datastore), 'no datastore root was created');
  t.notOk(fs.existsSync(path.join(dir, 'mt', 'retention')), 'no default retention directory was created');
  if (typeof config.retentionDir === 'string' && fs.existsSync(config.retentionDir) && fs.statSync(config.retentionDir).isDirectory()) {
    t.same(fs.readdirSync(config.retentionDir), [], 'nothing was created in the refused retention directory');
  }
}

t.test('a missing retention directory is refused and not created', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const missing = path.join(shmDir(t, 'missing'), 'not-mounted');
  await expectRefusal(t, dir, { retentionDir: missing }, /^master-target: cannot start: retentionDir \/dev\/shm\/.*\/not-mounted does not exist: mount the retention volume there/);
  t.notOk(fs.existsSync(missing), 'the missing directory was not created');
});

t.test('a file is not a retention directory', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(shmDir(t, 'file'), 'a-file');
  fs.writeFileSync(file, 'not a directory');
  await expectRefusal(t, dir, { retentionDir: file }, /retentionDir .*\/a-file is not a directory$/);
});

t.test('the install volume is refused', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // Inside the compiled tree, which lies inside the repository.
  const onInstallVolume = fs.mkdtempSync(path.join(distRoot, 'retention-on-install-volume-'));
  t.teardown(() => fs.rmSync(onInstallVolume, { recursive: true, force: true }));
  await expectRefusal(t, dir, { retentionDir: onInstallVolume }, /retentionDir .* is on the same file system as the install directory .*: give the retention store a volume of its own$/);
});

t.test('too little free space is refused', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const retentionDir = shmDir(t, 'small');
  const free = fs.statfsSync(retentionDir).bavail * fs.statfsSync(retentionDir).bsize;
  await expectRefusal(t, dir, { retentionDir, retentionFreeBytesMin: free + 1024 ** 3 }, /retentionDir .* has .* free, less than retentionFreeBytesMin \(.*\): prune old recovery points offline \(drctl prune-retention --retention-dir .* --keep-hours N\), or use a larger volume$/);
});

t.test("the process server cache's volume is refused", async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const retentionDir = shmDir(t, 'shared');
  await expectRefusal(t, dir, { retentionDir, processServerCacheDir: path.join(shm, 'drplane-cache-not-created-yet') }, /is on the same file system as the process server cache .* \(processServerCacheDir\)/);
});

t.test('pruning settings outside their limits are refused', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  await expectRefusal(t, dir, { pruneIntervalMs: 5 }, /pruneIntervalMs must be an integer from 10 to 60000, got 5/);
  await expectRefusal(t, dir, { pruneKeysPerTransaction: 1001 }, /pruneKeysPerTransaction must be an integer from 1 to 1000, got 1001/);
});

t.test('/dev/shm qualifies as a retention volume', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const retentionDir = shmDir(t, 'qualifies');
  const configPath = path.join(dir, 'mt.json');
  // A process server cache on another file system than the retention volume is fine.
  fs.writeFileSync(configPath, JSON.stringify({ datastoreRoots: [path.join(dir, 'ds')], retentionDir, processServerCacheDir: path.join(dir, 'cache') }));
  const mt = await startDaemon('master-target', { args: ['--config', configPath, '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt')] });
  t.teardown(() => mt.stop());
  const client = masterTargetClient(mt.address);
  t.teardown(() => client.close());
  t.notOk(mt.logs.some((line) => /retentionDir is not set/.test(String(line.msg))), 'no warning about a shared volume');
  const status = await unary(client, client.getStatus, {});
  t.equal(status.retentionDir, retentionDir);
  t.equal(status.retentionVolumeQualified, true);
  t.equal(status.retentionVolumeProblem, '');
  const stats = fs.statfsSync(retentionDir);
  t.equal(status.retentionCapacityBytes, stats.blocks * stats.bsize, 'capacity from statfs');
  t.ok(status.retentionFreeBytes > 0 && status.retentionFreeBytes <= status.retentionCapacityBytes, 'free space from statfs');
  t.ok(fs.existsSync(path.join(retentionDir, 'retention.lmdb')), 'the store lives on the retention volume');
  t.notOk(fs.existsSync(path.join(dir, 'mt', 'retention')), 'and not under the data directory');

  await unary(client, client.createReplica, { diskId: 'd', path: path.join(dir, 'ds', 'd.img'), diskBytes: 1024 * 1024, epoch: 1 });
  const sent = await sendFrames(client, [{ diskId: 'd', epoch: 1, sequence: 1, extents: [await makeExtent(0, Buffer.alloc(4096, 7))], last: true, recoveryPointKind: 'CRASH_CONSISTENT' }]);
  t.error(sent.error, 'a batch applies with the store on /dev/shm');
  t.equal(sent.acks[0]?.recoveryPointId, 'd@1');
});

t.test('the default retention directory shares the data volume, with a warning', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const mt = await startDaemon('master-target', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt'), '--datastore-root', path.join(dir, 'ds')] });
  t.teardown(() => mt.stop());
  const warning = await mt.waitForLog((line) => /retentionDir is not set: the retention store shares the data volume/.test(String(line.msg)));
  t.equal(warning.retentionDir, path.join(dir, 'mt', 'retention'));
  t.ok(fs.existsSync(path.join(dir, 'mt', 'retention', 'retention.lmdb')), 'the store is under the data directory');
});
