// The pool's extent preparation: zero blocks are dropped (thin disks stay
// thin) unless keepZero asks for them (a delta must send a block that became
// zero), hashes are 0 for zero blocks, and a burst of tasks larger than
// piscina's queue waits instead of failing.
import t from 'tap';
import { HashPool } from '../../shared/hash-pool';
import { decode } from '../../shared/codec';
import { blockHashes, hashBytes, initHashing } from '../../shared/hashing';
import { blockBytes } from '../../shared/limits';
import { randomBytes, seededRandom } from '../helpers/disks';

const pool = new HashPool(1);
t.teardown(() => pool.close());
t.before(initHashing);

/** A piece of 8 blocks: data in blocks 0, 1, 5; zeros elsewhere. */
function piece(offset: number, random: () => number): { offset: number; data: Buffer } {
  const data = Buffer.alloc(8 * blockBytes);
  for (const block of [0, 1, 5]) randomBytes(blockBytes, random).copy(data, block * blockBytes);
  return { offset, data };
}

t.test('zero blocks are dropped and counted', async (t) => {
  const random = seededRandom(1);
  const pieces = [piece(0, random), piece(1 << 20, random)];
  const { extents, zeroBytes } = await pool.prepareExtents(pieces, true);
  t.same(
    extents.map((extent) => [extent.offset, extent.length]),
    [[0, 2 * blockBytes], [5 * blockBytes, blockBytes], [1 << 20, 2 * blockBytes], [(1 << 20) + 5 * blockBytes, blockBytes]],
  );
  t.equal(zeroBytes, 2 * 5 * blockBytes);
  for (const extent of extents) {
    const source = pieces[extent.offset < 1 << 20 ? 0 : 1];
    const start = extent.offset - source.offset;
    const plain = decode(extent.codec, Buffer.from(extent.data), extent.length);
    t.ok(plain.equals(source.data.subarray(start, start + extent.length)), `extent at ${extent.offset} decodes to the source bytes`);
    t.ok(Buffer.from(extent.blockHashes).equals(blockHashes(plain)), `extent at ${extent.offset} carries the block hashes`);
  }
});

t.test('keepZero sends each piece whole, zero blocks hashed as 0', async (t) => {
  const random = seededRandom(2);
  const pieces = [piece(0, random), { offset: 8 * blockBytes, data: Buffer.alloc(4 * blockBytes) }];
  const { extents, zeroBytes } = await pool.prepareExtents(pieces, true, true);
  t.equal(zeroBytes, 0);
  t.same(extents.map((extent) => [extent.offset, extent.length]), [[0, 8 * blockBytes], [8 * blockBytes, 4 * blockBytes]]);
  const hashes = Buffer.from(extents[0].blockHashes);
  t.same([2, 3, 4, 6, 7].map((block) => hashes.readBigUInt64LE(block * hashBytes)), [0n, 0n, 0n, 0n, 0n]);
  t.not(hashes.readBigUInt64LE(0), 0n);
  t.ok(decode(extents[0].codec, Buffer.from(extents[0].data), extents[0].length).equals(pieces[0].data));
  t.equal(extents[1].codec, 'CODEC_LZ4', 'an all-zero piece compresses');
  t.ok(Buffer.from(extents[1].blockHashes).equals(Buffer.alloc(4 * hashBytes)));
});

t.test('more tasks than piscina queues wait for room instead of failing', async (t) => {
  const random = seededRandom(3);
  const tasks = Array.from({ length: 40 }, (_, index) => pool.prepareExtents([piece(index * (1 << 20), random)], false));
  const results = await Promise.all(tasks);
  t.equal(results.length, 40);
  t.ok(results.every((result) => result.extents.length === 2));
});
