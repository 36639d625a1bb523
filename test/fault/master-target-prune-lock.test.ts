// Goal: `drctl prune-retention` replaces the retention store's file, so while
// one runs neither a master target nor a second prune may touch the store. A
// prune held at a failpoint after it took its lock: a master target started
// meanwhile exits 2 naming the prune's pid, a second prune is refused naming
// it too; once the first finishes, its lock is gone and the master target
// starts and serves. A lock left by a dead prune (a pid that does not exist,
// or a live pid with another start time: pid reuse) stops neither: the master
// target starts and warns, the next prune takes the lock over. What cannot be
// judged (a takeover left half done, a file drctl did not make) is refused with
// the file to remove. Prints its seed.
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { startDaemon, tempDir } from '../helpers/daemons';
import { makeExtent, masterTargetClient, sendFrames, startMasterTargetWithConfig, unary } from '../helpers/clients';
import { randomBytes, seededRandom } from '../helpers/disks';
import { spawnDrctl } from '../helpers/stack';

const MiB = 1024 * 1024;
const diskBytes = 4 * MiB;
const batchCount = 4;
const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);

/** A retention store with `batchCount` points of one disk, made by a master target that is stopped again. */
async function storeWithPoints(t: Test, dir: string, random: () => number): Promise<{ args: string[]; retentionDir: string; lockFile: string }> {
  const first = await startMasterTargetWithConfig(t, dir, {});
  await unary(first.client, first.client.createReplica, { diskId: 'd', path: path.join(first.datastore, 'd.img'), diskBytes, epoch: 1 });
  for (let sequence = 1; sequence <= batchCount; sequence++) {
    const extents = [await makeExtent((sequence - 1) * MiB, randomBytes(MiB, random), false)];
    const result = await sendFrames(first.client, [{ diskId: 'd', epoch: 1, sequence, extents, last: true, recoveryPointKind: 'CRASH_CONSISTENT', sourceTimeMs: Date.now() }]);
    t.error(result.error);
  }
  await first.mt.stop();
  const retentionDir = path.join(dir, 'mt', 'retention');
  return {
    args: ['--config', path.join(dir, 'mt.json'), '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt')],
    retentionDir,
    lockFile: path.join(retentionDir, 'retention.lmdb.prune-lock'),
  };
}

/** Whether a name exists (the lock is a link to nowhere, which fs.existsSync does not see). */
const present = (file: string) => fs.lstatSync(file, { throwIfNoEntry: false }) !== undefined;

async function pointsServed(t: Test, args: string[]): Promise<number[]> {
  const mt = await startDaemon('master-target', { args });
  t.teardown(() => mt.stop());
  const client = masterTargetClient(mt.address);
  t.teardown(() => client.close());
  return (await unary(client, client.listRecoveryPoints, { diskId: 'd' })).recoveryPoints.map((point) => Number(point.sequence));
}

