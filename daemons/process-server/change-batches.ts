// The journal sent to the master target as batches, and where a recovery
// point is made (docs/continuous-replication.md, "Batches").
//
// Records go out in sequence order, writes as extents (hashed on this thread,
// LZ4 where it pays), in record order inside a batch: the master
// target applies a batch's extents in order, so overlapping writes end as the
// source did. A batch closes when it reaches batchBytesMax, right after a
// marker, when crash_consistent_interval_ms has passed since the last close,
// or at once when a flush waits for it. Its closing frame carries the capture
// and the last change record, so after any reconnect the sender resumes at the
// replica's applied_change_sequence + 1.
import type { HashPool } from '../../shared/hash-pool';
import { batchExtentsMax, sourceClockSkewMsMax } from '../../shared/limits';
import type { MasterTargetClient } from '../../shared/proto';
import { DrplaneError, ErrorCode } from '../../shared/errors';
import { failpoint } from '../../shared/failpoints';
import type { PreparedExtent } from '../../shared/extents';
import { blockHashes, initHashing } from '../../shared/hashing';
import type { BatchAck__Output } from '../../generated/drplane/v1/BatchAck';
import type { RecoveryPointKind__Output } from '../../generated/drplane/v1/RecoveryPointKind';
import { BatchStream } from './batch-stream';
import { ExtentPipeline } from './extent-pipeline';
import type { FirstPassFilter, Piece } from './first-pass-filter';
import type { Journal, JournalRecord } from './journal';

/** Records read from the journal at a time (markers carry no data, so bytes alone do not bound a read). */
const journalReadRecordsMax = 4_096;

export interface ClosingPoint {
  kind: Exclude<RecoveryPointKind__Output, 'RECOVERY_POINT_KIND_UNSPECIFIED'>;
  sourceTimeMs: number;
  tag: string;
}

export interface BoundaryFacts {
  /** The last record of the batch; undefined for an empty batch. */
  lastRecord: Pick<JournalRecord, 'sequence' | 'timeMs' | 'marker' | 'tag'> | undefined;
  /** The last change record the replica holds after the batch. */
  changeSequence: number;
  /** The agent's next_sequence at the end of the sync under this capture; 0 while the sync has not ended. */
  consistentFrom: number;
  /** Write-through: every record boundary is a state the source had. */
  everyBoundaryConsistent: boolean;
  /** The newest watermark, and the last record received with it. */
  watermark: { timeMs: number; sequence: number };
}

/**
 * Whether the replica after this batch is a recovery point, and which. Only
 * once every record before consistentFrom is in (the sync's reads are then
 * overwritten by the writes they raced with), and only at a consistent
 * boundary: any boundary in write-through, right after a marker in scan mode.
 * The source held the state from the last record's time; when that record is
 * also the newest one received, until the watermark at least.
 */
export function closingPoint(facts: BoundaryFacts): ClosingPoint | undefined {
  const { lastRecord, changeSequence, consistentFrom, everyBoundaryConsistent, watermark } = facts;
  if (consistentFrom === 0 || changeSequence < consistentFrom - 1) return undefined;
  switch (lastRecord?.marker) {
    case 'MARKER_APP_CONSISTENT':
      return { kind: 'APP_CONSISTENT', sourceTimeMs: lastRecord.timeMs, tag: lastRecord.tag };
    case 'MARKER_GROUP_CONSISTENT':
      // The tag is the barrier id: the configuration server finds each member's point of a group by it.
      return { kind: 'GROUP_CONSISTENT', sourceTimeMs: lastRecord.timeMs, tag: lastRecord.tag };
    case 'MARKER_CRASH_CONSISTENT':
      return { kind: 'CRASH_CONSISTENT', sourceTimeMs: lastRecord.timeMs, tag: '' };
    default:
      break;
  }
  if (!everyBoundaryConsistent) return undefined;
  const heldUntilWatermark = watermark.sequence === changeSequence && watermark.timeMs > 0;
  if (!lastRecord) return heldUntilWatermark ? { kind: 'CRASH_CONSISTENT', sourceTimeMs: watermark.timeMs, tag: '' } : undefined;
  return { kind: 'CRASH_CONSISTENT', sourceTimeMs: heldUntilWatermark ? Math.max(lastRecord.timeMs, watermark.timeMs) : lastRecord.timeMs, tag: '' };
}

