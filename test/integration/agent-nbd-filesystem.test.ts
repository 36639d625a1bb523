// Goal (issue 12, items 2 and 3): a real file system and a real database on
// an NBD export, replicated. nbdfuse shows the export as a file, losetup makes
// it a block device, mkfs.ext4 and mount put ext4 on it, and a SQLite workload
// (WAL, synchronous=FULL) commits transactions, each commit's time logged
// here, outside the file system. Meanwhile an app-consistent point is taken
// with the agent's freeze and thaw hooks running `fsfreeze -f/-u` on the
// mountpoint, and crash-consistent points close every second. Each point
// materialises to an image that mounts (replaying the journal where it was
// not frozen); `PRAGMA integrity_check` says ok; it holds every transaction
// committed before the point's time (the app point: before it was asked);
// and e2fsck -fn finds the file system clean. Then, mounted again, the workload
// and the agent are SIGKILLed mid-flight, and the newest point the replica has
// passes the same checks. Skipped, saying why, only where
// the kernel has no FUSE or no loop devices, or the test is not root.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import type { RecoveryPoint__Output } from '../../generated/drplane/v1/RecoveryPoint';
import { unary } from '../../shared/grpc';
import { mustSucceed, nbdUri, run, whyNoNbdClients } from '../helpers/nbd';
import { eventually, startStack } from '../helpers/stack';

const MiB = 1024 * 1024;
const diskBytes = 128 * MiB;

function whyNoFilesystemStack(): string {
  if (process.getuid?.() !== 0) return 'losetup, mount and nbdfuse need root';
  if (!fs.existsSync('/dev/fuse')) return 'this kernel has no FUSE (/dev/fuse is missing): nbdfuse cannot show the export as a file';
  const loop = spawnSync('losetup', ['-f'], { encoding: 'utf8' });
  if (loop.status !== 0) return `no free loop device (losetup -f: ${(loop.stderr || loop.error?.message || '').trim()})`;
  for (const command of ['mkfs.ext4', 'e2fsck', 'fsfreeze', 'mount', 'umount']) {
    if (spawnSync('sh', ['-c', `command -v ${command}`]).status !== 0) return `${command} is missing (e2fsprogs, util-linux)`;
  }
  return whyNoNbdClients(['nbdfuse', 'fusermount3', 'sqlite3', 'qemu-img']);
}

const why = whyNoFilesystemStack();

/** Mounts an image through a loop device, runs `inside`, unmounts and detaches whatever happens. */
async function withMountedImage<T>(image: string, mountpoint: string, inside: () => Promise<T>): Promise<T> {
  const device = mustSucceed(await run('losetup', ['-f', '--show', image]), `losetup ${image}`).stdout.trim();
  try {
    fs.mkdirSync(mountpoint, { recursive: true });
    // Read-write: a crash-consistent image's journal is replayed, as it would be when the machine boots on it.
    mustSucceed(await run('mount', ['-t', 'ext4', device, mountpoint]), `mount ${image}`);
    try {
      return await inside();
    } finally {
      await run('umount', [mountpoint], { allowFailure: true });
    }
  } finally {
    await run('losetup', ['-d', device], { allowFailure: true });
  }
}

