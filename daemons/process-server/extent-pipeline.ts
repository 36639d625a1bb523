// Moves the pieces read from an agent through the worker pool (hash every
// block, drop or keep zero blocks, compress) into the batch stream, in disk
// order. A few pool tasks stay in flight so reading, hashing and sending
// overlap while memory stays bounded.
import type { HashPool } from '../../shared/hash-pool';
import type { PrepareExtentsResult } from '../../shared/hash-worker';
import { blockBytes, units } from '../../shared/limits';
import { hashBytes } from '../../shared/hashing';
import { extentsOfPiece, type PreparedExtent } from '../../shared/extents';
import type { BatchStream } from './batch-stream';

/** Plain bytes of pieces in one pool task: several MiB, since dispatching small tasks costs more than hashing them (MEASURED.md). */
export const poolTaskBytes = 8 * units.MiB;

const noBytes = new Uint8Array(0);

export class ExtentPipeline {
  private pieces: { offset: number; data: Buffer }[] = [];
  private pieceBytes = 0;
  /** Pool tasks in disk order, each with the end of the source bytes it covers. */
  private readonly tasks: { result: Promise<PrepareExtentsResult>; end: number }[] = [];
  private readonly tasksInFlightMax: number;

  constructor(
    private readonly pool: HashPool,
    private readonly compress: boolean,
    /** Send zero blocks too (delta: a block that became zero must reach the replica). */
    private readonly keepZero: boolean,
    private readonly batches: BatchStream,
    private readonly onZeroBytes: (bytes: number) => void,
  ) {
    this.tasksInFlightMax = Math.max(2, pool.threads);
  }

  /**
   * Adds a piece in disk order. A piece that comes with its block hashes (the
   * agent hashed it where it read it) needs no pool task: its zero blocks are
   * known from the hashes, and the master target checks the hashes anyway.
   */
  async add(piece: { offset: number; data: Buffer; blockHashes?: Buffer }): Promise<void> {
    if (piece.blockHashes && piece.blockHashes.length === (piece.data.length / blockBytes) * hashBytes) {
      const extents: PreparedExtent[] = [];
      const zeroBytes = extentsOfPiece(piece.offset, piece.data, piece.blockHashes, this.compress, this.keepZero, extents);
      const end = piece.offset + piece.data.length;
      if (this.pieces.length === 0 && this.tasks.length === 0) {
        this.onZeroBytes(zeroBytes);
        for (const extent of extents) await this.batches.add(extent);
        this.batches.advance(end);
        return;
      }
      // Pieces without hashes came first: keep disk order behind their pool tasks.
      await this.dispatch();
      this.tasks.push({ result: Promise.resolve({ extents, zeroBytes }), end });
      while (this.tasks.length > this.tasksInFlightMax) await this.sendOldest();
      return;
    }
    this.pieces.push(piece);
    this.pieceBytes += piece.data.length;
    if (this.pieceBytes >= poolTaskBytes) await this.dispatch();
  }

  /**
   * Adds a run of zeros (a zero-run change record) in disk order: one
   * CODEC_ZERO extent, with no data and no block hashes (the codec defines
   * every byte). At most extentBytesMax: a zero record is one extent.
   */
  async addZeros(offset: number, length: number): Promise<void> {
    const extent: PreparedExtent = { offset, length, codec: 'CODEC_ZERO', data: noBytes, blockHashes: noBytes };
    if (this.pieces.length === 0 && this.tasks.length === 0) {
      await this.batches.add(extent);
      this.batches.advance(offset + length);
      return;
    }
    await this.dispatch();
    this.tasks.push({ result: Promise.resolve({ extents: [extent], zeroBytes: 0 }), end: offset + length });
    while (this.tasks.length > this.tasksInFlightMax) await this.sendOldest();
  }

  /** Sends everything added so far into the batch stream. */
  async flush(): Promise<void> {
    await this.dispatch();
    while (this.tasks.length > 0) await this.sendOldest();
  }

  private async dispatch(): Promise<void> {
    if (this.pieces.length === 0) return;
    const last = this.pieces[this.pieces.length - 1];
    // prepareExtents copies the pieces before it returns, so gRPC's receive buffers are free again.
    const result = this.pool.prepareExtents(this.pieces, this.compress, this.keepZero);
    // Awaited in order by sendOldest; until then a failure must not count as unhandled (that exits the daemon).
    result.catch(() => undefined);
    this.tasks.push({ result, end: last.offset + last.data.length });
    this.pieces = [];
    this.pieceBytes = 0;
    while (this.tasks.length > this.tasksInFlightMax) await this.sendOldest();
  }

  private async sendOldest(): Promise<void> {
    const task = this.tasks.shift()!;
    const { extents, zeroBytes } = await task.result;
    this.onZeroBytes(zeroBytes);
    for (const extent of extents) await this.batches.add(extent);
    // Every source byte of the task is now in a batch (or was a zero block left out).
    this.batches.advance(task.end);
  }
}
