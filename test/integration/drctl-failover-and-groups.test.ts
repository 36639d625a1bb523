// Goal: the failover commands of drctl as an operator runs them, and the
// rules of replication groups at reprotect, two sites on loopback:
// - drctl failover / commit / reprotect / failback / job stop / job restart
//   start jobs, watch them to their end and exit 0 (1 with the reason when a
//   request is refused); drctl machines and machine show say the direction;
// - refusals name the state and what to do first;
// - a replication group reprotects with one master target: a member naming
//   another one is refused; --group reprotects every member in one job whose
//   children are the members' jobs.
import path from 'node:path';
import t from 'tap';
import { unary } from '../../shared/grpc';
import type { Job__Output } from '../../generated/drplane/v1/Job';
import { createImage } from '../helpers/disks';
import { runDrctl } from '../helpers/stack';
import { startSites } from '../helpers/sites';

const MiB = 1024 * 1024;

t.test('drctl failover, commit, reprotect (one master target per group), failback', async (t) => {
  const sites = await startSites(t);
  const { cs } = sites;
  const human = (...args: string[]) => runDrctl(sites.daemons.cs.address, ...args);
  const names = ['vm1', 'vm2', 'vm3', 'vm4'];
  // Set-up through the API (drctl policy create / machine add / group create / enable are not what this
  // file is about, and each drctl run is a process start): the same requests drctl sends.
  const { policy } = await unary(cs, cs.createPolicy, { name: 'fast', crashConsistentIntervalMs: 1_000 });
  await unary(cs, cs.updatePolicy, { policy: policy!.policyId, appConsistentIntervalMs: 0, groupConsistentIntervalMs: 0 });
  await Promise.all(
    names.map((name, index) => {
      const disk = path.join(sites.disksA, `${name}.img`);
      createImage(disk, 1 * MiB, index + 1);
      return unary(cs, cs.addMachine, { name, agent: 'agentA', disks: [{ sourcePath: disk }] });
    }),
  );
  await Promise.all([unary(cs, cs.createReplicationGroup, { name: 'g1', machines: ['vm1', 'vm2'] }), unary(cs, cs.createReplicationGroup, { name: 'g2', machines: ['vm3', 'vm4'] })]);

  const refused = await human('failover', 'vm1', '--select', 'latest-processed');
  t.equal(refused.code, 1, 'a failover before any recovery point exits 1');
  t.match(refused.stderr, /FAILED_PRECONDITION: machine vm1 has no recovery point yet/, `and says why: ${refused.stderr.trim()}`);

  // The four enables run at once, each watched to its end.
  const enableJobs = await Promise.all(
    names.map((name) => unary(cs, cs.enableReplication, { machine: name, datastore: path.join(sites.dsB, name), processServer: 'psA', masterTarget: 'mtB', policy: 'fast', captureMode: 'CAPTURE_WRITE_THROUGH' })),
  );
  for (const [index, name] of names.entries()) {
    const enabled = await sites.waitJob(enableJobs[index]!.jobId, { allowFailure: true });
    t.equal(enabled.state, 'JOB_SUCCEEDED', `${name} enabled${enabled.error ? `: ${enabled.error}` : ''}`);
  }
  const [listed, commitTooEarly] = await Promise.all([human('machines'), human('commit', 'vm1')]);
  t.match(listed.stdout, /DIRECTION/, 'drctl machines has a direction column');
  t.match(listed.stdout, /vm1 .*PROTECTED\s+home -> recovery/, 'and shows protected machines from home to recovery');

  t.match(commitTooEarly.stderr, /machine vm1 is PROTECTED: fail it over first \(drctl failover vm1\)/, `commit before failover names what to do: ${commitTooEarly.stderr.trim()}`);

  // Unplanned for vm1, planned for the others, all at once, each watched to its end (human output on a pipe: a line per step).
  const [failover, ...planned] = await Promise.all([
    human('failover', 'vm1', '--select', 'latest-processed', '--no-start'),
    ...['vm2', 'vm3', 'vm4'].map((name) => sites.drctlJson<Job__Output>('failover', name, '--planned', ...(name === 'vm3' ? ['--sync-first'] : []))),
  ]);
  t.equal(failover.code, 0, `drctl failover exits 0: ${failover.stderr.trim()}`);
  t.match(failover.stdout, /job job-\d+ \(failover\) succeeded/, 'and prints the summary');
  t.match(failover.stdout, /selector LATEST_PROCESSED: vm1-disk0@\d+/, 'and what it chose');
  for (const [index, name] of ['vm2', 'vm3', 'vm4'].entries()) {
    const syncFirst = name === 'vm3';
    const job = planned[index]!;
    t.equal(job.state, 'JOB_SUCCEEDED', `${name} failed over (planned${syncFirst ? ', synchronized first' : ''})`);
    t.match(job.detail, /planned: drained to/, 'the drained points are on the job');
    if (syncFirst) t.same(job.steps.slice(0, 3).map((step) => step.name), ['check', 'synchronize', 'shutdown-source'], 'it synchronized before the shutdown');
  }
  const reprotectTooEarly = await human('reprotect', 'vm1', '--agent', 'agentB');
  t.match(reprotectTooEarly.stderr, /machine vm1 is FAILED_OVER: commit it \(drctl commit vm1\) or change its recovery point/, `reprotect before commit: ${reprotectTooEarly.stderr.trim()}`);
  // drctl commit for vm1; the others through the API (the same request), all at once, each to its end.
  const commits = await Promise.all(
    names.map((name) => (name === 'vm1' ? sites.drctlJson<Job__Output>('commit', name) : unary(cs, cs.commitFailover, { machine: name }).then((job) => sites.waitJob(job.jobId, { allowFailure: true })))),
  );
  names.forEach((name, index) => t.equal(commits[index]!.state, 'JOB_SUCCEEDED', `${name} committed${commits[index]!.error ? `: ${commits[index]!.error}` : ''}`));

  // Group g1 member by member, and group g2 at once, side by side (the groups are independent).
  await Promise.all([
    (async () => {
      // Group g1, member by member: the first chooses mtA; the second may not name mtB.
      const first = await sites.drctlJson<Job__Output>('reprotect', 'vm1', '--agent', 'agentB', '--process-server', 'psB', '--master-target', 'mtA', '--datastore', path.join(sites.dsA, 'g1'));
      t.equal(first.state, 'JOB_SUCCEEDED', 'vm1 reprotected to mtA');
      const other = await human('reprotect', 'vm2', '--agent', 'agentB', '--process-server', 'psB', '--master-target', 'mtB', '--datastore', path.join(sites.dsB, 'elsewhere'));
      t.equal(other.code, 1, 'a member naming another master target is refused');
      t.match(other.stderr, /replication group g1.*one master target/, `with the rule: ${other.stderr.trim()}`);
      t.equal((await sites.machine('vm2')).state, 'COMMITTED', 'and vm2 is left as it was');
      const second = await sites.drctlJson<Job__Output>('reprotect', 'vm2', '--agent', 'agentB', '--process-server', 'psB', '--datastore', path.join(sites.dsA, 'g1'));
      t.equal(second.state, 'JOB_SUCCEEDED', 'without --master-target, vm2 goes to the group\'s master target');
      t.equal((await sites.machine('vm2')).masterTargetId, (await sites.machine('vm1')).masterTargetId, 'the same as vm1\'s');
    })(),
    (async () => {
      // Group g2 at once.
      const group = await sites.drctlJson<Job__Output>('reprotect', '--group', 'g2', '--agent', 'agentB', '--process-server', 'psB', '--master-target', 'mtA', '--datastore', path.join(sites.dsA, 'g2'));
      t.equal(group.kind, 'reprotect-group');
      t.equal(group.state, 'JOB_SUCCEEDED', 'the group reprotected');
      t.same(group.steps.map((step) => step.name), ['reprotect vm3', 'reprotect vm4'], 'a step per member');
      t.equal(group.childJobIds.length, 2, 'each running its own job');
      for (const childId of group.childJobIds) {
        const child = await unary(cs, cs.getJob, { jobId: childId });
        t.match(child, { kind: 'reprotect', state: 'JOB_SUCCEEDED' }, `${childId} is a member's reprotect`);
      }
    })(),
  ]);
  for (const name of names) t.match(await sites.machine(name), { state: 'PROTECTED', direction: 'REVERSE' }, `${name} is protected in reverse`);
  const shown = await human('machine', 'show', 'vm3');
  t.match(shown.stdout, /direction:\s+recovery -> home/, 'machine show says the direction');
  t.match(shown.stdout, /home disks:/, 'and the disks at each site');

  // Fail vm1 back unplanned; the operator stops it wherever it is, then restarts it.
  const failback = await sites.drctlJson<Job__Output>('failback', 'vm1', '--unplanned', '--select', 'latest-processed', '--no-wait');
  t.ok(['JOB_QUEUED', 'JOB_RUNNING', 'JOB_SUCCEEDED'].includes(failback.state), 'drctl failback --no-wait answers the job');
  const stop = await human('job', 'stop', failback.jobId);
  t.equal(stop.code === 0 || /already ended/.test(stop.stderr), true, `drctl job stop: ${stop.stdout.trim() || stop.stderr.trim()}`);
  const afterStop = await unary(cs, cs.getJob, { jobId: failback.jobId });
  if (afterStop.state === 'JOB_STOPPED') {
    const busy = await human('commit', 'vm1');
    t.match(busy.stderr, new RegExp(`restart it: drctl job restart ${failback.jobId}`), `other operations name the restart: ${busy.stderr.trim()}`);
    const restarted = await sites.drctlJson<Job__Output>('job', 'restart', failback.jobId);
    t.equal(restarted.state, 'JOB_SUCCEEDED', 'the restarted failback completed');
  } else {
    t.equal((await sites.waitJob(failback.jobId)).state, 'JOB_SUCCEEDED', 'the failback had ended before the stop reached it');
  }
  t.match(await sites.machine('vm1'), { state: 'PROTECTED', direction: 'FORWARD' }, 'vm1 is home and protected again');
});
