// Applying batches atomically (DESIGN.md invariant 4). The replica is only ever
// seen at a batch boundary:
//   1. everything is checked (epoch, sequence, offsets, sizes, block hashes) before anything is written;
//   2. the batch header and the before-image of every extent are committed to LMDB;
//   3. the replica is written and flushed;
//   4. the batch is marked applied together with the hash index, the replica's
//      progress and its recovery point, in one commit.
// On start-up a batch left "applying" is rolled back from its before-images.
import fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { blockHashes, hashBytes } from '../../shared/hashing';
import { decode } from '../../shared/codec';
import { DrplaneError, ErrorCode, corrupt, failedPrecondition, invalidArgument, limitExceeded, outOfRange } from '../../shared/errors';
import { applyQueueBatchesMax, batchBytesMax, batchExtentsMax, blockBytes, directWriteBytesMax, extentBytesMax, sourceClockSkewMsMax } from '../../shared/limits';
import { failpoint, writeLength } from '../../shared/failpoints';
import { writeAll, writeAllSync } from '../../shared/file-io';
import { exitCode } from '../../shared/process';
import type { Logger } from '../../shared/log';
import type { BatchFrame__Output } from '../../generated/drplane/v1/BatchFrame';
import type { BatchAck } from '../../generated/drplane/v1/BatchAck';
import { BeforeImageReads, BeforeImageSource, Slabs } from './before-images';
import { dataBeforeImageBytes, dataBeforeImageInto, encodeBeforeImage, type BatchRecord, type RecoveryPointRecord, type ReplicaRecord } from './retention-store';
import type { Replicas } from './replicas';
import type { MasterTargetMetrics } from './metrics';

interface PlainExtent {
  offset: number;
  data: Buffer;
  hashes: Buffer;
}

interface PendingBatch {
  diskId: string;
  epoch: number;
  sequence: number;
  duplicate: boolean;
  extents: PlainExtent[];
  plainBytes: number;
}

/** The block hashes of a run of zeros (every zero block hashes to 0), for CODEC_ZERO extents; read only. */
const zeroHashes = Buffer.alloc((extentBytesMax / blockBytes) * hashBytes);

/** Replica writes of one batch in flight at once (libuv's thread pool has 4 threads). */
const writesInFlightMax = 4;
/** Extents up to this size are written synchronously. */
const syncWriteBytesMax = 64 * 1024;

export const recoveryPointId = (diskId: string, sequence: number) => `${diskId}@${sequence}`;

/** How a batch stream ends when the master target stops (SIGTERM): not a refusal of the sender's batches. */
export const masterTargetStoppingMessage = 'the master target is stopping: every acknowledged batch is applied; send again from the next one when it is back';

export class BatchApplier {
  batchesApplied = 0;
  /** The warning that direct writes fall back for want of aligned buffers, logged once. */
  private directBuffersMissingLogged = false;
  bytesApplied = 0;
  /** Each open stream's way to end itself at a batch boundary (stopStreams). */
  private readonly streams = new Set<() => Promise<void>>();
  private readonly beforeImageSlabs = new Slabs();
  private readonly beforeImageSources = new Map<string, BeforeImageSource>();

  constructor(
    private readonly replicas: Replicas,
    private readonly log: Logger,
    private readonly metrics?: MasterTargetMetrics,
  ) {}