t.test('a running prune keeps a master target and a second prune away from the store', async (t) => {
  t.comment(`seed ${seed}`);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { args, retentionDir, lockFile } = await storeWithPoints(t, dir, seededRandom(seed));

  const gate = path.join(dir, 'go');
  let prunePid = 0;
  let paused!: () => void;
  const atFailpoint = new Promise<void>((resolve) => (paused = resolve));
  let printed = '';
  const first = spawnDrctl(['prune-retention', '--retention-dir', retentionDir, '--keep-hours', '0'], {
    env: { DRPLANE_FAILPOINTS: `offline-prune.locked=wait-for:${gate}` },
    timeoutMs: 60_000,
    onSpawn: (child) => {
      prunePid = child.pid!;
      child.stdout!.on('data', (chunk: Buffer) => {
        printed += chunk.toString();
        if (printed.includes('failpoint waiting')) paused();
      });
    },
  });
  await Promise.race([atFailpoint, first.then((run) => Promise.reject(new Error(`the prune ended before its failpoint: ${run.stdout}${run.stderr}`)))]);
  t.equal(fs.readlinkSync(lockFile).split(':')[0], String(prunePid), 'the lock names the prune');

  const refused = await startDaemon('master-target', { args, expectExit: true });
  t.equal((await refused.exited).code, 2, 'a master target started meanwhile exits 2');
  await new Promise((resolve) => setTimeout(resolve, 200));
  const said = refused.stderr.join('\n');
  t.match(said, new RegExp(`drctl prune-retention \\(process ${prunePid}\\) is pruning the retention store: wait for it to finish`), `and names the prune: ${said}`);

  const second = await spawnDrctl(['prune-retention', '--retention-dir', retentionDir, '--keep-hours', '0'], { timeoutMs: 30_000 });
  t.equal(second.code, 1, 'a second prune is refused');
  t.match(second.stderr, new RegExp(`held by process ${prunePid}: another drctl prune-retention is working on the store`), second.stderr);
  t.equal(fs.readlinkSync(lockFile).split(':')[0], String(prunePid), "and leaves the first one's lock alone");

  fs.writeFileSync(gate, '');
  const done = await first;
  t.equal(done.code, 0, `the first prune finishes: ${done.stderr}`);
  t.notOk(present(lockFile), 'its lock is gone');
  t.same(await pointsServed(t, args), [batchCount], 'the master target starts and serves the pruned store');
});

t.test("a dead prune's lock stops neither a master target nor the next prune", async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { args, retentionDir, lockFile } = await storeWithPoints(t, dir, seededRandom(seed + 1));
  const bootId = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();

  // A live pid (this test's) with another start time: the prune that wrote it died and its pid was reused.
  fs.symlinkSync(`${process.pid}:1:${bootId}`, lockFile);
  const mt = await startDaemon('master-target', { args });
  const warning = await mt.waitForLog((line) => line.pruneLock === lockFile, 5_000);
  t.match(String(warning.msg), /no longer running/, 'the master target starts and warns of the stale lock');
  await mt.stop();
  t.ok(present(lockFile), 'and leaves it for the next prune');

  // A pid no process can have (pid_max is one above the largest).
  const pidMax = Number(fs.readFileSync('/proc/sys/kernel/pid_max', 'utf8'));
  fs.unlinkSync(lockFile);
  fs.symlinkSync(`${pidMax}:12345:${bootId}`, lockFile);
  const pruned = await spawnDrctl(['--json', 'prune-retention', '--retention-dir', retentionDir, '--keep-hours', '0'], { timeoutMs: 60_000 });
  t.equal(pruned.code, 0, `the prune takes the stale lock over: ${pruned.stderr}`);
  t.equal((JSON.parse(pruned.stdout) as { pointsPruned: number }).pointsPruned, batchCount - 1, 'and prunes');
  t.same(fs.readdirSync(retentionDir).filter((name) => name.includes('prune-lock')), [], 'no lock or takeover lock is left');

  // A prune that died in the few system calls of a takeover: refused, not guessed at.
  const takeoverFile = path.join(retentionDir, 'retention.lmdb.prune-lock-takeover');
  fs.symlinkSync(`${pidMax}:12345:${bootId}`, lockFile);
  fs.symlinkSync(`${pidMax}:12346:${bootId}`, takeoverFile);
  const stuck = await spawnDrctl(['prune-retention', '--retention-dir', retentionDir, '--keep-hours', '0'], { timeoutMs: 30_000 });
  t.equal(stuck.code, 1, 'a takeover lock left by a dead prune is refused');
  t.match(stuck.stderr, /prune-lock-takeover was left by a prune that died while taking over a stale lock: if no drctl prune-retention runs on this host, remove it/);
  fs.unlinkSync(takeoverFile);
  fs.unlinkSync(lockFile);

  // Not a lock drctl makes: refused, not guessed at.
  fs.writeFileSync(lockFile, 'something else\n');
  const foreign = await spawnDrctl(['prune-retention', '--retention-dir', retentionDir, '--keep-hours', '0'], { timeoutMs: 30_000 });
  t.equal(foreign.code, 1, 'a file that is no prune lock is refused');
  t.match(foreign.stderr, /is not a prune lock drctl made: if no drctl prune-retention runs on this host, remove it/);
  fs.unlinkSync(lockFile);
  t.same(await pointsServed(t, args), [batchCount], 'the master target serves the pruned store');
});

