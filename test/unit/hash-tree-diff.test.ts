// The delta comparison on real trees: differingLeaves finds exactly the changed
// blocks, whatever the leaf count (partial last nodes, a single block), and
// hasDataFrom tells whether a replica holds data at or past a cursor.
import t from 'tap';
import { HashTree, differingLeaves, type HashTreeSide } from '../../shared/hash-tree';
import { hashBytes, initHashing } from '../../shared/hashing';
import { hasDataFrom, countingSide } from '../../daemons/process-server/tree-compare';
import { seededRandom } from '../helpers/disks';

const side = (tree: HashTree): HashTreeSide => ({ getHashes: async (level, parents) => tree.children(level, parents) });

function randomLeaves(count: number, random: () => number): Buffer {
  const leaves = Buffer.alloc(count * hashBytes);
  for (let index = 0; index < count; index++) leaves.writeUInt32LE(1 + Math.floor(random() * 0xfffffffe), index * hashBytes);
  return leaves;
}

t.before(initHashing);

t.test('differingLeaves returns exactly the changed blocks', async (t) => {
  const seed = 1234;
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  for (const leafCount of [1, 2, 15, 16, 17, 256, 257, 4097, 20_000]) {
    const ours = randomLeaves(leafCount, random);
    const theirs = Buffer.from(ours);
    const changed = new Set<number>();
    const changes = leafCount === 1 ? 1 : Math.max(1, Math.floor(leafCount / 100));
    while (changed.size < changes) changed.add(Math.floor(random() * leafCount));
    for (const leaf of changed) theirs.writeBigUInt64LE(leaf % 3 === 0 ? 0n : BigInt(leaf) + 7n, leaf * hashBytes);
    const found = await differingLeaves(leafCount, side(new HashTree(ours)), side(new HashTree(theirs)), 3);
    t.same(found, [...changed].sort((a, b) => a - b), `${leafCount} blocks`);
  }
});

t.test('a few changes in many blocks exchange few hashes', async (t) => {
  const leafCount = 100_000;
  const ours = randomLeaves(leafCount, seededRandom(5));
  const theirs = Buffer.from(ours);
  const changed = [10, 50_000, 99_999];
  for (const leaf of changed) theirs.writeBigUInt64LE(1n, leaf * hashBytes);
  let exchanged = 0;
  const count = (bytes: number) => (exchanged += bytes);
  const ourTree = new HashTree(ours);
  const found = await differingLeaves(leafCount, countingSide(side(ourTree), count), countingSide(side(new HashTree(theirs)), count), 1024);
  t.same(found, changed);
  // Each change costs at most one node's children per level on each side.
  t.ok(exchanged <= 2 * changed.length * ourTree.height * 16 * hashBytes, `${exchanged} hash bytes for ${changed.length} changes, of ${ours.length} in the leaves`);
});

t.test('equal trees have equal roots', async (t) => {
  const leaves = randomLeaves(1000, seededRandom(7));
  t.ok(new HashTree(leaves).root.equals(new HashTree(Buffer.from(leaves)).root));
});

t.test('hasDataFrom matches a scan of the leaves', async (t) => {
  const random = seededRandom(99);
  for (const leafCount of [1, 16, 17, 300, 5000]) {
    for (const dataLeaves of [[], [0], [leafCount - 1], [Math.floor(leafCount / 2)], [3, Math.floor(leafCount / 3)]]) {
      const leaves = Buffer.alloc(leafCount * hashBytes);
      for (const leaf of dataLeaves) if (leaf >= 0 && leaf < leafCount) leaves.writeBigUInt64LE(BigInt(1 + Math.floor(random() * 1000)), leaf * hashBytes);
      const tree = new HashTree(leaves);
      for (const firstLeaf of [0, 1, 3, 4, Math.floor(leafCount / 3), Math.floor(leafCount / 2), Math.floor(leafCount / 2) + 1, leafCount - 1, leafCount]) {
        const expected = dataLeaves.some((leaf) => leaf >= firstLeaf && leaf < leafCount);
        let requests = 0;
        const counted: HashTreeSide = { getHashes: async (level, parents) => (requests++, tree.children(level, parents)) };
        t.equal(await hasDataFrom(counted, leafCount, tree.root, firstLeaf), expected, `${leafCount} blocks, data at [${dataLeaves}], from ${firstLeaf}`);
        t.ok(requests <= tree.height, 'at most one request per level');
      }
    }
  }
});
