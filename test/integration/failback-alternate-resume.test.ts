// Goal (issue 4, must-shows 3 and 4), two sites on loopback:
// - the original disk at home is deleted after a failover: reprotect to an
//   alternate location sends everything (a full sync), and the failback lands
//   there byte-exact;
// - the configuration server is SIGKILLed in the middle of that reprotect and
//   started again: the job resumes and completes;
// - a failback stopped by the operator and restarted continues (the steps done
//   before the stop are not run again) and completes.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { unary } from '../../shared/grpc';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import { createImage, seededRandom } from '../helpers/disks';
import { eventually } from '../helpers/stack';
import { startSites, writeThrough } from '../helpers/sites';
import { sha256OfFile } from '../helpers/write-log';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 8 * MiB;

t.test('failback to an alternate location; a reprotect survives a configuration server crash; a stopped failback restarts', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  // B's shutdown hook takes a moment, so the operator can stop the failback while it runs.
  const sites = await startSites(t, { args: { agentB: ['--shutdown-hook', 'sleep 2'] } });
  const { cs } = sites;
  const homeDisk = path.join(sites.disksA, 'vm1.img');
  createImage(homeDisk, diskBytes, seed);
  await sites.drctlJson('policy', 'create', 'fast', '--crash-interval', '1s', '--app-interval', '0', '--group-interval', '0');
  await sites.drctlJson('machine', 'add', 'vm1', '--agent', 'agentA', '--disk', homeDisk);
  const enable = await unary(cs, cs.enableReplication, { machine: 'vm1', processServer: 'psA', masterTarget: 'mtB', datastore: path.join(sites.dsB, 'vm1'), policy: 'fast', captureMode: 'CAPTURE_WRITE_THROUGH' });
  await sites.waitJob(enable.jobId);
  const writerA = new WriteThroughClient(sites.daemons.agentA.address);
  t.teardown(() => writerA.close());
  await writeThrough(writerA, [homeDisk], diskBytes, 100, random);
  await sites.waitJob((await unary(cs, cs.failover, { machine: 'vm1', planned: true })).jobId);
  await sites.waitJob((await unary(cs, cs.commitFailover, { machine: 'vm1' })).jobId);
  const diskB = (await sites.machine('vm1')).recovery!.diskPaths[0]!;

  // The original disk is gone: reprotect to an alternate location, and crash the configuration server meanwhile.
  fs.rmSync(homeDisk);
  const reprotect = await unary(cs, cs.reprotect, { machine: 'vm1', agent: 'agentB', processServer: 'psB', masterTarget: 'mtA', datastore: path.join(sites.dsA, 'vm1'), location: 'ALTERNATE_LOCATION' });
  await eventually('the reprotect to be under way', async () => {
    const job = await unary(cs, cs.getJob, { jobId: reprotect.jobId });
    return job.steps.some((step) => step.state === 'JOB_RUNNING' || step.state === 'JOB_SUCCEEDED') ? job : undefined;
  }, 30_000, 20);
  await sites.restart('cs', { kill: true });
  const reprotected = await sites.waitJob(reprotect.jobId);
  t.pass('the reprotect resumed after the configuration server was SIGKILLed and completed');
  t.ok(Number(reprotected.bytesSent) >= diskBytes / 2, `an alternate location gets a full sync (${reprotected.bytesSent} bytes sent for a ${diskBytes}-byte disk of random data)`);
  let machine = await sites.machine('vm1');
  t.equal(machine.state, 'PROTECTED', 'protected in reverse');
  const newHome = machine.home!.diskPaths[0]!;
  t.not(newHome, homeDisk, `the machine's disk at home is now in the alternate datastore (${newHome})`);

  // Failback, stopped by the operator while B shuts down, then restarted.
  const writerB = new WriteThroughClient(sites.daemons.agentB.address);
  t.teardown(() => writerB.close());
  await writeThrough(writerB, [diskB], diskBytes, 100, random);
  const failback = await unary(cs, cs.failback, { machine: 'vm1' });
  await eventually('the failback to shut the source down', async () => {
    const job = await unary(cs, cs.getJob, { jobId: failback.jobId });
    return job.steps.find((step) => step.name === 'shutdown-source')?.state === 'JOB_RUNNING' ? job : undefined;
  }, 60_000, 20);
  await unary(cs, cs.stopJob, { jobId: failback.jobId });
  const stopped = await sites.waitJob(failback.jobId, { allowFailure: true });
  t.equal(stopped.state, 'JOB_STOPPED', 'the operator stopped the failback');
  machine = await sites.machine('vm1');
  t.equal(machine.restartableJobId, failback.jobId, 'the machine names the job to restart');
  const doneBefore = stopped.steps.filter((step) => step.state === 'JOB_SUCCEEDED').map((step) => step.name);
  t.ok(doneBefore.length > 0, `steps done before the stop: ${doneBefore.join(', ')}`);
  const refusedMeanwhile = await unary(cs, cs.failover, { machine: 'vm1', planned: true }).catch((error: Error) => error);
  t.match(String((refusedMeanwhile as Error).message), /restart/, 'another operation meanwhile is refused and names the restart');

  await unary(cs, cs.restartJob, { jobId: failback.jobId });
  const finished = await sites.waitJob(failback.jobId);
  t.equal(finished.jobId, failback.jobId, 'the same job continued');
  for (const name of doneBefore) {
    const before = stopped.steps.find((step) => step.name === name)!;
    const after = finished.steps.find((step) => step.name === name)!;
    t.equal(after.message, before.message, `step ${name} was not run again`);
  }
  machine = await sites.machine('vm1');
  t.equal(machine.state, 'PROTECTED', 'failed back and protected');
  t.equal(machine.direction, 'FORWARD', 'from home again');
  t.equal(machine.disks[0]!.sourcePath, newHome, 'running at home on the alternate-location disk');
  t.equal(sha256OfFile(newHome), sha256OfFile(diskB), 'which equals B\'s disk at shutdown, byte for byte');
});
