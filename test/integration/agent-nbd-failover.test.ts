// Goal (issue 12, item 4): failover and failback of a machine whose disk is
// written over NBD, across the two sites on loopback. The machine writes its
// disk at A through agentA's NBD server (qemu-io, by the disk's path under a
// disk root); a planned failover shuts the source down, after which A's export
// is read-only and a write through it is refused (EPERM); the recovered disk
// at B is served by agentB's NBD server and holds every byte written at A;
// the machine runs at B writing through B's NBD server; reprotect and failback
// land it back on the disk at home, which equals B's and is writable again
// over NBD, and a write there replicates exactly.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { unary } from '../../shared/grpc';
import type { Job__Output } from '../../generated/drplane/v1/Job';
import { createImage } from '../helpers/disks';
import { tempDir } from '../helpers/daemons';
import { mustSucceed, nbdUri, qemuIo, run, whyNoNbdClients } from '../helpers/nbd';
import { CMD, NBD, RawClient } from '../helpers/nbd-raw-client';
import { startSites } from '../helpers/sites';
import { sha256OfFile } from '../helpers/write-log';

const MiB = 1024 * 1024;
const diskBytes = 8 * MiB;
const why = whyNoNbdClients(['qemu-io', 'nbdinfo']);

t.test('an NBD-served machine: protect, planned failover, commit, reprotect, failback', { skip: why || false }, async (t) => {
  // Socket paths stay short (a Unix socket path is at most 107 bytes).
  const sockets = tempDir('drp-nbd-');
  t.teardown(() => fs.rmSync(sockets, { recursive: true, force: true }));
  const socketA = path.join(sockets, 'a.sock');
  const socketB = path.join(sockets, 'b.sock');
  const sites = await startSites(t, { args: { agentA: ['--nbd-listen', `unix:${socketA}`], agentB: ['--nbd-listen', `unix:${socketB}`] } });
  const { cs } = sites;
  const home = path.join(sites.disksA, 'vm1-d0.img');
  createImage(home, diskBytes, 3);

  await sites.drctlJson('policy', 'create', 'fast', '--crash-interval', '1s', '--app-interval', '0', '--group-interval', '0');
  await sites.drctlJson('machine', 'add', 'vm1', '--agent', 'agentA', '--disk', home);
  const enable = await unary(cs, cs.enableReplication, { machine: 'vm1', processServer: 'psA', masterTarget: 'mtB', datastore: path.join(sites.dsB, 'vm1'), policy: 'fast', captureMode: 'CAPTURE_WRITE_THROUGH' });
  const jobs: Job__Output[] = [await sites.waitJob(enable.jobId)];

  // The machine writes at A through agentA's NBD server (its disk named by its path under the disk root).
  const atA = nbdUri(socketA, home);
  await qemuIo(atA, ['write -P 0x11 1000 3000', 'write -P 0x22 1048576 2097152', 'write -z 4194304 65536', 'flush']);

  const failover = await unary(cs, cs.failover, { machine: 'vm1', planned: true });
  jobs.push(await sites.waitJob(failover.jobId));
  let machine = await sites.machine('vm1');
  t.equal(machine.state, 'FAILED_OVER', 'failed over, commit pending');
  const atBPath = machine.recovery!.diskPaths[0]!;
  t.equal(sha256OfFile(atBPath), sha256OfFile(home), "B's recovered disk equals the source at shutdown: every NBD write arrived");
  const infoA = JSON.parse(mustSucceed(await run('nbdinfo', ['--json', atA]), 'nbdinfo at A').stdout) as { exports: { is_read_only: boolean }[] };
  t.equal(infoA.exports[0]!.is_read_only, true, "after the shutdown, A's export is read-only");
  const refused = await run('qemu-io', ['-f', 'raw', atA, '-c', 'write -P 0x99 0 4096'], { allowFailure: true });
  t.match(refused.stdout + refused.stderr, /Operation not permitted|read-only|Read-only|Permission denied/, `a write at A is refused (${(refused.stdout + refused.stderr).trim().split('\n')[0]})`);
  // A client that ignores the read-only flag and writes anyway is refused by the server: EPERM, nothing written.
  const raw = await RawClient.connect(socketA);
  t.teardown(() => raw.destroy());
  await raw.hello();
  t.equal((await raw.go(home)).at(-1)!.type, 1, 'the export still serves reads');
  const handle = raw.request(CMD.write, 0, 4096, { payload: Buffer.alloc(4096, 0x99) });
  t.match(await raw.reply(), { error: NBD.EPERM, handle }, 'a WRITE to the shut-down export: EPERM');
  raw.destroy();
  t.equal(sha256OfFile(home), sha256OfFile(atBPath), 'and the source is unchanged');
  const homeAtShutdown = sha256OfFile(home);

  const commit = await unary(cs, cs.commitFailover, { machine: 'vm1' });
  jobs.push(await sites.waitJob(commit.jobId));

  // The machine runs at B: agentB serves the recovered disk over NBD; it holds what was written at A.
  const atB = nbdUri(socketB, atBPath);
  await qemuIo(atB, ['read -P 0x11 1000 3000', 'read -P 0x22 1048576 2097152', 'read -P 0 4194304 65536']);
  await qemuIo(atB, ['write -P 0x33 5000 512', 'write -P 0x44 6291456 1048576', 'flush']);

  const reprotect = await unary(cs, cs.reprotect, { machine: 'vm1', agent: 'agentB', processServer: 'psB', masterTarget: 'mtA', datastore: path.join(sites.dsA, 'vm1'), location: 'ORIGINAL_LOCATION' });
  jobs.push(await sites.waitJob(reprotect.jobId));
  // Protected B -> A: NBD writes at B are captured and replicated too.
  await qemuIo(atB, ['write -P 0x55 7340032 8192', 'write -f -P 0x66 12345 6789']);

  const failback = await unary(cs, cs.failback, { machine: 'vm1' });
  jobs.push(await sites.waitJob(failback.jobId));
  machine = await sites.machine('vm1');
  t.equal(machine.state, 'PROTECTED', 'failed back and protected');
  t.equal(machine.direction, 'FORWARD', 'from home again (A -> B)');
  t.equal(sha256OfFile(home), sha256OfFile(atBPath), "the disk at home equals B's at failback, NBD writes at B included");
  t.not(sha256OfFile(home), homeAtShutdown, 'and it has changed since the failover');

  // Home again: A's export takes writes, and they replicate exactly.
  const infoHome = JSON.parse(mustSucceed(await run('nbdinfo', ['--json', atA]), 'nbdinfo at home').stdout) as { exports: { is_read_only: boolean }[] };
  t.equal(infoHome.exports[0]!.is_read_only, false, "after failback, A's export is writable again");
  await qemuIo(atA, ['write -P 0x77 100 5000', 'flush']);
  const latest = await unary(cs, cs.selectRecoveryPoint, { machine: 'vm1', selector: 'LATEST' });
  const point = latest.recoveryPoints[0]!;
  const target = path.join(sites.dsB, 'check', `${point.diskId}.img`);
  await unary(cs, cs.materialiseRecoveryPoint, { recoveryPointId: point.id, path: target });
  t.equal(sha256OfFile(target), sha256OfFile(home), `${point.id} after failback materialises to the source, the NBD write at home included`);
  for (const job of jobs) t.equal(job.state, 'JOB_SUCCEEDED', `${job.kind} ${job.jobId} succeeded`);
});
