// Goal (issue 4, must-show 5), two sites on loopback: at most 3 failbacks run
// at once and a 4th waits in the queue until one of them ends; a reprotect to
// a master target that already holds 60 disks is refused; each with a clear
// message. (A failover before any recovery point is refused in
// failover-unplanned.test.ts.)
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import t from 'tap';
import { unary } from '../../shared/grpc';
import { concurrentFailbacksMax, disksPerMasterTargetMax } from '../../shared/limits';
import { createImage } from '../helpers/disks';
import { eventually } from '../helpers/stack';
import { startSites } from '../helpers/sites';

const MiB = 1024 * 1024;
const diskBytes = 1 * MiB;

t.test('the failback queue and the 60-disk limit', async (t) => {
  const gate = path.join(path.resolve(process.env.TMPDIR ?? '/tmp'), `drplane-gate-${process.pid}`);
  fs.mkdirSync(gate, { recursive: true });
  t.teardown(() => fs.rmSync(gate, { recursive: true, force: true }));
  // B's shutdown hook waits until the test releases that machine.
  const hook = `while [ ! -e ${gate}/release-$DRPLANE_MACHINE ]; do sleep 0.05; done`;
  const sites = await startSites(t, { args: { agentB: ['--shutdown-hook', hook, '--hook-timeout-ms', '30000'] } });
  const { cs } = sites;
  const names = ['vm1', 'vm2', 'vm3', 'vm4', 'vm5'];
  await sites.drctlJson('policy', 'create', 'fast', '--crash-interval', '1s', '--app-interval', '0', '--group-interval', '0');
  for (const [index, name] of names.entries()) {
    const disk = path.join(sites.disksA, `${name}.img`);
    createImage(disk, diskBytes, index + 1);
    await sites.drctlJson('machine', 'add', name, '--agent', 'agentA', '--disk', disk);
  }
  const all = <T>(list: string[], action: (name: string) => Promise<T>) => Promise.all(list.map(action));
  await all(names, async (name) => sites.waitJob((await unary(cs, cs.enableReplication, { machine: name, processServer: 'psA', masterTarget: 'mtB', datastore: path.join(sites.dsB, name), policy: 'fast', captureMode: 'CAPTURE_WRITE_THROUGH' })).jobId));
  await all(names, async (name) => sites.waitJob((await unary(cs, cs.failover, { machine: name, planned: true })).jobId));
  await all(names, async (name) => sites.waitJob((await unary(cs, cs.commitFailover, { machine: name })).jobId));
  const reverse = names.slice(0, 4);
  await all(reverse, async (name) => sites.waitJob((await unary(cs, cs.reprotect, { machine: name, agent: 'agentB', processServer: 'psB', masterTarget: 'mtA', datastore: path.join(sites.dsA, name) })).jobId));

  // Three failbacks run (held in B's shutdown hook); the fourth waits.
  t.equal(concurrentFailbacksMax, 3, 'the limit from the seeds');
  const running = [];
  for (const name of reverse.slice(0, concurrentFailbacksMax)) {
    const job = await unary(cs, cs.failback, { machine: name });
    running.push(job);
    await eventually(`${name}'s failback to start`, async () => ((await unary(cs, cs.getJob, { jobId: job.jobId })).state === 'JOB_RUNNING' ? true : undefined));
  }
  const fourth = await unary(cs, cs.failback, { machine: 'vm4' });
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  const waiting = await unary(cs, cs.getJob, { jobId: fourth.jobId });
  t.equal(waiting.state, 'JOB_QUEUED', 'the 4th failback waits in the queue');
  t.match(waiting.detail, /failback slot/, `and says why: ${waiting.detail}`);
  t.ok(running.every((job) => waiting.detail.includes(job.jobId)), 'naming the failbacks that hold the slots');

  fs.writeFileSync(path.join(gate, 'release-vm1'), '');
  await sites.waitJob(running[0]!.jobId);
  await eventually('the 4th failback to start once one ended', async () => ((await unary(cs, cs.getJob, { jobId: fourth.jobId })).state === 'JOB_RUNNING' ? true : undefined), 30_000);
  t.pass('the 4th failback started when the first ended');
  for (const name of reverse) fs.writeFileSync(path.join(gate, `release-${name}`), '');
  const ended = await Promise.all([...running.slice(1), fourth].map((job) => sites.waitJob(job.jobId)));
  t.ok(ended.every((job) => job.state === 'JOB_SUCCEEDED'), 'all four failbacks completed');

  // mtA fills up to 60 disks; vm5 (committed at B) cannot be reprotected to it.
  const held = (await unary(sites.client.mtA, sites.client.mtA.getStatus, {})).replicaCount;
  for (let index = held; index < disksPerMasterTargetMax; index++) {
    await unary(sites.client.mtA, sites.client.mtA.createReplica, { diskId: `filler-${index}`, path: path.join(sites.dsA, 'filler', `filler-${index}.img`), diskBytes: 4096, epoch: 1 });
  }
  t.equal((await unary(sites.client.mtA, sites.client.mtA.getStatus, {})).replicaCount, disksPerMasterTargetMax, `mtA holds ${disksPerMasterTargetMax} disks`);
  const refused = await unary(cs, cs.reprotect, { machine: 'vm5', agent: 'agentB', processServer: 'psB', masterTarget: 'mtA', datastore: path.join(sites.dsA, 'vm5') }).catch((error: grpc.ServiceError) => error);
  t.ok(refused instanceof Error, 'a reprotect to a master target with 60 disks is refused');
  t.match((refused as grpc.ServiceError).details, /60/, `with a clear message: ${(refused as grpc.ServiceError).details}`);
  t.equal((await sites.machine('vm5')).state, 'COMMITTED', 'and vm5 is left as it was');
});