  /**
   * Consumes the frames of one ApplyBatches stream; calls `ack` after each
   * applied (or repeated) batch, in order. Checking and decoding the next batch
   * overlaps with applying the previous one (at most `applyQueueBatchesMax`
   * batches wait to be applied). The first failure goes to `fail` at once,
   * whether it is a bad frame (nothing of its batch has been written) or an
   * apply that could not finish; the rest of the stream is then ignored.
   */
  async consume(frames: AsyncIterable<BatchFrame__Output>, ack: (ack: BatchAck) => Promise<void>, fail: (error: unknown) => void): Promise<void> {
    let pending: PendingBatch | undefined;
    let failed = false;
    const failOnce = (error: unknown) => {
      if (failed) return;
      failed = true;
      fail(error);
    };
    // Next sequence per disk on this stream: batches accepted here but not yet applied count.
    const expected = new Map<string, number>();
    let chain: Promise<void> = Promise.resolve();
    const queued: Promise<void>[] = [];
    let stopping = false;
    const stopStream = async () => {
      stopping = true;
      await chain;
      failOnce(new DrplaneError(ErrorCode.Unavailable, masterTargetStoppingMessage));
    };
    this.streams.add(stopStream);
    try {
      for await (const frame of frames) {
        if (failed) return;
        // Stopping: the batch being received is dropped whole (nothing of it was written); the accepted ones finish below.
        if (stopping) break;
        pending = this.accept(frame, pending, expected);
        if (!frame.last) continue;
        const batch = pending;
        pending = undefined;
        expected.set(batch.diskId, Math.max(expected.get(batch.diskId) ?? 0, batch.sequence + 1));
        chain = chain.then(async () => {
          if (failed) return;
          try {
            // apply() returns undefined when another stream applied this sequence first: a duplicate too.
            const pointId = batch.duplicate ? undefined : await this.apply(batch, frame);
            await ack({ diskId: batch.diskId, sequence: batch.sequence, duplicate: pointId === undefined, recoveryPointId: pointId ?? '' });
            if (pointId === undefined && !batch.duplicate) {
              // Another stream applied this sequence while this one waited for the disk: the batches queued behind
              // it follow a batch the replica does not hold, so their change records may leave a gap. Apply none.
              failOnce(new DrplaneError(ErrorCode.Aborted, `batch ${batch.sequence} of disk ${batch.diskId} was applied by another stream meanwhile; nothing after it on this stream was applied: resume from the replica's state`));
            }
          } catch (error) {
            failOnce(error);
          }
        });
        queued.push(chain);
        if (queued.length > applyQueueBatchesMax) await queued.shift();
      }
      await chain;
      if (pending && !failed) this.log.warn({ diskId: pending.diskId, sequence: pending.sequence }, 'stream ended inside a batch; the partial batch was dropped');
    } catch (error) {
      failOnce(error);
    } finally {
      // Registered until its accepted batches have settled, so stopStreams (and the daemon's stop) waits for them on every path.
      await chain;
      this.streams.delete(stopStream);
    }
  }

  /**
   * SIGTERM: every stream stops taking frames, finishes the batches it
   * accepted (applied and acknowledged), and ends with UNAVAILABLE, so the
   * daemon stops at a batch boundary instead of waiting out its grace period.
   */
  async stopStreams(): Promise<void> {
    await Promise.all([...this.streams].map((stop) => stop()));
  }

  private beforeImageSource(diskId: string): BeforeImageSource {
    let source = this.beforeImageSources.get(diskId);
    if (!source) {
      source = new BeforeImageSource();
      this.beforeImageSources.set(diskId, source);
    }
    return source;
  }

