// A Merkle tree over a disk's block hashes. Level 0 has one hash per 4 KiB
// block; a node of level k+1 combines up to `fanout` nodes of level k; the top
// level has one node. Two sides compare roots, then descend only into the
// children that differ, so a large disk with few changes exchanges little.
import assert from 'node:assert/strict';
import { combineHashes, hashBytes } from './hashing';
import { hashTreeBytesMax, hashTreeFanout } from './limits';
import { invalidArgument, limitExceeded, outOfRange } from './errors';

export function levelSizes(leafCount: number, fanout = hashTreeFanout): number[] {
  const sizes = [Math.max(1, leafCount)];
  while (sizes[sizes.length - 1] > 1) sizes.push(Math.ceil(sizes[sizes.length - 1] / fanout));
  return sizes;
}

/** Bytes a tree over `leafCount` leaves holds in memory for its levels from `fromLevel` up (0: with the leaves). */
export function hashTreeBytes(leafCount: number, fromLevel = 0, fanout = hashTreeFanout): number {
  return levelSizes(leafCount, fanout)
    .slice(fromLevel)
    .reduce((sum, nodes) => sum + nodes * hashBytes, 0);
}

/** Refuses a tree larger than hashTreeBytesMax before anything of it is read or allocated. */
export function checkHashTreeBytes(bytes: number, diskBytes: number, what: string): void {
  if (bytes > hashTreeBytesMax) {
    throw limitExceeded(`the hash tree of ${what} (${diskBytes} bytes) would hold ${bytes} bytes of memory, more than the ${hashTreeBytesMax} one tree may: sync this disk in full mode instead of delta`);
  }
}

export class HashTree {
  readonly levels: Buffer[];
  readonly fanout: number;

  /** leaves: 8 bytes per block. */
  constructor(leaves: Buffer, fanout = hashTreeFanout) {
    assert.equal(leaves.length % hashBytes, 0);
    this.fanout = fanout;
    const sizes = levelSizes(leaves.length / hashBytes, fanout);
    this.levels = [leaves.length ? leaves : Buffer.alloc(hashBytes)];
    for (let level = 1; level < sizes.length; level++) {
      const below = this.levels[level - 1];
      const nodes = Buffer.allocUnsafe(sizes[level] * hashBytes);
      for (let node = 0; node < sizes[level]; node++) {
        const start = node * fanout * hashBytes;
        nodes.writeBigUInt64LE(combineHashes(below.subarray(start, Math.min(start + fanout * hashBytes, below.length))), node * hashBytes);
      }
      this.levels.push(nodes);
    }
  }

  get height(): number {
    return this.levels.length - 1;
  }

  get leafCount(): number {
    return this.levels[0].length / hashBytes;
  }

  get root(): Buffer {
    return this.levels[this.height].subarray(0, hashBytes);
  }

  /** The hashes, at `level`, of the children of the given nodes of level + 1, concatenated in order. */
  children(level: number, parents: readonly number[]): Buffer {
    if (!Number.isInteger(level) || level < 0 || level >= this.height) throw outOfRange(`hash tree level ${level} is not below the top level ${this.height}`);
    const nodes = this.levels[level];
    const parentCount = this.levels[level + 1].length / hashBytes;
    const parts: Buffer[] = [];
    for (const parent of parents) {
      if (!Number.isInteger(parent) || parent < 0 || parent >= parentCount) throw outOfRange(`hash tree node ${parent} is past the ${parentCount} nodes of level ${level + 1}`);
      const start = parent * this.fanout * hashBytes;
      parts.push(nodes.subarray(start, Math.min(start + this.fanout * hashBytes, nodes.length)));
    }
    return Buffer.concat(parts);
  }
}

/** How many children a parent has at `level` (the last parent may have fewer than fanout). */
export function childCount(sizes: readonly number[], level: number, parent: number, fanout = hashTreeFanout): number {
  return Math.min(fanout, sizes[level] - parent * fanout);
}

export interface HashTreeSide {
  /** Returns the children at `level` of the given parents of level + 1 (as HashTree.children). */
  getHashes(level: number, parents: number[]): Promise<Buffer>;
}

/**
 * Walks two trees of the same shape from the top and returns the indices of
 * the leaves (blocks) whose hashes differ, in ascending order. Requests are cut
 * to at most parentsPerRequest parents.
 */
export async function differingLeaves(
  leafCount: number,
  source: HashTreeSide,
  target: HashTreeSide,
  parentsPerRequest: number,
  fanout = hashTreeFanout,
): Promise<number[]> {
  const sizes = levelSizes(leafCount, fanout);
  let frontier = [0];
  for (let level = sizes.length - 2; level >= 0 && frontier.length > 0; level--) {
    const next: number[] = [];
    for (let start = 0; start < frontier.length; start += parentsPerRequest) {
      const parents = frontier.slice(start, start + parentsPerRequest);
      const [ours, theirs] = await Promise.all([source.getHashes(level, parents), target.getHashes(level, parents)]);
      if (ours.length !== theirs.length) throw invalidArgument(`hash trees differ in shape at level ${level}`);
      let position = 0;
      for (const parent of parents) {
        const count = childCount(sizes, level, parent, fanout);
        for (let child = 0; child < count; child++, position += hashBytes) {
          if (ours.compare(theirs, position, position + hashBytes, position, position + hashBytes) !== 0) next.push(parent * fanout + child);
        }
      }
      if (position !== ours.length) throw invalidArgument(`hash tree answer at level ${level} has ${ours.length} bytes, expected ${position}`);
    }
    frontier = next;
  }
  return sizes.length === 1 ? [0] : frontier;
}
