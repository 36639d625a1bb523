// The sending side of MasterTarget.ApplyBatches: extents go into batches of at
// most batchBytesMax plain bytes (configurable lower) and batchExtentsMax extents, each sent as
// frames of at most frameDataBytesMax encoded bytes; the frame with `last`
// closes a batch and carries the sync cursor (a sync) or the capture, change
// sequence and recovery point (continuous replication, closeWith). At most
// batchesInFlightMax batches wait for their acknowledgement; write() returning
// false waits for 'drain'. Any failure of the stream is kept and thrown by the next call.
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import type { MasterTargetClient } from '../../shared/proto';
import { DrplaneError, ErrorCode, fromServiceError } from '../../shared/errors';
import { failpoint } from '../../shared/failpoints';
import { hashBytes } from '../../shared/hashing';
import { batchExtentsMax, batchesInFlightMax, blockBytes, extentBytesMax, frameBuffersPerStreamMax, messageBytesMax, units } from '../../shared/limits';
import type { PreparedExtent } from '../../shared/extents';
import { BufferPool, PreEncoded } from '../../shared/wire';
import type { BatchAck__Output } from '../../generated/drplane/v1/BatchAck';
import type { BatchFrame } from '../../generated/drplane/v1/BatchFrame';
import { encodeFrame, frameBytes, type FrameFields } from './frame-encoding';
import type { RecoveryPointKind } from '../../generated/drplane/v1/RecoveryPointKind';

/** Encoded extent bytes in one frame: well under messageBytesMax, and 4-8 MiB messages are slower (MEASURED.md). */
export const frameDataBytesMax = 1 * units.MiB;
assert.ok(frameDataBytesMax >= extentBytesMax, 'a frame carries at least one extent');
assert.ok(frameDataBytesMax + (frameDataBytesMax / blockBytes) * (hashBytes + 32) + 64 * units.KiB <= messageBytesMax, 'a frame with its hashes and headers fits in one message');

/** A reused frame buffer: a frame's data, its block hashes (8 bytes per 4 KiB) and the headers of its extents. */
const frameBufferBytes = frameDataBytesMax + (frameDataBytesMax / blockBytes) * hashBytes + 64 * units.KiB;

export interface BatchStreamOptions {
  diskId: string;
  epoch: number;
  /** The sequence of the first batch: the replica's applied sequence + 1. */
  firstSequence: number;
  /** The sync these batches belong to; '' for batches of change records. */
  syncId: string;
  /** Plain bytes of one batch: batchBytesMax from shared/limits.ts, or lower by configuration. */
  batchBytesMax: number;
  /** The master target, as named in error messages. */
  peer: string;
  onSent(extent: PreparedExtent): void;
  onAck(ack: BatchAck__Output, batches: number): void;
}

/** The closing fields of the final batch of a sync. */
export interface SyncEnd {
  recoveryPointKind: RecoveryPointKind;
  sourceTimeMs: number;
  tag: string;
}

/** The closing fields of a batch of change records (continuous replication). */
export interface ChangeBatchEnd {
  captureId: string;
  /** The last change record in the batch. */
  changeSequence: number;
  /** RECOVERY_POINT_KIND_UNSPECIFIED: the batch closes no point. */
  recoveryPointKind: RecoveryPointKind;
  sourceTimeMs: number;
  tag: string;
}

export class BatchStream {
  private readonly call: grpc.ClientDuplexStream<BatchFrame, BatchAck__Output>;
  private failure: DrplaneError | undefined;
  private finished = false;
  private readonly waiters = new Set<() => void>();
  private needsDrain = false;
  /** Sequences closed and not yet acknowledged, in order. */
  private readonly unacked: number[] = [];
  private lastAck: BatchAck__Output | undefined;
  private readonly failureListeners = new Set<() => void>();