  /** Checks one frame and adds its decoded extents to the batch it belongs to. */
  private accept(frame: BatchFrame__Output, pending: PendingBatch | undefined, expected: Map<string, number>): PendingBatch {
    // A retired replica refuses batches of any epoch: its source lost the disk at the failover the commit ended.
    const record = this.replicas.live(frame.diskId, `batch ${frame.sequence} refused, nothing of it written: `);
    const nextSequence = expected.get(frame.diskId) ?? record.appliedSequence + 1;
    if (frame.epoch !== record.epoch) {
      const relation = frame.epoch < record.epoch ? 'older than' : 'newer than';
      throw new DrplaneError(ErrorCode.StaleEpoch, `batch epoch ${frame.epoch} is ${relation} the replica's epoch ${record.epoch} for disk ${frame.diskId}: this source does not own the disk (fenced by the configuration server)`);
    }
    if (pending && (pending.diskId !== frame.diskId || pending.sequence !== frame.sequence || pending.epoch !== frame.epoch)) {
      throw invalidArgument(`frame for ${frame.diskId} sequence ${frame.sequence} arrived inside batch ${pending.sequence} of ${pending.diskId}: close a batch (last) before starting the next`);
    }
    const batch: PendingBatch = pending ?? {
      diskId: frame.diskId,
      epoch: frame.epoch,
      sequence: frame.sequence,
      duplicate: frame.sequence < nextSequence,
      extents: [],
      plainBytes: 0,
    };
    if (!pending && !batch.duplicate && frame.sequence !== nextSequence) {
      throw failedPrecondition(`batch sequence ${frame.sequence} for disk ${frame.diskId} leaves a gap: the next batch is ${nextSequence}; resume from the last acknowledged sequence + 1`);
    }
    if (batch.extents.length + frame.extents.length > batchExtentsMax) throw limitExceeded(`batch ${frame.sequence} has more than ${batchExtentsMax} extents`);
    for (const extent of frame.extents) {
      const { offset, length } = extent;
      if (!Number.isSafeInteger(offset) || offset % blockBytes !== 0 || !Number.isSafeInteger(length) || length <= 0 || length % blockBytes !== 0) {
        throw invalidArgument(`extent at ${offset} of ${length} bytes is not whole ${blockBytes}-byte blocks`);
      }
      if (length > extentBytesMax) throw limitExceeded(`extent at ${offset} has ${length} bytes, more than ${extentBytesMax}`);
      if (offset + length > record.diskBytes) throw outOfRange(`extent at ${offset} of ${length} bytes ends past the end of disk ${frame.diskId} (${record.diskBytes} bytes)`);
      // A CODEC_ZERO extent (a run of zeros) carries no hashes: the codec defines every byte, and each hashes to 0.
      const zeroRun = extent.codec === 'CODEC_ZERO';
      const hashesExpected = zeroRun ? 0 : (length / blockBytes) * hashBytes;
      if (extent.blockHashes.length !== hashesExpected) throw invalidArgument(`extent at ${offset} carries ${extent.blockHashes.length} bytes of block hashes, expected ${hashesExpected}`);
      batch.plainBytes += length;
      if (batch.plainBytes > batchBytesMax) throw limitExceeded(`batch ${frame.sequence} holds more than ${batchBytesMax} bytes`);
      if (batch.duplicate) continue;
      const data = decode(extent.codec, extent.data, length);
      if (zeroRun) {
        // Views of the shared zeros (codec.ts, zeros.ts): written to the replica from them, never into them.
        batch.extents.push({ offset, data, hashes: zeroHashes.subarray(0, (length / blockBytes) * hashBytes) });
        continue;
      }
      const actual = blockHashes(data);
      if (!actual.equals(extent.blockHashes)) {
        const block = firstDifference(actual, extent.blockHashes) / hashBytes;
        throw corrupt(`block hash mismatch at offset ${offset + block * blockBytes} of disk ${frame.diskId}: the data was corrupted on the way; the batch was refused and nothing of it applied`);
      }
      // grpc-js gives each message a buffer of its own, so keeping a view of it is safe.
      batch.extents.push({ offset, data, hashes: actual });
    }
    return batch;
  }

