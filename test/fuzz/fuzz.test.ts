// Goal: a short run of the fuzzer (test/fuzz/fuzz.ts; `npm run fuzz` is the
// long one): random, mutated and garbage messages to every method of every
// daemon leave every daemon alive and serving, never answer INTERNAL or
// UNKNOWN, and change neither the source nor the replica.
import t from 'tap';
import { fuzz } from './fuzz';

t.test('20 s of hostile calls', async (t) => {
  const seed = Number(process.env.DRPLANE_FUZZ_SEED ?? 20261207);
  const result = await fuzz(20, seed, (line) => t.comment(line));
  t.comment(`seed ${seed}: ${result.calls} calls ${JSON.stringify(result.byStatus)}`);
  t.ok(result.calls > 100, 'the daemons answered calls all along');
  t.same(result.problems, [], 'no daemon died or stopped serving, no INTERNAL or UNKNOWN, nothing changed that no accepted call could change');
  t.ok((result.byStatus.INVALID_ARGUMENT ?? 0) > 0 && (result.byStatus.OK ?? 0) > 0, 'hostile requests were refused and harmless ones answered');
});
