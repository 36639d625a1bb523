// Goal: a recovery plan of one machine and one replication group fails over
// and commits as one job each, with the real daemons on two sites (site A:
// psA, mtA, agentA; site B: psB, mtB, agentB):
// - the plan job has a step per member, in order, and names its plan and the
//   machines' own failover jobs (Job.plan_id, Job.child_job_ids);
// - the machine fails over at the plan's selector (LATEST: everything written
//   before is there), the group's machines at the group's newest complete group
//   point (BY_ID, the same point ids), each disk equal to its source then;
// - the plan's last job is the failover, then the commit; every machine ends
//   FAILED_OVER, then COMMITTED; a second failover of the plan is refused;
// - a machine's failover that fails fails the plan job with its error, and the
//   members after it do not start; restarting the plan job (drctl job restart)
//   fails the machine over anew (its failover failed before its fence, so the
//   machine was protected again);
// - the configuration server killed (SIGKILL) once the plan job has started
//   its first machine's job: after the restart the plan job resumes, waits for
//   the jobs it started, and starts no second failover of any machine.
import path from 'node:path';
import t from 'tap';
import { unary } from '../../shared/grpc';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import type { Job__Output } from '../../generated/drplane/v1/Job';
import { createImage, seededRandom } from '../helpers/disks';
import { eventually, runDrctl } from '../helpers/stack';
import { startSites, writeThrough } from '../helpers/sites';
import { sha256OfFile } from '../helpers/write-log';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 8 * MiB;