  /** Applies a batch; returns its recovery point id ('' if none), or undefined if the sequence was already applied. */
  private async apply(batch: PendingBatch, last: BatchFrame__Output): Promise<string | undefined> {
    const { diskId, sequence } = batch;
    return this.replicas.lock(diskId).runExclusive(async () => {
      // Checked again under the lock: another stream may have applied it meanwhile, or fenced or retired the disk.
      const record = this.replicas.live(diskId, `batch ${sequence} refused, nothing of it written: `);
      if (record.epoch !== batch.epoch) throw new DrplaneError(ErrorCode.StaleEpoch, `disk ${diskId} was fenced (epoch ${record.epoch}) while batch ${sequence} arrived`);
      if (sequence <= record.appliedSequence) return undefined;
      if (sequence !== record.appliedSequence + 1) throw failedPrecondition(`batch sequence ${sequence} leaves a gap after ${record.appliedSequence}`);
      const store = this.replicas.store;
      const file = await this.replicas.file(record);

      const startedMs = performance.now();
      /** Where the batch's time went (debug log): a slow step shows here first. */
      const timings = { beforeImagesMs: 0, writeMs: 0, datasyncMs: 0, commitMs: 0 };
      // 2. Before-images and the batch header, durable before the replica is touched.
      const images: Buffer[] = [];
      let beforeImageBytes = 0;
      // A zero marker only where the index proves the range never held data (a seeded replica's index proves nothing until rebuilt).
      const neverWritten = batch.extents.map((extent) => record.hashIndexTrusted && !store.anyWritten(diskId, extent.offset, extent.data.length));
      const slab = this.beforeImageSlabs.acquire(batch.extents.reduce((sum, extent, index) => (neverWritten[index] ? sum : sum + dataBeforeImageBytes(extent.data.length)), 0));
      let header: BatchRecord;
      let reads: BeforeImageReads | undefined;
      // The old data is read into a reused slab: LMDB copies each image when it is put, inside the transaction.
      try {
        let slabUsed = 0;
        reads = new BeforeImageReads(file, record.path, this.beforeImageSource(diskId));
        for (const [index, extent] of batch.extents.entries()) {
          if (neverWritten[index]) {
            images.push(encodeBeforeImage({ offset: extent.offset, zero: true, length: extent.data.length }));
            continue;
          }
          const image = slab.subarray(slabUsed, slabUsed + dataBeforeImageBytes(extent.data.length));
          slabUsed += image.length;
          images.push(image);
          beforeImageBytes += extent.data.length;
          await reads.read(extent.offset, dataBeforeImageInto(image, extent.offset));
        }
        await reads.finished();
        header = { state: 'applying', extents: batch.extents.map((e) => ({ offset: e.offset, length: e.data.length })), appliedTimeMs: 0, beforeImageBytes };
        await store.beginBatch(diskId, sequence, header, images);
      } finally {
        // A failed batch may still have reads in flight into the slab: the next batch gets it only after them.
        await reads?.settled();
        this.beforeImageSlabs.release(slab);
      }
      await failpoint('apply.before-images-committed');
      const imagesCommittedMs = performance.now();

      const pointKind = last.recoveryPointKind === 'RECOVERY_POINT_KIND_UNSPECIFIED' ? undefined : last.recoveryPointKind;
      const pointId = pointKind ? recoveryPointId(diskId, sequence) : '';
      // Any failure from here on (a full disk, an I/O error) rolls the batch back at once,
      // so the running daemon never shows a replica between batch boundaries.
      try {
        await failpoint('apply.replica-write');
        // 3. The replica.
        // Writes go to the thread pool in parallel (they touch distinct ranges, or the later extent is written last below).
        await this.writeReplica(record, file, batch.extents);
        const writtenMs = performance.now();
        await file.datasync();
        timings.writeMs = writtenMs - imagesCommittedMs;
        timings.datasyncMs = performance.now() - writtenMs;
        await failpoint('apply.replica-written');

        // 4. Applied, with the hash index, progress and recovery point, in one commit.
        const now = Date.now();
        // The capture and its last change record travel with the batch's applied state,
        // so a sender resumes at appliedChangeSequence + 1 after any restart. A closing
        // frame without a capture (a sync outside continuous replication) leaves them as they were.
        const capture: Partial<ReplicaRecord> = last.captureId ? { captureId: last.captureId, appliedChangeSequence: last.changeSequence } : {};
        const point: RecoveryPointRecord | undefined = pointKind && {
          id: pointId,
          diskId,
          sequence,
          kind: pointKind,
          // Never later than this clock allows: a future-dated point would stop pruning until its time came.
          sourceTimeMs: Math.min(last.sourceTimeMs || now, now + sourceClockSkewMsMax),
          appliedTimeMs: now,
          tag: last.tag,
          syncId: last.syncId,
          captureId: last.captureId,
          changeSequence: last.changeSequence,
        };
        await store.commitBatch(diskId, sequence, {
          header,
          appliedTimeMs: now,
          written: batch.extents.map((extent) => ({ offset: extent.offset, hashes: extent.hashes })),
          // Read-modify-write inside the commit: the pruner changes the counters without the disk's lock.
          replica: (current) => ({
            appliedSequence: sequence,
            dataSequence: batch.extents.length > 0 ? sequence : current.dataSequence,
            syncId: last.syncId || current.syncId,
            syncCursor: last.syncId ? last.syncCursor : current.syncCursor,
            syncComplete: last.syncId ? last.syncComplete : current.syncComplete,
            recoveryPointCount: current.recoveryPointCount + (pointKind ? 1 : 0),
            latestRecoveryPointId: pointId || current.latestRecoveryPointId,
            beforeImageBytes: current.beforeImageBytes + beforeImageBytes,
            ...capture,
          }),
          point,
        });
      } catch (error) {
        await this.rollBackOrExit(diskId, sequence, error);
        throw storageError(error, record.path);
      }
      await failpoint('apply.applied-committed');
      timings.beforeImagesMs = imagesCommittedMs - startedMs;
      timings.commitMs = performance.now() - startedMs - timings.beforeImagesMs - timings.writeMs - timings.datasyncMs;
      this.batchesApplied++;
      this.bytesApplied += batch.plainBytes;
      if (this.metrics) {
        this.metrics.applyDuration.observe((performance.now() - startedMs) / 1000);
        this.metrics.batchesApplied.inc({ disk_id: diskId });
        this.metrics.appliedBytes.inc({ disk_id: diskId }, batch.plainBytes);
        this.metrics.beforeImageBytes.inc({ disk_id: diskId }, beforeImageBytes);
      }
      this.log.debug({ diskId, sequence, bytes: batch.plainBytes, recoveryPoint: pointId || undefined, ...roundedTimings(timings) }, 'batch applied');
      return pointId;
    });
  }