/**
 * A point's source time on the process server's clock: the agent's time, or
 * `nowMs` when the agent's clock is more than sourceClockSkewMsMax ahead (a
 * future-dated point would stay inside every retention window). `aheadMs` says
 * by how much it was ahead (0 when within the bound).
 */
export function clampSourceTime(sourceTimeMs: number, nowMs: number): { sourceTimeMs: number; aheadMs: number } {
  const aheadMs = sourceTimeMs - nowMs;
  return aheadMs > sourceClockSkewMsMax ? { sourceTimeMs: nowMs, aheadMs } : { sourceTimeMs, aheadMs: 0 };
}

/** A batch sent and not yet acknowledged. */
export interface SentBatch {
  sequence: number;
  changeSequence: number;
  /** Plain bytes of its writes. */
  plainBytes: number;
  point: ClosingPoint | undefined;
}

export interface ChangeBatchSenderOptions {
  diskId: string;
  epoch: number;
  captureId: string;
  journal: Journal;
  masterTarget: MasterTargetClient;
  /** The master target, as named in error messages. */
  peer: string;
  /** The replica's applied batch sequence + 1. */
  firstBatchSequence: number;
  /** The first change record to send. */
  startSequence: number;
  consistentFrom: number;
  everyBoundaryConsistent(): boolean;
  /** Read at every wait: StartReplication may change it while the session runs. */
  crashConsistentIntervalMs(): number;
  watermark(): { timeMs: number; sequence: number };
  /** A FlushReplication waits for a point at or after this record (-1: none). */
  flushTarget(): number;
  /** Fills in a point's tag when it has none (the session's first point gets StartReplication's tag). */
  tagFor(point: ClosingPoint): string;
  batchBytesMax: number;
  pool: HashPool;
  compression: boolean;
  onSent(extent: PreparedExtent): void;
  onApplied(batch: SentBatch, ack: BatchAck__Output): void;
  /** Scan against a replica that holds data: the capture's first pass is filtered (first-pass-filter.ts). */
  firstPass?: FirstPassSend;
  /** At each batch closed: how far the agent's clock was ahead of this one beyond sourceClockSkewMsMax (0: within it). */
  onSourceClockAhead?(aheadMs: number): void;
}

/** How the sender finds and filters the first pass of a scan capture (SCAN_BASELINE_UNKNOWN: it covers every block, in order). */
export interface FirstPassSend {
  filter: FirstPassFilter;
  diskBytes: number;
  /** The last record of the first pass (0: not seen yet, so every record so far belongs to it). */
  endSequence(): number;
  /** The sender met the first pass's last record (the one that ends at the end of the disk): resolves once that is persisted, before it can be applied. */
  passEnded(sequence: number): Promise<void>;
}

export class ChangeBatchSender {
  private readonly batches: BatchStream;
  private readonly inFlight: SentBatch[] = [];
  private readonly abort = new AbortController();
  private wakeUp: (() => void) | undefined;
  /** Change records up to here are in closed batches. */
  private next: number;
  private lastCloseMs = Date.now();
  /** Points closed on this stream reach this record (-1: none yet), with the source time of the last one. */
  private pointSentThrough = -1;
  private lastPointTimeMs = 0;
  private flushHandledThrough = -1;
  /** The open batch. */
  private pipeline: ExtentPipeline;
  private plainBytes = 0;
  private writes = 0;
  private lastRecord: JournalRecord | undefined;

  constructor(private readonly options: ChangeBatchSenderOptions) {
    this.next = options.startSequence;
    this.batches = new BatchStream(options.masterTarget, {
      diskId: options.diskId,
      epoch: options.epoch,
      firstSequence: options.firstBatchSequence,
      syncId: '',
      batchBytesMax: options.batchBytesMax,
      peer: options.peer,
      onSent: options.onSent,
      onAck: (ack) => this.acknowledged(ack),
    });
    this.pipeline = this.newPipeline();
  }