t.test('a plan of a machine and a group fails over (group at its group point) and commits', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const sites = await startSites(t);
  const { cs } = sites;
  const names = ['vm1', 'vm2', 'vm3'];
  const sources = names.map((name, index) => {
    const file = path.join(sites.disksA, `${name}.img`);
    createImage(file, diskBytes, seed + index, MiB);
    return file;
  });
  await sites.drctlJson('policy', 'create', 'fast', '--crash-interval', '1s', '--app-interval', '0', '--group-interval', '0');
  for (const [index, name] of names.entries()) await sites.drctlJson('machine', 'add', name, '--agent', 'agentA', '--disk', sources[index]!);
  await sites.drctlJson('group', 'create', 'g1', '--machine', 'vm2', '--machine', 'vm3');
  for (const name of names) {
    const enable = await unary(cs, cs.enableReplication, { machine: name, processServer: 'psA', masterTarget: 'mtB', datastore: path.join(sites.dsB, name), policy: 'fast', captureMode: 'CAPTURE_WRITE_THROUGH' });
    await sites.waitJob(enable.jobId);
  }
  const writer = new WriteThroughClient(sites.daemons.agentA.address);
  t.teardown(() => writer.close());

  // Writes, then the group's point: vm2 and vm3 as they are now.
  await writeThrough(writer, sources, diskBytes, 120, random);
  const groupPoint = await unary(cs, cs.takeGroupPoint, { group: 'g1', tag: 'before-plan' });
  const atGroupPoint = { vm2: sha256OfFile(sources[1]!), vm3: sha256OfFile(sources[2]!) };
  const complete = await eventually('the group point to be complete', async () => {
    const { points } = await unary(cs, cs.listGroupPoints, { group: 'g1' });
    return points.find((point) => point.groupPointId === groupPoint.groupPointId && point.complete);
  }, 30_000);
  // More writes after it: the group fails over without them, vm1 (LATEST) with them.
  await writeThrough(writer, sources, diskBytes, 120, random);
  const latest = { vm1: sha256OfFile(sources[0]!) };

  // A plan whose first machine cannot fail over at the time asked: no point is that old.
  await sites.drctlJson('plan', 'create', 'too-early', '--machine', 'vm1', '--machine', 'vm2');
  const early = await runDrctl(sites.daemons.cs.address, 'plan', 'failover', 'too-early', '--select', '<=2001-01-01T00:00:00Z', '--no-start');
  t.equal(early.code, 1, 'the plan failover fails');
  t.match(early.stderr, /\ndrctl: FAILED: job job-\d+ \(plan-failover\): vm1: failover job-\d+ failed: no recovery point of vm1-disk0 matches AT_OR_BEFORE/, `with the machine's error: ${early.stderr.trim().split('\n').pop()}`);
  const failedPlanJobId = (await unary(cs, cs.getRecoveryPlan, { plan: 'too-early' })).lastJobId;
  const failedPlanJob = await unary(cs, cs.getJob, { jobId: failedPlanJobId });
  t.same(failedPlanJob.steps.map((step) => [step.name, step.state]), [['machine vm1', 'JOB_FAILED'], ['machine vm2', 'JOB_STOPPED']], 'vm2 did not start');
  t.equal(failedPlanJob.childJobIds.length, 1);
  t.equal((await sites.machine('vm1')).state, 'PROTECTED', 'vm1 is protected again (it failed before its fence)');
  await unary(cs, cs.restartJob, { jobId: failedPlanJobId });
  const restarted = await sites.waitJob(failedPlanJobId, { allowFailure: true });
  t.equal(restarted.state, 'JOB_FAILED', 'restarted, it fails the same way');
  t.equal(restarted.childJobIds.length, 2, 'with a new failover of vm1');
  t.notSame(restarted.childJobIds[1], restarted.childJobIds[0]);
  t.equal((await runDrctl(sites.daemons.cs.address, 'plan', 'delete', 'too-early')).code, 0);

  const plan = await sites.drctlJson<{ planId: string }>('plan', 'create', 'p1', '--machine', 'vm1', '--group', 'g1');
  const started = await sites.drctlJson<Job__Output>('plan', 'failover', 'p1', '--no-start', '--no-wait');
  t.match(started, { kind: 'plan-failover', planId: plan.planId });
  await eventually('the plan job to start its first machine job', async () => ((await unary(cs, cs.getJob, { jobId: started.jobId })).childJobIds.length > 0 ? true : undefined), 30_000, 20);
  await sites.restart('cs', { kill: true });
  const failover = await sites.waitJob(started.jobId, { allowFailure: true });
  t.match(failover, { kind: 'plan-failover', state: 'JOB_SUCCEEDED', planId: plan.planId, machineId: '' }, `the plan failover succeeded: ${failover.error}`);
  t.same(failover.steps.map((step) => [step.name, step.state]), [['machine vm1', 'JOB_SUCCEEDED'], ['group g1', 'JOB_SUCCEEDED']], 'a step per member, in order');
  t.equal(failover.childJobIds.length, 3, 'one failover job per machine');
  for (const name of names) {
    const jobs = (await unary(cs, cs.listJobs, { machine: name })).jobs.filter((job) => job.kind === 'failover');
    t.equal(jobs.filter((job) => failover.childJobIds.includes(job.jobId)).length, 1, `${name}: one failover in the plan, although the configuration server was killed during it`);
    t.equal(jobs.length, name === 'vm1' ? 3 : 1, `${name}: no other failover but the two of the failed plan`);
  }
  const children = await Promise.all(failover.childJobIds.map((jobId) => unary(cs, cs.getJob, { jobId })));
  t.same(children.map((child) => child.kind), ['failover', 'failover', 'failover']);
  t.same(children.map((child) => child.machineId), await Promise.all(names.map(async (name) => (await sites.machine(name)).machineId)), 'started in plan order: vm1, then the group');
  t.ok(children[0]!.endedTimeMs <= children[1]!.createdTimeMs, 'the group started after vm1 had failed over');

  const machines = Object.fromEntries(await Promise.all(names.map(async (name) => [name, await sites.machine(name)] as const)));
  for (const name of names) t.equal(machines[name]!.state, 'FAILED_OVER', `${name} is failed over`);
  t.equal(sha256OfFile(machines.vm1!.recovery!.diskPaths[0]!), latest.vm1, 'vm1 (LATEST): every write is on its disk at site B');
  for (const name of ['vm2', 'vm3'] as const) {
    const machine = machines[name]!;
    t.equal(machine.failover!.selector, 'BY_ID', `${name}: by the group point's ids`);
    t.same(machine.failover!.recoveryPointIds, complete.members.filter((member) => member.diskId.startsWith(`${name}-`)).map((member) => member.id), `${name}: the group point's own point`);
    t.equal(sha256OfFile(machine.recovery!.diskPaths[0]!), atGroupPoint[name], `${name}: its disk at site B is the source at the group point`);
  }
  t.equal((await unary(cs, cs.getRecoveryPlan, { plan: 'p1' })).lastJobId, failover.jobId, "the plan's last job");

  const again = await runDrctl(sites.daemons.cs.address, 'plan', 'failover', 'p1');
  t.equal(again.code, 1);
  t.match(again.stderr, /^drctl: FAILED_PRECONDITION: recovery plan p1 cannot fail over: machine vm1 is FAILED_OVER: commit it/);

  const commit = await sites.drctlJson<Job__Output>('plan', 'commit', 'p1');
  t.match(commit, { kind: 'plan-commit', state: 'JOB_SUCCEEDED', planId: plan.planId }, `the plan commit succeeded: ${commit.error}`);
  t.equal(commit.childJobIds.length, 3);
  for (const name of names) t.equal((await sites.machine(name)).state, 'COMMITTED', `${name} is committed`);
  const listed = await runDrctl(sites.daemons.cs.address, 'plans');
  t.match(listed.stdout, new RegExp(`p1\\s+${plan.planId}\\s+vm1, group g1 \\(vm2, vm3\\)\\s+${commit.jobId} plan-commit succeeded`));
});
