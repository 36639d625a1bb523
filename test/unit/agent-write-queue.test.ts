// Goal: a disk's write queue runs range tasks (NBD writes) on distinct blocks
// at the same time, up to its bound; a range task over blocks an earlier one
// covers waits for it; a task that runs alone (a WriteStream write, a marker,
// a barrier's hold) waits for everything queued before it and holds back
// everything after it; an empty range (a flush) waits only for those; a
// failed task counts as finished. Prints its seed for the random part.
import t from 'tap';
import { WriteQueue } from '../../daemons/agent/write-queue';
import { seededRandom } from '../helpers/disks';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);

/** A task that starts, waits until `finish` is called, then ends; `log` gets "+name" and "-name". */
function gate(log: string[], name: string): { task: () => Promise<string>; finish: () => void } {
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  return {
    task: async () => {
      log.push(`+${name}`);
      await finished;
      log.push(`-${name}`);
      return name;
    },
    finish,
  };
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 5));

t.test('distinct blocks at once, overlapping ones in order, exclusive tasks alone', async (t) => {
  const queue = new WriteQueue(8);
  const log: string[] = [];
  const a = gate(log, 'a');
  const b = gate(log, 'b');
  const c = gate(log, 'c');
  const ra = queue.runRange(0, 8192, a.task);
  const rb = queue.runRange(8192, 16384, b.task);
  const rc = queue.runRange(4096, 12288, c.task); // overlaps a and b
  await settle();
  t.same(log, ['+a', '+b'], 'a and b (distinct blocks) run at once; c, over both, waits');
  const flushed = queue.runRange(0, 0, () => log.push('flush'));
  await settle();
  t.same(log, ['+a', '+b', 'flush'], 'an empty range (a flush) waits for no write in flight');
  await flushed;
  a.finish();
  await ra;
  await settle();
  t.same(log, ['+a', '+b', 'flush', '-a'], 'c still waits for b');
  const e = gate(log, 'e');
  const exclusive = queue.run(e.task);
  const after = queue.runRange(1 << 20, (1 << 20) + 4096, () => log.push('after'));
  const flushAfter = queue.runRange(0, 0, () => log.push('flush2'));
  b.finish();
  await rb;
  await settle();
  t.same(log.slice(-2), ['-b', '+c'], 'c runs once b is done');
  c.finish();
  await rc;
  await settle();
  t.same(log.slice(-2), ['-c', '+e'], 'the exclusive task runs once everything before it is done');
  t.notOk(log.includes('after') || log.includes('flush2'), 'tasks queued after it wait, whatever their range');
  e.finish();
  t.equal(await exclusive, 'e');
  await Promise.all([after, flushAfter]);
  t.same(log.slice(-3).sort(), ['-e', 'after', 'flush2'].sort(), 'and run after it');
});

t.test('at most the bound run at once; a failed task counts as finished; a hold', async (t) => {
  const queue = new WriteQueue(2);
  const log: string[] = [];
  const gates = [0, 1, 2].map((index) => gate(log, String(index)));
  const runs = gates.map((g, index) => queue.runRange(index * 4096, (index + 1) * 4096, g.task));
  await settle();
  t.same(log, ['+0', '+1'], 'two of three distinct writes run (the bound is 2)');
  gates[0]!.finish();
  await runs[0];
  await settle();
  t.same(log.slice(-2), ['-0', '+2'], 'the third takes the freed place');
  gates[1]!.finish();
  gates[2]!.finish();
  await Promise.all(runs);
  const failing = queue.runRange(0, 4096, () => Promise.reject(new Error('pwrite failed')));
  const next = queue.runRange(0, 4096, () => 'next');
  await t.rejects(failing, /pwrite failed/);
  t.equal(await next, 'next', 'a write after a failed one over the same blocks still runs');
  const held = queue.hold();
  const waiting = queue.runRange(0, 4096, () => log.push('after hold'));
  const release = await held;
  await settle();
  t.notOk(log.includes('after hold'), 'a hold keeps later writes waiting');
  release();
  release();
  await waiting;
  t.ok(log.includes('after hold'), 'until released');
});

t.test('random ranges: no two overlapping tasks ever run at once, and overlapping ones keep their order', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const queue = new WriteQueue(8);
  const blocks = 64;
  const owner: (number | undefined)[] = new Array(blocks).fill(undefined);
  const lastWriter: number[] = new Array(blocks).fill(-1);
  let running = 0;
  let runningMax = 0;
  let violations = 0;
  const tasks: Promise<unknown>[] = [];
  for (let index = 0; index < 2000; index++) {
    const exclusive = random() < 0.02;
    const first = Math.floor(random() * blocks);
    const count = 1 + Math.floor(random() * 4);
    const last = Math.min(blocks, first + count);
    const body = async () => {
      running++;
      runningMax = Math.max(runningMax, running);
      const covered = exclusive ? [...Array(blocks).keys()] : [...Array(last - first).keys()].map((offset) => first + offset);
      for (const block of covered) {
        if (owner[block] !== undefined) violations++;
        // A later task over the same block never runs before an earlier one.
        if (lastWriter[block] > index) violations++;
        owner[block] = index;
      }
      await new Promise((resolve) => setTimeout(resolve, random() < 0.5 ? 0 : 1));
      for (const block of covered) {
        owner[block] = undefined;
        lastWriter[block] = index;
      }
      running--;
    };
    tasks.push(exclusive ? queue.run(body) : queue.runRange(first * 4096, last * 4096, body));
  }
  await Promise.all(tasks);
  t.equal(violations, 0, 'no overlap ran at once, none out of order');
  t.ok(runningMax > 1 && runningMax <= 8, `up to ${runningMax} ran at once (bound 8)`);
});