  /** The open batch. */
  private sequence: number;
  private framesInBatch = 0;
  private batchPlainBytes = 0;
  private batchExtentCount = 0;
  /** Every source byte below it is in this batch or an earlier one (or equal on the replica already). */
  private cursor = 0;
  /** The open frame. */
  private frameDataBytes = 0;
  private frameExtents: PreparedExtent[] = [];
  /** Frame buffers, reused once grpc-js has taken a frame (its write's callback). */
  private readonly frameBuffers = new BufferPool(frameBufferBytes, frameBuffersPerStreamMax);

  constructor(
    client: MasterTargetClient,
    private readonly options: BatchStreamOptions,
  ) {
    this.sequence = options.firstSequence;
    this.call = client.applyBatches();
    this.call.on('data', (ack: BatchAck__Output) => this.acknowledge(ack));
    this.call.on('drain', () => {
      this.needsDrain = false;
      this.notify();
    });
    this.call.on('error', (error) => this.fail(fromServiceError(error, options.peer)));
    // A non-OK status also arrives as 'error' (with its message); an OK one before we finished is a peer that gave up.
    this.call.on('status', (status: grpc.StatusObject) => {
      if (status.code === grpc.status.OK && !this.finished) this.fail(new DrplaneError(ErrorCode.Unavailable, `${options.peer} ended the batch stream before the sync finished`));
    });
  }

  /** Adds an extent to the open batch, closing the batch first when it is full. */
  async add(extent: PreparedExtent): Promise<void> {
    if (this.failure) throw this.failure;
    if (this.batchExtentCount + 1 > batchExtentsMax || this.batchPlainBytes + extent.length > this.options.batchBytesMax) await this.closeBatch();
    if (this.frameDataBytes + extent.data.byteLength > frameDataBytesMax) await this.writeFrame();
    this.frameExtents.push(extent);
    this.frameDataBytes += extent.data.byteLength;
    this.batchPlainBytes += extent.length;
    this.batchExtentCount++;
    this.advance(extent.offset + extent.length);
  }

  /** Everything below `cursor` has been added (or needs no sending). */
  advance(cursor: number): void {
    this.cursor = Math.max(this.cursor, cursor);
  }

  /** Closes the final batch (possibly without extents) and waits until every batch is acknowledged. */
  async finish(syncCursor: number, end: SyncEnd): Promise<BatchAck__Output> {
    this.advance(syncCursor);
    const finalSequence = this.sequence;
    await this.closeBatch({ ...end, syncComplete: true });
    await this.waitUntil(() => this.unacked.length === 0);
    this.finished = true;
    this.call.end();
    assert.equal(this.lastAck?.sequence, finalSequence);
    return this.lastAck!;
  }

  /**
   * Closes the open batch, even without extents (an idle disk still gets
   * points), with the capture and change sequence; returns its batch sequence.
   */
  async closeWith(end: ChangeBatchEnd): Promise<number> {
    if (this.failure) throw this.failure;
    const sequence = this.sequence;
    await this.closeBatch(end);
    return sequence;
  }

  /** Batches closed and not yet acknowledged. */
  get unackedBatches(): number {
    return this.unacked.length;
  }

