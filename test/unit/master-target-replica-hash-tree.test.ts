// The master target's paged hash tree answers exactly as a tree built from
// every leaf (sparse pages, partial last pages and parents, disks of many
// sizes), and refuses to mix states when its replica changed after it opened.
import t from 'tap';
import { HashTree, levelSizes } from '../../shared/hash-tree';
import { hashBytes, initHashing } from '../../shared/hashing';
import { hashTreeFanout } from '../../shared/limits';
import { ReplicaHashTree } from '../../daemons/master-target/replica-hash-tree';
import { seededRandom } from '../helpers/disks';

const leavesPerPage = 256;

/** Leaves with data in about a third of the pages, and the pages that hold any. */
function sparseLeaves(leafCount: number, random: () => number): { leaves: Buffer; pages: Map<number, Buffer> } {
  const leaves = Buffer.alloc(leafCount * hashBytes);
  const pages = new Map<number, Buffer>();
  for (let page = 0; page * leavesPerPage < leafCount; page++) {
    if (random() > 0.35) continue;
    for (let leaf = page * leavesPerPage; leaf < Math.min(leafCount, (page + 1) * leavesPerPage); leaf++) {
      if (random() < 0.5) leaves.writeUInt32LE(1 + Math.floor(random() * 0xfffffffe), leaf * hashBytes);
    }
    pages.set(page, leaves.subarray(page * leavesPerPage * hashBytes, Math.min(leafCount, (page + 1) * leavesPerPage) * hashBytes));
  }
  return { leaves, pages };
}

const reader = (leaves: Buffer) => (first: number, count: number) => Buffer.from(leaves.subarray(first * hashBytes, (first + count) * hashBytes));
const stored = (pages: Map<number, Buffer>) => [...pages].map(([page, leaves]) => ({ firstLeaf: page * leavesPerPage, leaves }));

t.before(initHashing);

t.test('answers as a HashTree of every leaf', async (t) => {
  const seed = 2026;
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  for (const leafCount of [17, 255, 256, 257, 4097, 70_001]) {
    const { leaves, pages } = sparseLeaves(leafCount, random);
    const whole = new HashTree(leaves);
    const paged = new ReplicaHashTree(leafCount, stored(pages), reader(leaves), 'tree-1');
    t.equal(paged.height, whole.height, `${leafCount} blocks: height`);
    t.ok(paged.root.equals(whole.root), `${leafCount} blocks: root`);
    const sizes = levelSizes(leafCount, hashTreeFanout);
    for (let level = 0; level < whole.height; level++) {
      const parents = [...new Set([0, sizes[level + 1] - 1, Math.floor(random() * sizes[level + 1])])];
      t.ok(paged.children(level, parents).equals(whole.children(level, parents)), `${leafCount} blocks: level ${level}`);
    }
  }
});

t.test('a replica changed since the tree opened is refused, not mixed in', async (t) => {
  const leafCount = 4096;
  const { leaves, pages } = sparseLeaves(leafCount, seededRandom(7));
  const paged = new ReplicaHashTree(leafCount, stored(pages), reader(leaves), 'tree-2');
  leaves.writeBigUInt64LE(12345n, 100 * hashBytes); // a batch applied after the open
  t.doesNotThrow(() => paged.children(0, [0, 5]), 'parents the batch did not touch still answer');
  t.throws(() => paged.children(0, [Math.floor(100 / hashTreeFanout)]), { code: 'not-found', message: /tree-2 no longer matches its replica/ });
  t.throws(() => paged.children(0, [leafCount / hashTreeFanout]), { message: /past the/ }, 'a parent past the end');
});
