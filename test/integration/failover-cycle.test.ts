// Goal (issue 4, must-show 1): the whole cycle of the seeds on one machine with
// two disks and two sites on loopback. Protect A -> B, write, planned failover
// to B (the recovered disks equal the source at shutdown), commit, reprotect
// B -> A to the original location (bytes moved ~ the changes made on B, not the
// disk size), write on B, planned failback to A (the home disks equal B's at
// shutdown), which commits and reprotects A -> B again; then the machine is
// protected from home and a new point is exact. Every step is a job that
// finished; real daemons, real files, real LMDB.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { unary } from '../../shared/grpc';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import type { Job__Output } from '../../generated/drplane/v1/Job';
import { createImage, seededRandom } from '../helpers/disks';
import { startSites, writeDirect, writeThrough } from '../helpers/sites';
import { sha256OfFile } from '../helpers/write-log';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 8 * MiB;

t.test('protect, planned failover, commit, reprotect, failback: byte-exact where the seeds say', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const sites = await startSites(t);
  const { cs } = sites;
  const homeDisks = [0, 1].map((index) => path.join(sites.disksA, `vm1-d${index}.img`));
  homeDisks.forEach((disk, index) => createImage(disk, diskBytes, seed + index));

  await sites.drctlJson('policy', 'create', 'fast', '--crash-interval', '1s', '--app-interval', '0', '--group-interval', '0');
  await sites.drctlJson('machine', 'add', 'vm1', '--agent', 'agentA', '--disk', homeDisks[0]!, '--disk', homeDisks[1]!);
  const enable = await unary(cs, cs.enableReplication, { machine: 'vm1', processServer: 'psA', masterTarget: 'mtB', datastore: path.join(sites.dsB, 'vm1'), policy: 'fast', captureMode: 'CAPTURE_WRITE_THROUGH' });
  const jobs: Job__Output[] = [await sites.waitJob(enable.jobId)];

  // Write on A through its agent.
  const writerA = new WriteThroughClient(sites.daemons.agentA.address);
  t.teardown(() => writerA.close());
  await writeThrough(writerA, homeDisks, diskBytes, 200, random);

  // Planned failover to B.
  const failover = await unary(cs, cs.failover, { machine: 'vm1', planned: true });
  jobs.push(await sites.waitJob(failover.jobId));
  let machine = await sites.machine('vm1');
  t.equal(machine.state, 'FAILED_OVER', 'failed over, commit pending');
  const disksB = machine.recovery!.diskPaths;
  t.equal(disksB.length, 2, 'a recovered disk per disk at B');
  for (const [index, disk] of homeDisks.entries()) t.equal(sha256OfFile(disksB[index]!), sha256OfFile(disk), `B's ${path.basename(disksB[index]!)} equals the source at shutdown: no byte lost`);
  await t.rejects(writerA.write(homeDisks[0]!, 0, Buffer.alloc(4096, 1)), /shut down/, 'the source takes no more writes after the shutdown');

  const commit = await unary(cs, cs.commitFailover, { machine: 'vm1' });
  jobs.push(await sites.waitJob(commit.jobId));
  machine = await sites.machine('vm1');
  t.equal(machine.state, 'COMMITTED', 'committed');
  const retired = await unary(sites.client.mtB, sites.client.mtB.getReplica, { diskId: 'vm1-disk0' });
  t.ok(retired.retired, 'the replica B failed over from is retired');
  t.notOk(fs.existsSync(retired.path), 'and its file is gone (the recovered disk is the machine now)');

  // The machine runs at B and changes its disks before it is reprotected.
  const changedOnB = writeDirect(disksB, diskBytes, 40, random);

  const reprotect = await unary(cs, cs.reprotect, { machine: 'vm1', agent: 'agentB', processServer: 'psB', masterTarget: 'mtA', datastore: path.join(sites.dsA, 'vm1'), location: 'ORIGINAL_LOCATION' });
  const reprotected = await sites.waitJob(reprotect.jobId);
  jobs.push(reprotected);
  machine = await sites.machine('vm1');
  t.equal(machine.state, 'PROTECTED', 'protected again');
  t.equal(machine.direction, 'REVERSE', 'in the reverse direction (B -> A)');
  const sent = Number(reprotected.bytesSent);
  t.comment(`reprotect to the original location sent ${sent} bytes for ${changedOnB} bytes changed on B (disks: ${2 * diskBytes} bytes)`);
  t.ok(sent <= 2 * changedOnB + 1 * MiB, `bytes moved (${sent}) are about the changes made on B (${changedOnB}), not the disk size`);
  t.ok(sent >= changedOnB / 2, 'and the changes did travel');

  // Write on B through its agent, then fail back.
  const writerB = new WriteThroughClient(sites.daemons.agentB.address);
  t.teardown(() => writerB.close());
  await writeThrough(writerB, disksB, diskBytes, 200, random);
  const failback = await unary(cs, cs.failback, { machine: 'vm1' });
  const failedBack = await sites.waitJob(failback.jobId);
  jobs.push(failedBack);
  machine = await sites.machine('vm1');
  t.equal(machine.state, 'PROTECTED', 'failed back and protected');
  t.equal(machine.direction, 'FORWARD', 'from home again (A -> B)');
  t.same(machine.disks.map((disk) => disk.sourcePath), homeDisks, 'running on its original disks at A');
  for (const [index, disk] of homeDisks.entries()) t.equal(sha256OfFile(disk), sha256OfFile(disksB[index]!), `${path.basename(disk)} at A equals B's disk at shutdown`);

  // Protected from home: a write on A reaches a point that materialises exactly.
  const writerHome = new WriteThroughClient(sites.daemons.agentA.address);
  t.teardown(() => writerHome.close());
  await writeThrough(writerHome, homeDisks, diskBytes, 50, random);
  const latest = await unary(cs, cs.selectRecoveryPoint, { machine: 'vm1', selector: 'LATEST' });
  for (const [index, point] of latest.recoveryPoints.entries()) {
    const target = path.join(sites.dsB, 'check', `${point.diskId}.img`);
    await unary(cs, cs.materialiseRecoveryPoint, { recoveryPointId: point.id, path: target });
    t.equal(sha256OfFile(target), sha256OfFile(homeDisks[index]!), `${point.id} after failback materialises to the source`);
  }

  for (const job of jobs) {
    t.equal(job.state, 'JOB_SUCCEEDED', `${job.kind} ${job.jobId} succeeded`);
    t.ok(job.steps.every((step) => step.state === 'JOB_SUCCEEDED'), `every step of ${job.kind} finished: ${job.steps.map((step) => step.name).join(', ')}`);
  }
  t.same(jobs.map((job) => job.kind), ['enable-replication', 'failover', 'commit', 'reprotect', 'failback'], 'one job per operation');
});
