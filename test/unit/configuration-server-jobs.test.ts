// Jobs of the configuration server, without daemons: steps run once and in
// order, a job interrupted by a stop stays RUNNING and resumes from its first
// unfinished step when the store is opened again, a failure is recorded with
// the failing step, and watchers see every change up to the final state.
import fs from 'node:fs';
import t from 'tap';
import { createLogger } from '../../shared/log';
import { Jobs, type Workflow } from '../../daemons/configuration-server/jobs/jobs';
import { Store } from '../../daemons/configuration-server/store/store';
import { tempDir } from '../helpers/daemons';
import type { JobRecord } from '../../daemons/configuration-server/store/records';

const log = createLogger('test', 'silent');

function open(t: tap.Test, dir: string): { store: Store; jobs: Jobs } {
  const store = new Store(dir);
  const jobs = new Jobs(store, log);
  t.teardown(() => store.close());
  return { store, jobs };
}

async function waitFor(condition: () => boolean): Promise<void> {
  while (!condition()) await new Promise((resolve) => setTimeout(resolve, 5));
}

t.test('a job interrupted by a stop resumes from its first unfinished step', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const ran: string[] = [];
  let release: () => void = () => {};
  const blocked = new Promise<void>((resolve) => (release = resolve));
  const workflow = (blockSecond: boolean): Workflow<{ counter: number }> => ({
    async run(job) {
      await job.runStep('first', async (step) => {
        ran.push('first');
        job.progress(step, { bytesDone: 10 });
      });
      await job.runStep('second', async (step) => {
        ran.push('second');
        if (blockSecond) {
          await Promise.race([blocked, job.wait(60_000)]);
          job.throwIfInterrupted();
        }
        job.progress(step, { bytesDone: 20 });
      });
    },
    ended(job, error) {
      job.params.counter = error ? -1 : 1;
    },
  });

  const first = open(t, dir);
  first.jobs.register('demo', workflow(true));
  const record = first.store.write(() => first.jobs.create('demo', 'machine-1', [{ name: 'first', bytesTotal: 10 }, { name: 'second', bytesTotal: 20 }], { counter: 0 }));
  t.equal(record.jobId, 'job-1');
  first.jobs.start(record as JobRecord);
  await waitFor(() => ran.length === 2);
  await first.jobs.stop();
  const stored = first.store.jobs.get('job-1')!;
  t.equal(stored.state, 'JOB_RUNNING', 'an interrupted job stays RUNNING');
  t.same(stored.steps.map((step) => step.state), ['JOB_SUCCEEDED', 'JOB_RUNNING']);
  await first.store.close();
  release();

  const second = open(t, dir);
  second.jobs.register('demo', workflow(false));
  const seen: string[] = [];
  second.jobs.watch('job-1', (job) => seen.push(job.state));
  t.equal(second.jobs.resumeAll(), 1);
  await waitFor(() => second.store.jobs.get('job-1')?.state === 'JOB_SUCCEEDED');
  t.same(ran, ['first', 'second', 'second'], 'the step that had succeeded did not run again');
  const done = second.jobs.get('job-1') as JobRecord<{ counter: number }>;
  t.equal(done.params.counter, 1, 'ended() ran in the transaction that ended the job');
  t.ok(done.endedTimeMs > 0);
  t.match(second.jobs.toProto(done), { state: 'JOB_SUCCEEDED', percent: 100, bytesDone: 30, bytesTotal: 30, etaMs: 0 });
  t.equal(seen[seen.length - 1], 'JOB_SUCCEEDED', 'watchers see the final state');
  t.equal(second.jobs.resumeAll(), 0, 'nothing left to resume');
});

t.test('a failing step fails the job, records the error, and stops the steps after it', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { store, jobs } = open(t, dir);
  let endedWith = '';
  jobs.register<Record<string, never>>('fails', {
    async run(job) {
      await job.runStep('one', async () => {});
      await job.runStep('two', async () => {
        throw new Error('the peer refused');
      });
      await job.runStep('three', async () => {});
    },
    ended(_job, error) {
      endedWith = error;
    },
  });
  const record = store.write(() => jobs.create('fails', 'machine-1', [{ name: 'one' }, { name: 'two' }, { name: 'three' }], {}));
  jobs.start(record as JobRecord);
  await waitFor(() => store.jobs.get(record.jobId)?.state === 'JOB_FAILED');
  const failed = store.jobs.get(record.jobId)!;
  t.equal(failed.error, 'the peer refused');
  t.same(failed.steps.map((step) => step.state), ['JOB_SUCCEEDED', 'JOB_FAILED', 'JOB_STOPPED']);
  t.equal(failed.steps[1]!.message, 'the peer refused');
  t.equal(endedWith, 'the peer refused');
  t.same(jobs.list('machine-1').map((job) => job.jobId), [record.jobId]);
  t.same(jobs.list('machine-2'), []);
});