  /** New records, a flush or a changed interval: look again now. */
  wake(): void {
    this.wakeUp?.();
  }

  /** Stops sending; a batch not closed is never applied (the next sender sends its records again). */
  stop(): void {
    this.abort.abort();
    this.batches.cancel();
    this.wake();
  }

  /** Sends until stopped (resolves) or the stream fails (rejects with a DrplaneError). */
  async run(): Promise<void> {
    const forget = this.options.journal.onDurable(() => this.wake());
    try {
      await initHashing();
      while (!this.abort.signal.aborted) {
        const { journal } = this.options;
        if (this.next <= journal.durableSequence) {
          await this.take(await journal.read(this.next, this.options.batchBytesMax - this.plainBytes, Math.min(journalReadRecordsMax, batchExtentsMax - this.writes)));
          if (this.closeDue()) await this.close();
          continue;
        }
        if (this.closeDue()) {
          await this.close();
          continue;
        }
        await this.waitForWork(this.lastCloseMs + this.options.crashConsistentIntervalMs() - Date.now());
      }
    } catch (error) {
      if (this.abort.signal.aborted) return;
      throw error;
    } finally {
      forget();
      this.batches.cancel();
    }
  }

  private newPipeline(): ExtentPipeline {
    // keepZero: a write of zeros must reach the replica like any other.
    return new ExtentPipeline(this.options.pool, this.options.compression, true, this.batches, () => undefined);
  }

  /** Adds records to the open batch, closing it when full or right after a marker. */
  private async take(records: JournalRecord[]): Promise<void> {
    const filtered = await this.filterFirstPass(records);
    for (const record of records) {
      if (this.abort.signal.aborted) return;
      const zeroLength = record.zeroLength ?? 0;
      if (zeroLength > 0) {
        // A run of zeros travels as one CODEC_ZERO extent: no data and no hashes, however long the run.
        if (this.plainBytes + zeroLength > this.options.batchBytesMax || this.writes + 1 > batchExtentsMax) await this.close();
        await this.pipeline.addZeros(record.offset, zeroLength);
        this.plainBytes += zeroLength;
        this.writes++;
        this.lastRecord = record;
        this.next = record.sequence + 1;
        continue;
      }
      const pieces = filtered.get(record.sequence) ?? (record.data.length > 0 ? [{ offset: record.offset, data: record.data }] : []);
      const bytes = pieces.reduce((sum, piece) => sum + piece.data.length, 0);
      if (pieces.length > 0 && (this.plainBytes + bytes > this.options.batchBytesMax || this.writes + pieces.length > batchExtentsMax)) await this.close();
      // Hashed here, not in the worker pool: a pool task copies every byte into a buffer of its own and moves it
      // to a worker and back, which costs more than the hashing (xxh64 at several GB/s) on this thread.
      for (const piece of pieces) await this.pipeline.add({ offset: piece.offset, data: piece.data, blockHashes: blockHashes(piece.data) });
      this.plainBytes += bytes;
      this.writes += pieces.length;
      this.lastRecord = record;
      this.next = record.sequence + 1;
      if (record.marker !== 'MARKER_NONE') await this.close();
    }
  }

  /**
   * The writes of the records that belong to the first pass, without the
   * blocks the replica already holds (a record may keep none). The pass's
   * last record is noted (persisted) before anything after it is sent.
   */
  private async filterFirstPass(records: JournalRecord[]): Promise<Map<number, Piece[]>> {
    const firstPass = this.options.firstPass;
    const out = new Map<number, Piece[]>();
    if (!firstPass) return out;
    const inPass: JournalRecord[] = [];
    for (const record of records) {
      const end = firstPass.endSequence();
      if (end !== 0 && record.sequence > end) break;
      if (record.data.length === 0) continue;
      inPass.push(record);
      if (end === 0 && record.offset + record.data.length === firstPass.diskBytes) {
        await firstPass.passEnded(record.sequence);
        break;
      }
    }
    if (inPass.length === 0) return out;
    const kept = await firstPass.filter.differing(inPass.map((record) => ({ offset: record.offset, data: record.data })));
    inPass.forEach((record, index) => out.set(record.sequence, kept[index]));
    await failpoint('first-pass.filtered');
    return out;
  }