t.test('a prune killed between removing the store and copying it back is finished by the next run; meanwhile no master target starts empty', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { args, retentionDir, lockFile } = await storeWithPoints(t, dir, seededRandom(seed + 1));
  const elsewhere = path.join(dir, 'compact');
  fs.mkdirSync(elsewhere);
  const store = path.join(retentionDir, 'retention.lmdb');
  const marker = `${store}.pruned-copy`;

  const killed = await spawnDrctl(['prune-retention', '--retention-dir', retentionDir, '--keep-hours', '0', '--compact-via', elsewhere], {
    env: { DRPLANE_FAILPOINTS: 'offline-prune.original-removed=crash' },
    timeoutMs: 60_000,
  });
  t.not(killed.code, 0, 'the prune was killed (SIGKILL at the failpoint)');
  t.notOk(fs.existsSync(store), 'it had removed the store');
  t.ok(present(marker), 'and left the marker that says where the pruned copy is');
  t.ok(fs.existsSync(fs.readlinkSync(marker)), `which is there (${fs.readlinkSync(marker)})`);

  const refused = await startDaemon('master-target', { args, expectExit: true });
  t.equal((await refused.exited).code, 2, 'a master target does not start on the missing store');
  await new Promise((resolve) => setTimeout(resolve, 200));
  t.match(refused.stderr.join(''), /retention\.lmdb is missing: a drctl prune-retention --compact-via was stopped before its pruned copy \(.+\) came back; run drctl prune-retention --retention-dir .+ --keep-hours N again to finish it/);
  t.notOk(fs.existsSync(store), 'and made no empty store');

  const finished = await spawnDrctl(['--json', 'prune-retention', '--retention-dir', retentionDir, '--keep-hours', '0'], { timeoutMs: 60_000 });
  t.equal(finished.code, 0, `the next prune finishes the copy-back (${finished.stderr})`);
  t.match(JSON.parse(finished.stdout), { resumed: true });
  t.ok(fs.existsSync(store), 'the store is back');
  t.notOk(present(marker), 'the marker is gone');
  t.notOk(present(lockFile), 'so is the lock');
  t.same(fs.readdirSync(elsewhere), [], 'and the work directory');
  t.same(await pointsServed(t, args), [batchCount], 'the master target starts and serves the newest point');
  fs.rmSync(store);
  fs.symlinkSync(path.join(elsewhere, 'gone.tmp'), marker);
  const human = await spawnDrctl(['prune-retention', '--retention-dir', retentionDir, '--keep-hours', '0'], { timeoutMs: 30_000 });
  t.equal(human.code, 1, 'a marker whose copy is gone too is refused');
  t.match(human.stderr, /retention\.lmdb is missing and .*retention\.lmdb\.pruned-copy names the pruned copy .*gone\.tmp, which is gone too: restore the store from a backup/);
});

t.test('a compacted copy left by a prune killed in place is removed by the next prune', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { args, retentionDir } = await storeWithPoints(t, dir, seededRandom(seed + 2));
  const leftover = path.join(retentionDir, 'retention.lmdb.compact-999999.tmp');
  fs.writeFileSync(leftover, Buffer.alloc(MiB));
  const pruned = await spawnDrctl(['prune-retention', '--retention-dir', retentionDir, '--keep-hours', '0'], { timeoutMs: 60_000 });
  t.equal(pruned.code, 0, pruned.stderr);
  t.notOk(fs.existsSync(leftover), 'the dead prune\'s copy is gone');
  t.same(await pointsServed(t, args), [batchCount], 'and the store serves');
});