  /**
   * Writes a batch's extents: large ones directly (O_DIRECT, in runs of
   * extents that follow each other), small ones through the page cache. A
   * direct write refused for its alignment is written the buffered way, and
   * the replica's direct writes stop.
   */
  private async writeReplica(record: ReplicaRecord, file: FileHandle, extents: PlainExtent[]): Promise<void> {
    const direct = await this.replicas.directFile(record);
    if (!direct) return writeExtents(file, extents);
    const buffers = this.replicas.directBuffers;
    let refused = false;
    const writeRun = async (run: PlainExtent[]): Promise<void> => {
      const length = run.reduce((sum, extent) => sum + extent.data.length, 0);
      const offset = run[0].offset;
      if (refused) return writeExtents(file, run);
      const buffer = await buffers.acquire();
      if (!buffer) {
        if (!this.directBuffersMissingLogged) this.log.warn({ reason: buffers.unavailable }, 'no aligned buffer for direct writes can be made (an address-space limit?): replicas are written through the page cache');
        this.directBuffersMissingLogged = true;
        return writeExtents(file, run);
      }
      try {
        let at = 0;
        for (const extent of run) at += extent.data.copy(buffer.view, at);
        await failpoint('direct-writes.write');
        for (let done = 0; done < length; ) {
          // A short direct write asks again for the rest: whole blocks, so still aligned.
          const { bytesWritten } = await direct.write(buffer.view, done, writeLength('replica.write', length - done, blockBytes), offset + done);
          if (bytesWritten <= 0) throw new Error(`direct write of replica ${record.path} at ${offset + done} wrote nothing`);
          done += bytesWritten;
        }
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EINVAL') throw error;
        refused = true;
        this.log.warn({ diskId: record.diskId, err: (error as Error).message }, 'a direct write was refused; this replica is written through the page cache from now on');
        await writeExtents(file, run);
      } finally {
        buffers.release(buffer);
      }
    };
    await writeExtents(file, extents, { largeRuns: directWriteBytesMax, writeRun });
    if (refused) await this.replicas.stopDirectWrites(record.diskId);
  }

  /** Rolls back every batch a crash left half-applied, so each replica is at a batch boundary. */
  async rollbackUnfinished(): Promise<number> {
    let rolledBack = 0;
    const store = this.replicas.store;
    for (const { diskId, sequence } of [...store.unfinishedBatches()]) {
      // Its retirement deletes the batch with the replica (and the file may be gone already).
      if (store.replica(diskId)?.retired) continue;
      await this.rollbackBatch(diskId, sequence);
      this.log.warn({ diskId, sequence }, 'rolled back a batch that a crash left half-applied');
      rolledBack++;
    }
    return rolledBack;
  }

  /** Writes a batch's before-images back to the replica, then forgets the batch. */
  private async rollbackBatch(diskId: string, sequence: number): Promise<void> {
    const store = this.replicas.store;
    const file = await this.replicas.file(this.replicas.get(diskId));
    const zeros = Buffer.alloc(extentBytesMax);
    for (const image of store.batchBeforeImages(diskId, sequence)) {
      const data = image.zero ? zeros.subarray(0, image.length) : image.data;
      // Every byte or a failure: a short write must not let the batch be forgotten half-restored.
      await writeAll(file, data, image.offset, 'rollback.write');
    }
    await file.datasync();
    await failpoint('rollback.replica-restored');
    await store.forgetBatch(diskId, sequence);
  }

