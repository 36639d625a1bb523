// Goal: the configuration server keeps ended jobs by count and by age
// (endedJobsKeptMax, endedJobAgeMsMax): the oldest beyond the count and those
// older than the age are deleted, while a running job, or an ended one that a
// machine (a failed job to restart) or a kept job (a plan's child) still names,
// stays. Without daemons: the store and Jobs directly.
import fs from 'node:fs';
import t from 'tap';
import { createLogger } from '../../shared/log';
import { Jobs } from '../../daemons/configuration-server/jobs/jobs';
import { Store } from '../../daemons/configuration-server/store/store';
import { tempDir } from '../helpers/daemons';
import type { JobRecord, MachineRecord, PlanRecord } from '../../daemons/configuration-server/store/records';
import { jobEnded } from '../../daemons/configuration-server/jobs/running-job';

const log = createLogger('test', 'silent');

async function waitFor(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 5));
}

t.test('ended jobs are kept by count and age; named and running ones stay', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new Store(dir);
  t.teardown(() => store.close());
  const jobs = new Jobs(store, log, { keptMax: 3, ageMsMax: 60_000 });
  let release: () => void = () => {};
  const blocked = new Promise<void>((resolve) => (release = resolve));
  jobs.register('quick', { async run(job) { await job.runStep('only', async () => undefined); }, ended() {} });
  jobs.register('slow', { async run(job) { await job.runStep('only', () => blocked); }, ended() {} });
  const run = async (kind: string, options: { childJobIds?: string[] } = {}) => {
    const record = store.write(() => jobs.create(kind, 'machine-1', [{ name: 'only' }], {}));
    if (options.childJobIds) store.write(() => store.jobs.putSync(record.jobId, { ...store.jobs.get(record.jobId)!, childJobIds: options.childJobIds }));
    jobs.start(store.jobs.get(record.jobId) as JobRecord);
    if (kind === 'quick') await waitFor(() => jobEnded(store.jobs.get(record.jobId)!.state));
    return record.jobId;
  };
  const ids = () => [...store.jobs.getKeys()].map(String).sort((a, b) => Number(a.slice(4)) - Number(b.slice(4)));

  const running = await run('slow');
  for (let n = 0; n < 6; n++) await run('quick');
  t.same(ids(), ['job-1', 'job-2', 'job-3', 'job-4', 'job-5', 'job-6', 'job-7'], 'seven jobs, one running');
  t.equal(jobs.pruneEnded(), 3, 'the three oldest ended jobs beyond keptMax 3 are deleted');
  t.same(ids(), [running, 'job-5', 'job-6', 'job-7'], 'the running job and the newest three ended ones stay');

  // A machine names job-5 (a failed job it may restart); job-8 is a plan's last job, and its child is job-6.
  store.write(() => store.machines.putSync('machine-1', { machineId: 'machine-1', name: 'vm1', restartableJobId: 'job-5' } as MachineRecord));
  const parent = await run('quick', { childJobIds: ['job-6'] });
  t.equal(parent, 'job-8');
  store.write(() => store.plans.putSync('plan-1', { planId: 'plan-1', name: 'plan', members: [], createdTimeMs: 0, lastJobId: parent } as PlanRecord));
  const later = Date.now() + 120_000;
  t.equal(jobs.pruneEnded(later), 1, 'past the age, the one ended job nobody names is deleted (job-7)');
  t.same(ids(), [running, 'job-5', 'job-6', 'job-8'], 'the running job, the jobs a machine and a plan name, and the child of a kept job stay');
  store.write(() => store.plans.removeSync('plan-1'));
  t.equal(jobs.pruneEnded(later), 2, 'once the plan is gone, its job and that job\'s child go too');
  t.same(ids(), [running, 'job-5']);

  release();
  await waitFor(() => jobEnded(store.jobs.get(running)!.state));
  t.equal(jobs.pruneEnded(), 0, 'nothing more within the age and the count');
  await jobs.stop();
});