  /** The interval has passed, or a flush waits for a point at records already taken. */
  private closeDue(): boolean {
    const target = this.options.flushTarget();
    const flushWaits = target >= 0 && target > this.pointSentThrough && target > this.flushHandledThrough && this.next - 1 >= target;
    return flushWaits || Date.now() >= this.lastCloseMs + this.options.crashConsistentIntervalMs();
  }

  /** Closes the open batch; an empty one only when it makes a point (an idle write-through disk). */
  private async close(): Promise<void> {
    const changeSequence = this.next - 1;
    const point = closingPoint({
      lastRecord: this.lastRecord,
      changeSequence,
      consistentFrom: this.options.consistentFrom,
      everyBoundaryConsistent: this.options.everyBoundaryConsistent(),
      watermark: this.options.watermark(),
    });
    this.lastCloseMs = Date.now();
    this.flushHandledThrough = changeSequence;
    const empty = this.lastRecord === undefined;
    if (empty && !point) return;
    // An empty batch repeats the state of the last point: only a newer source time makes it worth one.
    if (empty && point && this.pointSentThrough === changeSequence && point.sourceTimeMs <= this.lastPointTimeMs) return;
    await this.pipeline.flush();
    if (point) point.tag ||= this.options.tagFor(point);
    const sourceTime = clampSourceTime(point?.sourceTimeMs ?? this.lastRecord?.timeMs ?? 0, Date.now());
    this.options.onSourceClockAhead?.(sourceTime.aheadMs);
    if (point) point.sourceTimeMs = sourceTime.sourceTimeMs;
    const sequence = await this.batches.closeWith({
      captureId: this.options.captureId,
      changeSequence,
      recoveryPointKind: point?.kind ?? 'RECOVERY_POINT_KIND_UNSPECIFIED',
      sourceTimeMs: sourceTime.sourceTimeMs,
      tag: point?.tag ?? '',
    });
    this.inFlight.push({ sequence, changeSequence, plainBytes: this.plainBytes, point });
    if (point) {
      this.pointSentThrough = changeSequence;
      this.lastPointTimeMs = point.sourceTimeMs;
    }
    this.pipeline = this.newPipeline();
    this.plainBytes = 0;
    this.writes = 0;
    this.lastRecord = undefined;
  }

  private acknowledged(ack: BatchAck__Output): void {
    if (this.abort.signal.aborted) return;
    while (this.inFlight.length > 0 && this.inFlight[0].sequence <= ack.sequence) {
      const batch = this.inFlight.shift()!;
      this.options.onApplied(batch, batch.sequence === ack.sequence ? ack : { ...ack, sequence: batch.sequence, recoveryPointId: batch.point ? `${this.options.diskId}@${batch.sequence}` : '' });
    }
  }

  private async waitForWork(waitMs: number): Promise<void> {
    if (this.abort.signal.aborted) return;
    let timer: NodeJS.Timeout | undefined;
    let forgetFailure = () => undefined as unknown;
    try {
      // Woken by new work, the interval, or the stream's failure (thrown below).
      await new Promise<void>((resolve) => {
        this.wakeUp = resolve;
        timer = setTimeout(resolve, Math.max(1, waitMs));
        forgetFailure = this.batches.onFailure(resolve);
      });
    } finally {
      clearTimeout(timer);
      forgetFailure();
      this.wakeUp = undefined;
    }
    this.batches.throwIfFailed();
    if (this.abort.signal.aborted) throw new DrplaneError(ErrorCode.Aborted, 'the sender was stopped');
  }
}
