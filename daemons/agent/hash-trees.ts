// Hash trees of source disks, open between OpenHashTree and CloseHashTree so a
// process server can walk them with GetHashes. Each holds 8 bytes per block;
// at most hashTreesOpenMax stay open and opening one more evicts the oldest.
import crypto from 'node:crypto';
import { HashTree } from '../../shared/hash-tree';
import { limitExceeded, notFound } from '../../shared/errors';
import { hashTreeParentsPerRequestMax, hashTreesOpenMax } from '../../shared/limits';

export interface OpenTree {
  treeId: string;
  diskPath: string;
  diskBytes: number;
  tree: HashTree;
}

export class HashTrees {
  /** In opening order: the first entry is the oldest. */
  private readonly trees = new Map<string, OpenTree>();

  constructor(private readonly openMax = hashTreesOpenMax) {}

  get size(): number {
    return this.trees.size;
  }

  add(diskPath: string, diskBytes: number, tree: HashTree): OpenTree {
    while (this.trees.size >= this.openMax) this.trees.delete(this.trees.keys().next().value!);
    const open = { treeId: crypto.randomUUID(), diskPath, diskBytes, tree };
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
