// Goal: barrier ids a caller prepares and never releases cannot grow the
// agent's memory without end. Past barriersKeptMax, the oldest expired barrier
// is forgotten to make room; with every kept barrier still holding writes, one
// more is refused (RESOURCE_EXHAUSTED) and touches no disk.
import t from 'tap';
import { Barriers } from '../../daemons/agent/barrier';
import type { Captures } from '../../daemons/agent/captures';
import { ErrorCode } from '../../shared/errors';
import { barriersKeptMax } from '../../shared/limits';
import { createLogger } from '../../shared/log';

function fakeCaptures(): { captures: Captures; holds: () => number } {
  let holds = 0;
  const captures = {
    captured: (paths: readonly string[]) => (paths.length ? [...paths] : ['/disk']),
    get: () => ({ mode: 'CAPTURE_WRITE_THROUGH' }),
    holdWrites: async () => {
      holds++;
      return { marker: { path: '/disk', captureId: 'c', sequence: holds, timeMs: Date.now() }, release: () => undefined };
    },
  } as unknown as Captures;
  return { captures, holds: () => holds };
}

t.test('barriers held by ids nobody releases are bounded', async (t) => {
  const { captures, holds } = fakeCaptures();
  const barriers = new Barriers(captures, createLogger('agent', 'error'));
  t.teardown(() => barriers.releaseAll());
  for (let index = 0; index < barriersKeptMax; index++) await barriers.prepare(`holding-${index}`, ['/disk'], 10_000);
  await t.rejects(barriers.prepare('one-more', ['/disk'], 10_000), { code: ErrorCode.LimitExceeded, message: /1024 barriers are prepared on this agent and none has expired/ });
  t.equal(holds(), barriersKeptMax, 'the refused barrier held no disk');
  t.ok(barriers.release('holding-0'), 'a kept barrier still releases');
  await barriers.prepare('after-a-release', ['/disk'], 10_000);
  t.pass('a release makes room');
});

t.test('an expired barrier is forgotten to make room for a new one', async (t) => {
  const { captures } = fakeCaptures();
  const barriers = new Barriers(captures, createLogger('agent', 'error'));
  t.teardown(() => barriers.releaseAll());
  await barriers.prepare('expires', ['/disk'], 20);
  for (let index = 1; index < barriersKeptMax; index++) await barriers.prepare(`holding-${index}`, ['/disk'], 10_000);
  await new Promise((resolve) => setTimeout(resolve, 60));
  await barriers.prepare('new', ['/disk'], 10_000);
  t.throws(() => barriers.release('expires'), { code: ErrorCode.NotFound }, 'the expired barrier was the one forgotten');
  t.same(barriers.release('holding-1').expired, false, 'the holding ones are kept');
});