t.test('ext4 and SQLite on an NBD export: app- and crash-consistent points mount, check clean and hold every commit', { skip: why || false }, async (t) => {
  const dir = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'drplane-nbd-fs-'));
  const source = path.join(dir, 'vm1-disk0.img');
  fs.writeFileSync(source, Buffer.alloc(0));
  fs.truncateSync(source, diskBytes);
  const socket = path.join(dir, 'nbd.sock');
  const fuseDir = path.join(dir, 'fuse');
  const mountpoint = path.join(dir, 'mnt');
  fs.mkdirSync(fuseDir);
  fs.mkdirSync(mountpoint);
  // The hooks docs/nbd.md describes: freeze the file system on the export, so the app point is a clean one.
  const stack = await startStack(t, {
    dir,
    agents: [{ name: 'agent1', disks: [source], args: ['--nbd-listen', `unix:${socket}`, '--freeze-hook', `fsfreeze -f ${mountpoint}`, '--thaw-hook', `fsfreeze -u ${mountpoint}`] }],
  });

  let nbdfuse: ChildProcess | undefined;
  let nbdfuseExited: Promise<unknown> = Promise.resolve();
  let device = '';
  let mounted = false;
  const cleanUp = async () => {
    // Thaw first: a test failing between the hooks must not leave a frozen file system behind.
    if (mounted) await run('fsfreeze', ['-u', mountpoint], { allowFailure: true });
    if (mounted) await run('umount', [mountpoint], { allowFailure: true });
    mounted = false;
    if (device) await run('losetup', ['-d', device], { allowFailure: true });
    device = '';
    if (nbdfuse) {
      // Unmounting the FUSE file system ends nbdfuse (a kill is the fallback). nbdfuse may have exited on its own
      // (its server was killed) and left the mount behind: it is unmounted all the same, lazily if it must be.
      const unmounted = await run('fusermount3', ['-u', fuseDir], { allowFailure: true });
      if (unmounted.code !== 0 && fs.readFileSync('/proc/self/mounts', 'utf8').includes(` ${fuseDir} `)) await run('umount', ['-l', fuseDir], { allowFailure: true });
      const timer = setTimeout(() => nbdfuse?.kill('SIGKILL'), 5_000);
      await nbdfuseExited;
      clearTimeout(timer);
      nbdfuse = undefined;
    }
  };
  t.teardown(cleanUp);

  await stack.drctlJson('policy', 'create', 'fast', '--crash-interval', '1s', '--retention', '1h', '--rpo-threshold', '1m', '--app-interval', '0', '--group-interval', '0');
  await stack.drctlJson('machine', 'add', 'vm1', '--agent', 'agent1', '--disk', source);
  const job = await stack.drctlJson<{ jobId: string }>('enable', 'vm1', '--datastore', path.join(stack.datastore, 'vm1'), '--policy', 'fast', '--capture', 'write-through', '--no-watch');
  t.equal((await stack.drctl('job', 'watch', job.jobId)).code, 0, 'vm1 is protected (write-through)');

  // The export as a file (nbdfuse), a block device (loop), ext4, mounted.
  /** nbdfuse, losetup and mount (after mkfs.ext4 the first time). */
  const attach = async (makeFileSystem: boolean) => {
    const child = spawn('nbdfuse', [fuseDir, nbdUri(socket)], { stdio: ['ignore', 'pipe', 'pipe'] });
    nbdfuse = child;
    nbdfuseExited = new Promise((resolve) => child.once('exit', resolve));
    let nbdfuseOutput = '';
    child.stdout!.on('data', (chunk: Buffer) => (nbdfuseOutput += chunk.toString()));
    child.stderr!.on('data', (chunk: Buffer) => (nbdfuseOutput += chunk.toString()));
    await eventually('nbdfuse to show the export as a file', async () => (fs.existsSync(path.join(fuseDir, 'nbd')) && fs.statSync(path.join(fuseDir, 'nbd')).size === diskBytes ? true : undefined), 20_000, 100).catch((error: Error) => {
      throw new Error(`${error.message}; nbdfuse said: ${nbdfuseOutput}`);
    });
    device = mustSucceed(await run('losetup', ['-f', '--show', path.join(fuseDir, 'nbd')]), 'losetup').stdout.trim();
    if (makeFileSystem) mustSucceed(await run('mkfs.ext4', ['-q', device]), 'mkfs.ext4');
    mustSucceed(await run('mount', ['-t', 'ext4', device, mountpoint]), 'mount');
    mounted = true;
  };
  await attach(true);
  const db = path.join(mountpoint, 'bank.db');
  mustSucceed(await run('sqlite3', [db, 'PRAGMA journal_mode=WAL; CREATE TABLE ledger(n INTEGER PRIMARY KEY, at INTEGER, pad BLOB);']), 'sqlite3 create');

  // The workload: one transaction per sqlite3 run, its commit time logged here once sqlite3 returned.
  const commits: { n: number; committedMs: number }[] = [];
  const commit = async (n: number) => {
    mustSucceed(await run('sqlite3', [db, `PRAGMA synchronous=FULL; BEGIN; INSERT INTO ledger VALUES (${n}, ${Date.now()}, randomblob(${1000 + (n % 7) * 1000})); COMMIT;`]), `transaction ${n}`);
    commits.push({ n, committedMs: Date.now() });
  };
  let n = 0;
  for (; n < 40; ) await commit(++n);
  const appAskedMs = Date.now();
  const committedBeforeApp = commits.length;
  const app = await stack.drctlJson<{ recoveryPoints: RecoveryPoint__Output[] }>('app-point', 'vm1', '--tag', 'fsfreeze');
  t.ok(app.recoveryPoints.length > 0, 'an app-consistent point was taken with the fsfreeze hooks');
  const midwayStart = Date.now();
  for (; n < 100; ) await commit(++n);
  t.comment(`${commits.length} transactions committed; 60 of them in ${Date.now() - midwayStart} ms`);

  // Crash points made while the workload ran (after the app point), and `latest` after it.
  const listed = (await unary(stack.csClient, stack.csClient.listRecoveryPoints, { machine: 'vm1', diskId: '' })).recoveryPoints;
  const crashMidway = listed.filter((point) => point.kind === 'CRASH_CONSISTENT' && Number(point.sourceTimeMs) > appAskedMs && Number(point.sourceTimeMs) < commits.at(-1)!.committedMs);
  t.ok(crashMidway.length >= 1, `crash-consistent points were made mid-workload (${crashMidway.length})`);
  const latest = (await stack.drctlJson<{ recoveryPoints: RecoveryPoint__Output[] }>('points', 'vm1', '--select', 'latest')).recoveryPoints[0]!;
  const appPoint = (await stack.drctlJson<{ recoveryPoints: RecoveryPoint__Output[] }>('points', 'vm1', '--select', 'latest-app-consistent')).recoveryPoints[0]!;
  t.equal(appPoint.kind, 'APP_CONSISTENT');

  const checks: { point: RecoveryPoint__Output; label: string; mustHold: number }[] = [
    { point: appPoint, label: 'app-consistent (fsfreeze)', mustHold: committedBeforeApp },
    ...crashMidway.slice(-2).map((point) => ({ point, label: 'crash-consistent, mid-workload', mustHold: commits.filter((entry) => entry.committedMs < Number(point.sourceTimeMs)).length })),
    { point: latest, label: 'latest (crash-consistent, the file system still mounted)', mustHold: commits.length },
  ];
  for (const { point, label, mustHold } of checks) {
    const image = path.join(stack.datastore, 'restore', `${point.id.replace(/[^A-Za-z0-9]/g, '-')}.img`);
    await unary(stack.csClient, stack.csClient.materialiseRecoveryPoint, { recoveryPointId: point.id, path: image });
    if (point.kind === 'APP_CONSISTENT') {
      const clean = await run('e2fsck', ['-fn', image], { allowFailure: true });
      t.equal(clean.code, 0, `${label} ${point.id}: frozen, so e2fsck -fn finds it clean before any journal replay (${clean.stdout.trim().split('\n').pop()})`);
    }
    const { integrity, held } = await withMountedImage(image, path.join(dir, 'check'), async () => {
      const out = mustSucceed(await run('sqlite3', [path.join(dir, 'check', 'bank.db'), `PRAGMA integrity_check; SELECT count(*) FROM ledger WHERE n <= ${mustHold};`]), `sqlite3 on ${point.id}`).stdout.trim().split('\n');
      return { integrity: out[0], held: Number(out[1]) };
    });
    t.equal(integrity, 'ok', `${label} ${point.id}: mounts, and PRAGMA integrity_check says ok`);
    t.equal(held, mustHold, `${label} ${point.id}: holds every transaction committed before it (${mustHold})`);
    const checked = await run('e2fsck', ['-fn', image], { allowFailure: true });
    t.equal(checked.code, 0, `${label} ${point.id}: e2fsck -fn finds the file system clean after mounting (${checked.stdout.trim().split('\n').pop()})`);
    fs.rmSync(image);
  }

  // Unmount the source; the replica then equals it byte for byte.
  await cleanUp();
  const final = (await stack.drctlJson<{ recoveryPoints: RecoveryPoint__Output[] }>('points', 'vm1', '--select', 'latest')).recoveryPoints[0]!;
  const finalImage = path.join(stack.datastore, 'restore', 'final.img');
  await unary(stack.csClient, stack.csClient.materialiseRecoveryPoint, { recoveryPointId: final.id, path: finalImage });
  t.ok(fs.readFileSync(finalImage).equals(fs.readFileSync(source)), 'after umount, the latest point equals the source byte for byte');
  t.equal((await run('e2fsck', ['-fn', finalImage], { allowFailure: true })).code, 0, 'and e2fsck -fn finds it clean');
  fs.rmSync(finalImage);

  // Mounted again, the workload goes on, and the workload and the agent are SIGKILLed mid-flight: the newest
  // point the replica has (latest-processed: the agent is gone, nothing more can be drained) is a crash-consistent
  // state that mounts, checks clean and holds every transaction committed before its time.
  await attach(false);
  const beforeKill = commits.length;
  let stopWorkload = false;
  const workload = (async () => {
    while (!stopWorkload) await commit(++n);
  })().catch((error: Error) => error);
  await eventually('the workload to commit 25 more transactions', async () => (commits.length >= beforeKill + 25 ? true : undefined), 60_000, 20);
  await stack.agents.get('agent1')!.kill();
  stopWorkload = true;
  const workloadEnd = await workload;
  t.comment(`agent SIGKILLed after ${commits.length - beforeKill} more transactions; the workload then ended with: ${workloadEnd instanceof Error ? workloadEnd.message.split('\n')[0] : 'no error'}`);
  await cleanUp();
  // Whatever the process server had received is applied; wait until the newest point stops moving.
  let newest: RecoveryPoint__Output | undefined;
  await eventually('the replica to apply what the process server received', async () => {
    const selected = (await stack.drctlJson<{ recoveryPoints: RecoveryPoint__Output[] }>('points', 'vm1', '--select', 'latest-processed')).recoveryPoints[0];
    const settled = selected && newest && selected.id === newest.id ? selected : undefined;
    newest = selected;
    return settled;
  }, 60_000, 1_500);
  const afterKill = newest!;
  const mustHold = commits.filter((entry) => entry.committedMs < Number(afterKill.sourceTimeMs)).length;
  t.ok(mustHold > beforeKill, `the newest point after the kill (${afterKill.id}) is past the remount (${mustHold} of ${commits.length} commits before its time)`);
  const killedImage = path.join(stack.datastore, 'restore', 'after-kill.img');
  await unary(stack.csClient, stack.csClient.materialiseRecoveryPoint, { recoveryPointId: afterKill.id, path: killedImage });
  const { integrity, held } = await withMountedImage(killedImage, path.join(dir, 'check'), async () => {
    const out = mustSucceed(await run('sqlite3', [path.join(dir, 'check', 'bank.db'), `PRAGMA integrity_check; SELECT count(*) FROM ledger WHERE n <= ${mustHold};`]), 'sqlite3 after the kill').stdout.trim().split('\n');
    return { integrity: out[0], held: Number(out[1]) };
  });
  t.equal(integrity, 'ok', `after SIGKILL, ${afterKill.id}: mounts, and PRAGMA integrity_check says ok`);
  t.equal(held, mustHold, `after SIGKILL, ${afterKill.id}: holds every transaction committed before its time (${mustHold})`);
  const checked = await run('e2fsck', ['-fn', killedImage], { allowFailure: true });
  t.equal(checked.code, 0, `after SIGKILL, ${afterKill.id}: e2fsck -fn finds it clean after mounting (${checked.stdout.trim().split('\n').pop()})`);
});