  /** A batch that failed half-way is rolled back now; if even that fails, start-up recovery must do it: exit. */
  private async rollBackOrExit(diskId: string, sequence: number, cause: unknown): Promise<void> {
    try {
      await this.rollbackBatch(diskId, sequence);
      this.log.warn({ diskId, sequence, err: (cause as Error).message }, 'batch failed while applying and was rolled back');
    } catch (error) {
      this.log.fatal({ diskId, sequence, err: error, cause: (cause as Error).message }, 'cannot roll back a failed batch; exiting so start-up recovery rolls it back');
      process.exit(exitCode.crash);
    }
  }
}

/** The error for a failed replica write: no space is RESOURCE_EXHAUSTED, anything else INTERNAL; both say the batch was rolled back. */
function storageError(error: unknown, replicaPath: string): DrplaneError {
  if (error instanceof DrplaneError) return error;
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') {
    return limitExceeded(`no space left to write replica ${replicaPath}: free space on its datastore, then start the sync again (it resumes from the replica's cursor); the batch was rolled back`);
  }
  return new DrplaneError(ErrorCode.Internal, `cannot write replica ${replicaPath}: ${(error as Error).message}; the batch was rolled back`, { cause: error });
}

/** Large extents that follow each other on the disk, written as one run (a direct write) instead of one by one. */
interface LargeRuns {
  /** The most bytes in one run. */
  largeRuns: number;
  writeRun(run: PlainExtent[]): Promise<void>;
}

/**
 * Writes extents in parallel, at most writesInFlightMax at a time; extents that
 * overlap an earlier one of the batch wait for it, so write order is kept.
 * Small extents (a delta's scattered blocks) are written inline through the
 * page cache; large ones through the thread pool, or gathered into runs for
 * `runs.writeRun`.
 */
async function writeExtents(file: FileHandle, extents: PlainExtent[], runs?: LargeRuns): Promise<void> {
  const inFlight = new Set<Promise<unknown>>();
  let writtenEnd = -1;
  const sortedByOffset = extents.every((extent, index) => index === 0 || extent.offset >= extents[index - 1].offset + extents[index - 1].data.length);
  let run: PlainExtent[] = [];
  let runBytes = 0;
  const start = async (write: () => Promise<unknown>) => {
    while (inFlight.size >= writesInFlightMax) await Promise.race(inFlight);
    const started: Promise<unknown> = write().finally(() => inFlight.delete(started));
    inFlight.add(started);
  };
  const startRun = async () => {
    if (run.length === 0) return;
    const extentsOfRun = run;
    run = [];
    runBytes = 0;
    await start(() => runs!.writeRun(extentsOfRun));
  };
  try {
    for (const extent of extents) {
      if (!sortedByOffset && extent.offset < writtenEnd) {
        await startRun();
        await Promise.all(inFlight);
      }
      writtenEnd = Math.max(writtenEnd, extent.offset + extent.data.length);
      if (extent.data.length <= syncWriteBytesMax) {
        // Small writes (scattered blocks of a delta) are cheaper inline than through the thread pool.
        writeAllSync(file.fd, extent.data, extent.offset, 'replica.write');
        continue;
      }
      if (!runs) {
        await start(() => writeAll(file, extent.data, extent.offset, 'replica.write'));
        continue;
      }
      const last = run[run.length - 1];
      if (last && (last.offset + last.data.length !== extent.offset || runBytes + extent.data.length > runs.largeRuns)) await startRun();
      run.push(extent);
      runBytes += extent.data.length;
    }
    await startRun();
    await Promise.all(inFlight);
  } finally {
    // On a failure, no write may still be running when the caller restores the before-images.
    await Promise.allSettled(inFlight);
  }
}

function roundedTimings(timings: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(timings).map(([name, ms]) => [name, Math.round(ms * 10) / 10]));
}

function firstDifference(a: Buffer, b: Buffer): number {
  for (let index = 0; index < a.length; index += hashBytes) {
    if (a.compare(b, index, index + hashBytes, index, index + hashBytes) !== 0) return index;
  }
  return 0;
}
