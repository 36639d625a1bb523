// Walks of hash trees that a process server does over gRPC: counting the
// bytes exchanged, and asking whether a replica holds data past a cursor.
import { levelSizes, type HashTreeSide } from '../../shared/hash-tree';
import { hashBytes } from '../../shared/hashing';
import { hashTreeFanout } from '../../shared/limits';

const isZeroHash = (hashes: Buffer, position: number) => hashes.readBigUInt64LE(position) === 0n;

/**
 * Whether any leaf at or after firstLeaf has a non-zero hash, i.e. the disk
 * holds data there. A node's hash is 0 exactly when all its children are, so
 * only the one node per level that straddles firstLeaf needs descending:
 * height requests at most.
 */
export async function hasDataFrom(side: HashTreeSide, leafCount: number, root: Buffer, firstLeaf: number, fanout = hashTreeFanout): Promise<boolean> {
  if (firstLeaf >= leafCount || isZeroHash(root, 0)) return false;
  const sizes = levelSizes(leafCount, fanout);
  if (sizes.length === 1) return true;
  let straddling = 0;
  for (let level = sizes.length - 2; level >= 0; level--) {
    const leavesPerNode = fanout ** level;
    const children = await side.getHashes(level, [straddling]);
    let next = -1;
    for (let child = 0, position = 0; position < children.length; child++, position += hashBytes) {
      const node = straddling * fanout + child;
      const first = node * leavesPerNode;
      const end = Math.min(first + leavesPerNode, leafCount);
      if (end <= firstLeaf || isZeroHash(children, position)) continue;
      if (first >= firstLeaf) return true;
      next = node;
    }
    if (next < 0) return false;
    straddling = next;
  }
  // Level 0 nodes are single leaves: one at or after firstLeaf returned above.
  return false;
}

/** A side that adds the size of every answer to a counter. */
export function countingSide(side: HashTreeSide, count: (bytes: number) => void): HashTreeSide {
  return {
    async getHashes(level, parents) {
      const hashes = await side.getHashes(level, parents);
      count(hashes.length);
      return hashes;
    },
  };
}
