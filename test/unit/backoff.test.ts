// The retry helper: waits that grow to a cap with jitter, a reset after
// progress, errors that are not retried, and waits ended by a signal.
import t from 'tap';
import { Backoff, retry } from '../../shared/backoff';

/** A random source that answers the given numbers in turn. */
const sequence = (...values: number[]) => {
  let index = 0;
  return () => values[index++ % values.length]!;
};

t.test('without jitter the waits double up to the cap and stay there', async (t) => {
  const backoff = new Backoff({ initialMs: 100, maxMs: 700, jitterRatio: 0 });
  t.same([1, 2, 3, 4, 5].map(() => backoff.nextDelayMs()), [100, 200, 400, 700, 700]);
  backoff.reset();
  t.equal(backoff.nextDelayMs(), 100, 'reset starts from initialMs again');
});

t.test('jitter takes at most jitterRatio of each step off, and never adds', async (t) => {
  const backoff = new Backoff({ initialMs: 1_000, maxMs: 4_000, random: sequence(0, 0.5, 0.999999) });
  t.same([1, 2, 3].map(() => backoff.nextDelayMs()), [1_000, 1_500, 2_000]);
  const random = new Backoff({ initialMs: 1_000, maxMs: 5_000 });
  for (let attempt = 0; attempt < 200; attempt++) {
    const delayMs = random.nextDelayMs();
    t.ok(delayMs >= 500 && delayMs <= 5_000, `${delayMs} ms is within [initialMs / 2, maxMs]`);
  }
});

t.test('bad options are a bug of the caller', async (t) => {
  t.throws(() => new Backoff({ initialMs: 0, maxMs: 10 }));
  t.throws(() => new Backoff({ initialMs: 20, maxMs: 10 }));
  t.throws(() => new Backoff({ initialMs: 1, maxMs: 10, jitterRatio: 1.5 }));
  t.throws(() => new Backoff({ initialMs: 1, maxMs: 10, multiplier: 0.5 }));
});

t.test('retry calls again after a retryable failure, with the growing waits', async (t) => {
  const waits: number[] = [];
  const told: string[] = [];
  let calls = 0;
  const answer = await retry(
    async () => {
      calls++;
      if (calls < 4) throw new Error(`away ${calls}`);
      return 'answered';
    },
    {
      backoff: { initialMs: 10, maxMs: 30, jitterRatio: 0 },
      retryable: (error) => (error as Error).message.startsWith('away'),
      onRetry: (error, delayMs) => told.push(`${(error as Error).message} ${delayMs}`),
      wait: async (delayMs) => void waits.push(delayMs),
    },
  );
  t.equal(answer, 'answered');
  t.equal(calls, 4);
  t.same(waits, [10, 20, 30]);
  t.same(told, ['away 1 10', 'away 2 20', 'away 3 30']);
});

t.test('retry throws at once what is not retryable', async (t) => {
  let calls = 0;
  await t.rejects(
    retry(
      async () => {
        calls++;
        throw new Error('refused');
      },
      { backoff: { initialMs: 10, maxMs: 10 }, retryable: () => false, wait: async () => void t.fail('no wait') },
    ),
    { message: 'refused' },
  );
  t.equal(calls, 1);
});

t.test('an abort ends the wait at once', async (t) => {
  const controller = new AbortController();
  const started = Date.now();
  setTimeout(() => controller.abort(), 20);
  await t.rejects(
    retry(
      async () => {
        throw new Error('away');
      },
      { backoff: { initialMs: 60_000, maxMs: 60_000 }, retryable: () => true, signal: controller.signal },
    ),
    { name: 'AbortError' },
  );
  t.ok(Date.now() - started < 5_000, 'the minute-long wait ended with the abort');
});
