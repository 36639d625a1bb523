// The operator's control of jobs, without daemons: a stopped job ends
// JOB_STOPPED in the step it was in (a queued one at once, a long peer call
// does not hold the stop); a restart continues from that step and never runs
// a step that succeeded again, only for the job its machine names; and a
// workflow with slots keeps the jobs beyond its limit QUEUED, saying why, and
// starts the oldest waiting one when a slot frees, also after a restart of the
// configuration server.
import fs from 'node:fs';
import t from 'tap';
import { createLogger } from '../../shared/log';
import { Jobs, type Workflow } from '../../daemons/configuration-server/jobs/jobs';
import { Store } from '../../daemons/configuration-server/store/store';
import { tempDir } from '../helpers/daemons';
import type { JobRecord, MachineRecord } from '../../daemons/configuration-server/store/records';
import type { RunningJob } from '../../daemons/configuration-server/jobs/running-job';

const log = createLogger('test', 'silent');

function open(t: tap.Test, dir: string): { store: Store; jobs: Jobs } {
  const store = new Store(dir);
  const jobs = new Jobs(store, log);
  t.teardown(async () => {
    await jobs.stop();
    await store.close();
  });
  return { store, jobs };
}

function folder(t: tap.Test): string {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function waitFor(what: string, condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

function addMachine(store: Store, machineId: string): void {
  const machine: MachineRecord = { machineId, name: machineId, agentId: '', state: 'PROTECTED', stateReason: '', disks: [], processServerId: '', masterTargetId: '', datastore: '', createdTimeMs: Date.now(), activeJobId: '' };
  store.write(() => store.machines.putSync(machineId, machine));
}

/** A gate a step waits at until the test opens it (or the job is stopped). */
function gate(): { wait(job: RunningJob<unknown>): Promise<void>; open(): void } {
  let release: () => void = () => {};
  const opened = new Promise<void>((resolve) => (release = resolve));
  return { wait: (job) => job.abortable(opened), open: () => release() };
}

t.test('a stopped job ends STOPPED in its step; a restart continues from there', async (t) => {
  const { store, jobs } = open(t, folder(t));
  addMachine(store, 'machine-1');
  const ran: string[] = [];
  const ends: { error: string; stopped: boolean }[] = [];
  const hold = gate();
  let holdSecond = true;
  jobs.register<Record<string, never>>('demo', {
    async run(job) {
      await job.runStep('first', async (step) => {
        ran.push('first');
        job.progress(step, { message: 'first done' });
      });
      await job.runStep('second', async () => {
        ran.push('second');
        // A long peer call: the stop does not wait for it.
        if (holdSecond) await hold.wait(job as RunningJob<unknown>);
      });
      await job.runStep('third', async () => {
        ran.push('third');
      });
    },
    ended(job, error, stopped) {
      ends.push({ error, stopped });
      // As a machine's workflow does: a failed or stopped job is the one to restart.
      const machine = store.machines.get(job.machineId)!;
      store.machines.putSync(job.machineId, { ...machine, activeJobId: '', restartableJobId: error ? job.jobId : '' });
    },
  });
  const record = store.write(() => {
    const created = jobs.create('demo', 'machine-1', [{ name: 'first' }, { name: 'second' }, { name: 'third' }], {});
    store.machines.putSync('machine-1', { ...store.machines.get('machine-1')!, activeJobId: created.jobId });
    return created;
  });
  jobs.start(record as JobRecord);
  await waitFor('the second step', () => ran.includes('second'));

  const started = Date.now();
  const stopped = await jobs.stopJob(record.jobId);
  t.ok(Date.now() - started < 1_000, 'the stop did not wait for the call in flight');
  t.equal(stopped.state, 'JOB_STOPPED', 'the job ended STOPPED');
  t.same(stopped.steps.map((step) => step.state), ['JOB_SUCCEEDED', 'JOB_STOPPED', 'JOB_STOPPED'], 'in the step it was in');
  t.match(stopped.error, /stopped by the operator/);
  t.same(ends, [{ error: stopped.error, stopped: true }], 'ended() was told it was a stop, not a failure');
  t.equal(store.machines.get('machine-1')!.restartableJobId, record.jobId);
  await t.rejects(jobs.stopJob(record.jobId), /already ended/, 'a job that ended cannot be stopped');

  holdSecond = false;
  const restarted = jobs.restart(record.jobId);
  t.equal(restarted.state, 'JOB_RUNNING', 'the restarted job runs again');
  t.equal(store.machines.get('machine-1')!.activeJobId, record.jobId, 'its machine names it as its active job again');
  t.notOk(store.machines.get('machine-1')!.restartableJobId, 'and no longer as the one to restart');
  await waitFor('the restarted job to end', () => store.jobs.get(record.jobId)?.state === 'JOB_SUCCEEDED');
  t.same(ran, ['first', 'second', 'second', 'third'], 'it continued from the stopped step; the step that had succeeded did not run again');
  const done = store.jobs.get(record.jobId)!;
  t.equal(done.steps[0]!.message, 'first done', 'the done step kept its message');
  t.equal(done.error, '');
  t.throws(() => jobs.restart(record.jobId), /only a failed or stopped job/, 'a job that succeeded is not restarted');
});

t.test('only the job a machine names is restarted', async (t) => {
  const { store, jobs } = open(t, folder(t));
  addMachine(store, 'machine-1');
  const workflow: Workflow<Record<string, never>> = {
    async run() {
      throw new Error('the peer refused');
    },
    ended(job, error) {
      store.machines.putSync(job.machineId, { ...store.machines.get(job.machineId)!, restartableJobId: error ? job.jobId : '' });
    },
  };
  jobs.register('fails', workflow);
  const first = store.write(() => jobs.create('fails', 'machine-1', [{ name: 'one' }], {}));
  jobs.start(first as JobRecord);
  await waitFor('the first job to fail', () => store.jobs.get(first.jobId)?.state === 'JOB_FAILED');
  const second = store.write(() => jobs.create('fails', 'machine-1', [{ name: 'one' }], {}));
  jobs.start(second as JobRecord);
  await waitFor('the second job to fail', () => store.jobs.get(second.jobId)?.state === 'JOB_FAILED');
  t.throws(() => jobs.restart(first.jobId), new RegExp(`not the job machine machine-1 can continue: that is ${second.jobId}`), 'an older failed job is refused, naming the one to restart');
  t.doesNotThrow(() => jobs.restart(second.jobId), 'the one the machine names restarts');
});

t.test('a stop reaches a job waiting in a call at once; a queued job stops without running', async (t) => {
  const { store, jobs } = open(t, folder(t));
  const holds = [gate(), gate()];
  const ran: string[] = [];
  jobs.register<{ index: number }>('limited', {
    slot: { name: 'limited', max: 1, step: 'wait-for-slot', label: 'test' },
    async run(job) {
      await job.runStep('work', async () => {
        ran.push(job.record.jobId);
        await holds[job.params.index]!.wait(job as RunningJob<unknown>);
      });
    },
    ended() {},
  });
  const [a, b] = store.write(() => [0, 1].map((index) => jobs.create('limited', '', [{ name: 'wait-for-slot' }, { name: 'work' }], { index })));
  jobs.start(a as JobRecord);
  jobs.start(b as JobRecord);
  await waitFor('the first job to work', () => ran.length === 1);
  t.equal(jobs.get(b!.jobId).state, 'JOB_QUEUED');
  const stopped = await jobs.stopJob(b!.jobId);
  t.equal(stopped.state, 'JOB_STOPPED', 'the queued job stopped at once');
  t.same(stopped.steps.map((step) => step.state), ['JOB_STOPPED', 'JOB_STOPPED'], 'without running a step');
  holds[0]!.open();
  await waitFor('the first job to end', () => jobs.get(a!.jobId).state === 'JOB_SUCCEEDED');
  t.same(ran, [a!.jobId]);
});

t.test('at most `max` jobs past their slot step; the 4th waits, saying why, and starts when one ends', async (t) => {
  const dir = folder(t);
  const first = open(t, dir);
  const holds = new Map<string, ReturnType<typeof gate>>();
  const started: string[] = [];
  const workflow: Workflow<Record<string, never>> = {
    slot: { name: 'failback', max: 3, step: 'wait-for-slot', label: 'failback' },
    async run(job) {
      await job.runStep('work', async () => {
        started.push(job.record.jobId);
        let hold = holds.get(job.record.jobId);
        if (!hold) holds.set(job.record.jobId, (hold = gate()));
        await hold.wait(job as RunningJob<unknown>);
      });
    },
    ended() {},
  };
  first.jobs.register('failback-like', workflow);
  const create = (jobs: Jobs, store: Store) => store.write(() => jobs.create('failback-like', '', [{ name: 'wait-for-slot' }, { name: 'work' }], {}));
  const records = [1, 2, 3, 4, 5].map(() => create(first.jobs, first.store));
  for (const record of records) first.jobs.start(record as JobRecord);
  const ids = records.map((record) => record.jobId);
  await waitFor('three jobs to start', () => started.length === 3);
  t.same(started, ids.slice(0, 3), 'the three oldest got the slots');
  const fourth = first.jobs.get(ids[3]!);
  t.equal(fourth.state, 'JOB_QUEUED', 'the 4th stays queued');
  t.equal(fourth.detail, `waiting for a failback slot: 3 of 3 running (${ids.slice(0, 3).join(', ')})`, 'and says why, naming the jobs that hold the slots');
  t.equal(first.jobs.toProto(fourth).detail, fourth.detail, 'Job.detail carries it');
  t.equal(fourth.steps[0]!.state, 'JOB_QUEUED');

  holds.get(ids[1]!)!.open();
  await waitFor('the 4th to start', () => started.length === 4);
  t.equal(started[3], ids[3], 'when one ended, the oldest waiting started');
  t.equal(first.jobs.get(ids[3]!).state, 'JOB_RUNNING');
  t.equal(first.jobs.get(ids[3]!).detail, '', 'and no longer says it waits');
  t.equal(first.jobs.get(ids[4]!).state, 'JOB_QUEUED', 'the 5th still waits');
  t.match(first.jobs.get(ids[4]!).detail, new RegExp(`3 of 3 running \\(${ids[0]}, ${ids[2]}, ${ids[3]}\\)`));

  // The configuration server stops and starts again: the holders hold their slots again, the 5th waits again.
  await first.jobs.stop();
  await first.store.close();
  started.length = 0;
  holds.clear();
  const second = open(t, dir);
  second.jobs.register('failback-like', workflow);
  t.equal(second.jobs.resumeAll(), 4, 'four unfinished jobs resumed');
  await waitFor('the holders to run again', () => started.length === 3);
  t.same([...started].sort(), [ids[0], ids[2], ids[3]].sort(), 'the jobs that held slots hold them again');
  t.equal(second.jobs.get(ids[4]!).state, 'JOB_QUEUED', 'the 5th waits again');
  holds.get(ids[0]!)!.open();
  await waitFor('the 5th to start', () => started.length === 4);
  t.equal(started[3], ids[4]);

  // A restarted job needs a slot again: with three running, it waits.
  const stopped = await second.jobs.stopJob(ids[2]!);
  t.equal(stopped.state, 'JOB_STOPPED');
  await waitFor('the slot to be free', () => second.jobs.list().filter((job) => job.state === 'JOB_RUNNING').length === 2);
  const another = create(second.jobs, second.store);
  second.jobs.start(another as JobRecord);
  await waitFor('another job to take the slot', () => started.includes(another.jobId));
  const restarted = second.jobs.restart(ids[2]!);
  t.equal(restarted.state, 'JOB_QUEUED', 'a restarted job waits for a slot like any other');
  t.equal(restarted.steps[0]!.state, 'JOB_SUCCEEDED', 'its slot step stays done (it is not work to redo)');
  t.match(restarted.detail, /waiting for a failback slot: 3 of 3 running/);
  holds.get(ids[3]!)!.open();
  await waitFor('the restarted job to run', () => second.jobs.get(ids[2]!).state === 'JOB_RUNNING');
  for (const hold of holds.values()) hold.open();
  await waitFor('every job to end', () => second.jobs.list().every((job) => job.state === 'JOB_SUCCEEDED' || job.state === 'JOB_STOPPED'));
  t.equal(second.jobs.get(ids[2]!).state, 'JOB_SUCCEEDED', 'the restarted job completed');
});
