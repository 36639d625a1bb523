// A scan capture is its own sync: its first pass compares the source with
// what the replica holds. When the replica holds data the agent cannot know
// (a replica seeded from the machine's old disk at reprotect, an adopted
// file, a resync), the agent ships every block (SCAN_BASELINE_UNKNOWN). So
// that only what differs crosses to the master target, the process server
// fetches the replica's block hashes before the capture starts and drops,
// from the capture's first pass only, every block whose hash equals the
// replica's (docs/continuous-replication.md, "Scan against a replica that
// holds data").
//
// Why that is sound: the first pass reads each block once, in disk order, and
// until its records are applied nothing else writes the replica (the session's
// sender is paused while the capture restarts, and the records of a capture
// are applied in order). So when a first-pass block is about to be applied,
// the replica still holds what it held when its hashes were fetched; a block
// whose hash equals it is already there. Later passes are never filtered: a
// block they ship may have been changed on the replica by the first pass.
import type { HashPool } from '../../shared/hash-pool';
import { hashBytes } from '../../shared/hashing';
import { blockBytes } from '../../shared/limits';
import { poolTaskBytes } from './extent-pipeline';

export interface Piece {
  offset: number;
  data: Buffer;
}

export interface FilterFigures {
  /** Plain bytes of first-pass records looked at, kept (sent on), and dropped (the replica had them). */
  bytesExamined: number;
  bytesKept: number;
  bytesDropped: number;
}

export class FirstPassFilter {
  readonly figures: FilterFigures = { bytesExamined: 0, bytesKept: 0, bytesDropped: 0 };

  constructor(
    /** 8 bytes per 4 KiB block of the replica, as the master target hashed it before the capture started. */
    private replicaHashes: Buffer | undefined,
    private readonly pool: HashPool,
  ) {}

  /** The first pass is applied: the hashes are not needed any more (8 bytes per block is a lot for a large disk). */
  release(): void {
    this.replicaHashes = undefined;
  }

  /**
   * For each piece (a first-pass record's write), the runs of its blocks whose
   * hash differs from the replica's, as views of its data. Hashing runs in the
   * worker pool, several tasks at once.
   */
  async differing(pieces: readonly Piece[]): Promise<Piece[][]> {
    const replica = this.replicaHashes;
    if (!replica) return pieces.map((piece) => [piece]);
    const tasks: Piece[][] = [];
    let task: Piece[] = [];
    let taskBytes = 0;
    for (const piece of pieces) {
      task.push(piece);
      taskBytes += piece.data.length;
      if (taskBytes >= poolTaskBytes) {
        tasks.push(task);
        task = [];
        taskBytes = 0;
      }
    }
    if (task.length) tasks.push(task);
    // compress false, keepZero true: one extent per piece, with the hash of every block.
    const results = await Promise.all(tasks.map((group) => this.pool.prepareExtents(group, false, true)));
    const extents = results.flatMap((result) => result.extents);
    return pieces.map((piece, index) => {
      const hashes = Buffer.from(extents[index].blockHashes.buffer, extents[index].blockHashes.byteOffset, extents[index].blockHashes.byteLength);
      const firstBlock = piece.offset / blockBytes;
      const blocks = piece.data.length / blockBytes;
      const kept: Piece[] = [];
      let runStart = -1;
      for (let block = 0; block <= blocks; block++) {
        const same = block === blocks || hashes.compare(replica, (firstBlock + block) * hashBytes, (firstBlock + block + 1) * hashBytes, block * hashBytes, (block + 1) * hashBytes) === 0;
        if (!same && runStart < 0) runStart = block;
        if (same && runStart >= 0) {
          kept.push({ offset: piece.offset + runStart * blockBytes, data: piece.data.subarray(runStart * blockBytes, block * blockBytes) });
          runStart = -1;
        }
      }
      const keptBytes = kept.reduce((sum, run) => sum + run.data.length, 0);
      this.figures.bytesExamined += piece.data.length;
      this.figures.bytesKept += keptBytes;
      this.figures.bytesDropped += piece.data.length - keptBytes;
      return kept;
    });
  }
}
