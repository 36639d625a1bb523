// Hash trees of source disks, open between OpenHashTree and CloseHashTree so a
// process server can walk them with GetHashes. Each holds 8 bytes per block;
// at most hashTreesOpenMax stay open, holding at most hashTreesBytesMax, and
// opening one more evicts the oldest until it fits.
import crypto from 'node:crypto';
import { HashTree } from '../../shared/hash-tree';
import { limitExceeded, notFound } from '../../shared/errors';
import { hashTreeParentsPerRequestMax, hashTreesBytesMax, hashTreesOpenMax } from '../../shared/limits';

export interface OpenTree {
  treeId: string;
  diskPath: string;
  diskBytes: number;
  tree: HashTree;
  /** Memory the tree holds. */
  bytes: number;
}

export class HashTrees {
  /** In opening order: the first entry is the oldest. */
  private readonly trees = new Map<string, OpenTree>();

  constructor(private readonly openMax = hashTreesOpenMax) {}

  get size(): number {
    return this.trees.size;
  }

  /** Closes the oldest trees until one of `bytes` fits beside the rest (before it is built: its leaves are allocated whole). */
  makeRoom(bytes: number): void {
    const held = () => [...this.trees.values()].reduce((sum, open) => sum + open.bytes, 0);
    while (this.trees.size > 0 && (this.trees.size >= this.openMax || held() + bytes > hashTreesBytesMax)) this.trees.delete(this.trees.keys().next().value!);
  }

  add(diskPath: string, diskBytes: number, tree: HashTree, bytes = tree.levels.reduce((sum, level) => sum + level.length, 0)): OpenTree {
    this.makeRoom(bytes);
    const open = { treeId: crypto.randomUUID(), diskPath, diskBytes, tree, bytes };
    this.trees.set(open.treeId, open);
    return open;
  }

  get(treeId: string): OpenTree {
    const open = this.trees.get(treeId);
    if (!open) throw notFound(`hash tree ${treeId} is not open (closed, evicted after ${this.openMax} newer trees, or the agent restarted): open it again`);
    return open;
  }

  children(treeId: string, level: number, parents: readonly number[]): Buffer {
    if (parents.length > hashTreeParentsPerRequestMax) throw limitExceeded(`${parents.length} parents in one GetHashes request; at most ${hashTreeParentsPerRequestMax}`);
    return this.get(treeId).tree.children(level, parents);
  }

  close(treeId: string): void {
    this.trees.delete(treeId);
  }

  /** Closes every tree of a disk (its file was replaced: the trees describe the old one). */
  closeDisk(diskPath: string): void {
    for (const [treeId, open] of this.trees) if (open.diskPath === diskPath) this.trees.delete(treeId);
  }
}
