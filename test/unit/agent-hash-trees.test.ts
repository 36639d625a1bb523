// The agent's open hash trees: the oldest is evicted past hashTreesOpenMax,
// a closed or evicted tree is NOT_FOUND, and GetHashes is bounded.
import t from 'tap';
import { HashTrees } from '../../daemons/agent/hash-trees';
import { HashTree } from '../../shared/hash-tree';
import { ErrorCode } from '../../shared/errors';
import { hashBytes, initHashing } from '../../shared/hashing';
import { hashTreeParentsPerRequestMax, hashTreesOpenMax } from '../../shared/limits';

t.before(initHashing);

t.test('the oldest tree is evicted, closed trees are gone', async (t) => {
  const trees = new HashTrees();
  const leaves = Buffer.alloc(40 * hashBytes, 1);
  const opened = Array.from({ length: hashTreesOpenMax + 1 }, () => trees.add('/d', 40 * 4096, new HashTree(leaves)));
  t.equal(trees.size, hashTreesOpenMax);
  t.throws(() => trees.children(opened[0].treeId, 0, [0]), { code: ErrorCode.NotFound, message: /evicted/ });
  t.ok(trees.children(opened[1].treeId, 0, [0, 2]).equals(Buffer.concat([leaves.subarray(0, 16 * hashBytes), leaves.subarray(32 * hashBytes)])));
  trees.close(opened[1].treeId);
  t.throws(() => trees.get(opened[1].treeId), { code: ErrorCode.NotFound });
});

t.test('GetHashes is bounded and checked', async (t) => {
  const trees = new HashTrees();
  const { treeId } = trees.add('/d', 40 * 4096, new HashTree(Buffer.alloc(40 * hashBytes, 1)));
  t.throws(() => trees.children(treeId, 0, new Array(hashTreeParentsPerRequestMax + 1).fill(0)), { code: ErrorCode.LimitExceeded });
  t.throws(() => trees.children(treeId, 0, [3]), { code: ErrorCode.OutOfRange });
  t.throws(() => trees.children(treeId, 2, [0]), { code: ErrorCode.OutOfRange });
});
