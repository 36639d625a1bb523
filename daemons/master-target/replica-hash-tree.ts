// A replica's hash tree without its leaves in memory. The leaves (8 bytes per
// 4 KiB block: 128 MiB for a 64 GiB disk) already live in the retention
// store's hash pages; the tree keeps the levels above them (a sixteenth of
// that) and reads a parent's leaves from the pages when they are asked for.
// So the master target's memory for an open tree does not grow with the
// disk's size by more than level 1 does, and a sparse replica's tree costs
// only the pages that exist.
import assert from 'node:assert/strict';
import { HashTree, levelSizes } from '../../shared/hash-tree';
import { combineHashes, hashBytes } from '../../shared/hashing';
import { notFound, outOfRange } from '../../shared/errors';
import { hashTreeFanout } from '../../shared/limits';

/** The tree the master target serves: the same answers as a HashTree built from every leaf. */
export interface ServedHashTree {
  readonly leafCount: number;
  readonly height: number;
  readonly root: Buffer;
  children(level: number, parents: readonly number[]): Buffer;
}

/** Reads leaves [firstLeaf, firstLeaf + count) of the replica as it is now (zeros where no page exists). */
export type LeafReader = (firstLeaf: number, count: number) => Buffer;

/** Stored runs of leaves, in any order, each starting at a multiple of the fanout (the hash pages); leaves not in any run are zero. */
export type StoredLeaves = Iterable<{ firstLeaf: number; leaves: Buffer }>;

export class ReplicaHashTree implements ServedHashTree {
  readonly leafCount: number;
  /** Level 1 and above, as a HashTree whose level 0 is this tree's level 1. */
  private readonly upper: HashTree;

  constructor(
    leafCount: number,
    stored: StoredLeaves,
    private readonly readLeaves: LeafReader,
    private readonly treeId: string,
  ) {
    assert.ok(leafCount > hashTreeFanout, 'a small disk has its leaves in memory (HashTree)');
    this.leafCount = leafCount;
    const parentCount = levelSizes(leafCount, hashTreeFanout)[1];
    // Zero where nothing is stored: a node is 0 exactly when all its children are.
    const level1 = Buffer.alloc(parentCount * hashBytes);
    const parentBytes = hashTreeFanout * hashBytes;
    for (const { firstLeaf, leaves } of stored) {
      assert.equal(firstLeaf % hashTreeFanout, 0, 'stored leaves start at a parent');
      const usable = Math.min(leaves.length, (leafCount - firstLeaf) * hashBytes);
      for (let at = 0; at < usable; at += parentBytes) {
        const parent = firstLeaf / hashTreeFanout + at / parentBytes;
        level1.writeBigUInt64LE(combineHashes(leaves.subarray(at, Math.min(at + parentBytes, usable))), parent * hashBytes);
      }
    }
    this.upper = new HashTree(level1, hashTreeFanout);
  }

  get height(): number {
    return this.upper.height + 1;
  }

  get root(): Buffer {
    return this.upper.root;
  }

  children(level: number, parents: readonly number[]): Buffer {
    if (!Number.isInteger(level) || level < 0 || level >= this.height) throw outOfRange(`hash tree level ${level} is not below the top level ${this.height}`);
    if (level >= 1) return this.upper.children(level - 1, parents);
    const level1 = this.upper.levels[0];
    const parentCount = level1.length / hashBytes;
    const parts: Buffer[] = [];
    for (const parent of parents) {
      if (!Number.isInteger(parent) || parent < 0 || parent >= parentCount) throw outOfRange(`hash tree node ${parent} is past the ${parentCount} nodes of level 1`);
      const first = parent * hashTreeFanout;
      const leaves = this.readLeaves(first, Math.min(hashTreeFanout, this.leafCount - first));
      // The leaves are read now, the levels above when the tree was opened: a batch applied in between would make the
      // answer disagree with the tree's own upper levels. Refuse rather than answer a mix of two states.
      if (combineHashes(leaves) !== level1.readBigUInt64LE(parent * hashBytes)) {
        throw notFound(`hash tree ${this.treeId} no longer matches its replica (a batch was applied since it was opened): open it again`);
      }
      parts.push(leaves);
    }
    return Buffer.concat(parts);
  }
}