  /** Throws the stream's failure, if it has failed (a peer that went away while the sender had nothing to send). */
  throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }

  /**
   * Calls `listener` once when the stream fails (at once, on the next tick, if it has); returns what forgets it.
   * For a wait that must end on failure: racing the long-lived `failed` promise instead would add a reaction to it on
   * every wait, kept as long as the stream lives.
   */
  onFailure(listener: () => void): () => void {
    if (this.failure) {
      queueMicrotask(listener);
      return () => undefined;
    }
    this.failureListeners.add(listener);
    return () => this.failureListeners.delete(listener);
  }

  /** Abandons the stream: a batch not closed is never applied. */
  cancel(): void {
    if (this.finished) return;
    this.finished = true;
    this.fail(new DrplaneError(ErrorCode.Aborted, 'the batch stream was cancelled'));
    this.frameBuffers.close();
    this.call.cancel();
  }

  /** Closes the open batch; without closing fields (a full batch of a sync) only when it holds extents. */
  private async closeBatch(closing?: Partial<BatchFrame>): Promise<void> {
    if (!closing && this.batchExtentCount === 0) return;
    await failpoint('batch-stream.closing');
    // Batches of change records leave the sync fields alone: the master target keeps the last sync's.
    const syncFields: Partial<BatchFrame> = this.options.syncId ? { syncId: this.options.syncId, syncCursor: this.cursor, syncComplete: false } : {};
    await this.writeFrame({ last: true, ...syncFields, ...closing });
    this.unacked.push(this.sequence);
    this.sequence++;
    this.framesInBatch = 0;
    this.batchPlainBytes = 0;
    this.batchExtentCount = 0;
  }

  private async writeFrame(closing: Partial<BatchFrame> = {}): Promise<void> {
    if (this.framesInBatch === 0) await this.waitUntil(() => this.unacked.length < batchesInFlightMax);
    await this.waitUntil(() => !this.needsDrain);
    const fields: FrameFields = { diskId: this.options.diskId, epoch: this.options.epoch, sequence: this.sequence, ...closing };
    const bytes = frameBytes(fields, this.frameExtents);
    // A frame of many small compressed extents may outgrow the reused buffers: it gets one of its own.
    const buffer = bytes <= frameBufferBytes ? await this.frameBuffers.acquire() : Buffer.allocUnsafe(bytes);
    if (!buffer) throw this.failure ?? new DrplaneError(ErrorCode.Aborted, 'the batch stream was cancelled');
    if (this.failure) throw this.failure;
    const message = encodeFrame(buffer, fields, this.frameExtents);
    const release = bytes <= frameBufferBytes ? () => this.frameBuffers.release(buffer) : undefined;
    this.needsDrain = !this.call.write(new PreEncoded(message) as unknown as BatchFrame, release);
    this.framesInBatch++;
    for (const extent of this.frameExtents) this.options.onSent(extent);
    this.frameExtents = [];
    this.frameDataBytes = 0;
  }

  private acknowledge(ack: BatchAck__Output): void {
    const expected = this.unacked[0];
    if (expected === undefined || ack.sequence < expected || ack.sequence > this.unacked[this.unacked.length - 1]) {
      this.fail(new DrplaneError(ErrorCode.Internal, `${this.options.peer} acknowledged batch ${ack.sequence} of disk ${this.options.diskId}; batch ${expected ?? 'none'} was expected`));
      return;
    }
    if (ack.duplicate) {
      // Our view of the replica's applied sequence was stale (an older stream got there first): our batch was ignored, so start over from the master target's state.
      this.fail(new DrplaneError(ErrorCode.Aborted, `${this.options.peer} already held batch ${ack.sequence} of disk ${this.options.diskId}; resuming from its state`));
      return;
    }
    let batches = 0;
    while (this.unacked.length > 0 && this.unacked[0] <= ack.sequence) {
      this.unacked.shift();
      batches++;
    }
    this.lastAck = ack;
    this.options.onAck(ack, batches);
    this.notify();
  }

  private fail(error: DrplaneError): void {
    this.failure ??= error;
    // A dead call may never call back for the frames it holds: a writer waiting for a frame buffer must wake and fail.
    this.frameBuffers.close();
    this.notify();
    for (const listener of [...this.failureListeners]) listener();
    this.failureListeners.clear();
  }

  private notify(): void {
    for (const wake of [...this.waiters]) wake();
    this.waiters.clear();
  }

  private async waitUntil(ready: () => boolean): Promise<void> {
    for (;;) {
      if (this.failure) throw this.failure;
      if (ready()) return;
      await new Promise<void>((resolve) => this.waiters.add(resolve));
    }
  }
}
