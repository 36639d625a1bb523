// Differing blocks to ranges, and the check of what an agent streams back.
import t from 'tap';
import { coalesceBlocks, RangeCursor } from '../../daemons/process-server/ranges';
import { DrplaneError } from '../../shared/errors';
import { blockBytes, extentBytesMax } from '../../shared/limits';

t.test('coalesceBlocks joins consecutive blocks', async (t) => {
  t.same(coalesceBlocks([]), []);
  t.same(coalesceBlocks([0]), [{ offset: 0, length: blockBytes }]);
  t.same(coalesceBlocks([1, 2, 3, 7, 9, 10]), [
    { offset: blockBytes, length: 3 * blockBytes },
    { offset: 7 * blockBytes, length: blockBytes },
    { offset: 9 * blockBytes, length: 2 * blockBytes },
  ]);
});

t.test('RangeCursor counts the zero pieces an agent leaves out', async (t) => {
  const MiB = extentBytesMax;
  const cursor = new RangeCursor([{ offset: 0, length: 4 * MiB }, { offset: 8 * MiB, length: 2 * MiB }], true, 'agent x');
  t.equal(cursor.accept(MiB, MiB), MiB, 'the first piece was zero');
  t.equal(cursor.accept(2 * MiB, MiB), 0);
  t.equal(cursor.accept(8 * MiB, MiB), MiB, 'the rest of the first range was zero');
  t.equal(cursor.finish(), MiB, 'the end of the second range was zero');
});

t.test('RangeCursor refuses pieces outside the request', async (t) => {
  const ranges = [{ offset: 0, length: 8 * blockBytes }, { offset: 16 * blockBytes, length: 8 * blockBytes }];
  const refuses = (what: string, act: (cursor: RangeCursor) => void, skipZero = true) => {
    const cursor = new RangeCursor(ranges, skipZero, 'agent x');
    t.throws(() => act(cursor), DrplaneError, what);
  };
  refuses('not whole blocks', (cursor) => cursor.accept(0, 100));
  refuses('empty', (cursor) => cursor.accept(0, 0));
  refuses('larger than an extent', (cursor) => cursor.accept(0, extentBytesMax + blockBytes));
  refuses('across the end of a range', (cursor) => cursor.accept(4 * blockBytes, 8 * blockBytes));
  refuses('between ranges', (cursor) => cursor.accept(10 * blockBytes, blockBytes));
  refuses('past the ranges', (cursor) => cursor.accept(24 * blockBytes, blockBytes));
  refuses('backwards', (cursor) => (cursor.accept(4 * blockBytes, blockBytes), cursor.accept(0, blockBytes)));
  refuses('a gap without skipZero', (cursor) => cursor.accept(blockBytes, blockBytes), false);
  refuses('a short stream without skipZero', (cursor) => (cursor.accept(0, 8 * blockBytes), cursor.finish()), false);
  const exact = new RangeCursor(ranges, false, 'agent x');
  t.equal(exact.accept(0, 8 * blockBytes) + exact.accept(16 * blockBytes, 8 * blockBytes) + exact.finish(), 0, 'a complete stream');
});
