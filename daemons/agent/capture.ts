// A change capture of one source disk: the records it numbers (1, 2, 3...)
// and holds until the process server says they are durable, and the overflow
// that starts the capture over (new capture id) when they would pass the bound.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import type { CaptureStatus } from '../../generated/drplane/v1/CaptureStatus';
import type { MarkerKind__Output } from '../../generated/drplane/v1/MarkerKind';
import { captureStallMsMax, extentBytesMax, zeroRecordBytesMax, zeroRecordHeldBytes } from '../../shared/limits';
import type { Logger } from '../../shared/log';

export type CaptureMode = 'CAPTURE_WRITE_THROUGH' | 'CAPTURE_SCAN';

export interface HeldRecord {
  sequence: number;
  timeMs: number;
  offset: number;
  /** Whole blocks of a write; empty for a marker and a zero run. Owned by the record (a copy in a slab, or the buffer it was read into). */
  data: Buffer;
  /** A run of zeros of this many bytes (whole blocks), with no data; 0 for a write with data and for a marker. */
  zeroLength: number;
  marker: MarkerKind__Output;
  tag: string;
  /** The slab holding `data` when it was copied into one (write-through). */
  slab?: Slab;
}

/**
 * Write-through records are copied into a few large buffers (slabs) that are
 * used again once every record in them is acknowledged. Holding each request's
 * own buffer instead kept thousands of buffers alive until the process server
 * acknowledged them, long enough to reach V8's old generation; freeing them
 * there made a full garbage collection every few hundred milliseconds (a
 * profile of write-through capture: a fifth of the agent's CPU). A copy costs
 * far less, and the request's buffer then dies young.
 */
interface Slab {
  buffer: Buffer;
  used: number;
  /** Held records whose data is in this slab. */
  live: number;
}
const slabBytes = 4 * extentBytesMax;
/** Empty slabs kept for reuse (the rest are left to the garbage collector). */
const freeSlabsMax = 8;

const noData = Buffer.alloc(0);

/** What a held record counts against heldBytesMax: its data, or a zero run's nominal cost. */
const heldCost = (record: HeldRecord) => (record.zeroLength > 0 ? zeroRecordHeldBytes : record.data.length);

/** Whoever serves the capture's StreamChanges: a newer stream or a stop ends it. */
export interface CaptureListener {
  /** Something changed: records appended or dropped, a new capture id, or the capture stopped. */
  wake(): void;
}

export class Capture {
  captureId = crypto.randomUUID();
  /** The sequence the next record gets. */
  nextSequence = 1;
  heldBytes = 0;
  writes = 0;
  bytesWritten = 0;
  /** Of bytesWritten, the bytes of zero-run records. */
  zeroRunBytes = 0;
  /** Encoded ChangeBatch bytes sent for this capture (change-stream.ts counts them). */
  streamedBytes = 0;
  scanPasses = 0;
  lastPassTimeMs = 0;
  overflows = 0;
  lastHookError = '';
  readonly startedTimeMs = Date.now();
  stopped = false;
  stoppedBecause: 'stopped' | 'shutdown' | undefined;
  /**
   * When each write being applied now started (NBD writes on distinct blocks
   * run at once): its change may be on the disk before its record exists, so
   * no watermark may pass the earliest of them.
   */
  private readonly pendingStartsMs: number[] = [];
  /** Scan: the pass time of the last finished pass; every change before it is in the records. */
  passWatermarkMs = 0;
  /** The stream serving this capture now (at most one). */
  stream: (CaptureListener & { replace(reason: string): void }) | undefined;

  /** Held records in sequence order; those before `head` are already dropped (compacted now and then). */
  private held: HeldRecord[] = [];
  private head = 0;
  private lastTimeMs = 0;
  private readonly roomWaiters = new Set<() => void>();
  /** The slab write data is copied into now, and empty ones to reuse. */
  private slab: Slab | undefined;
  private readonly freeSlabs: Buffer[] = [];

  constructor(
    readonly path: string,
    readonly mode: CaptureMode,
    readonly heldBytesMax: number,
    private readonly log: Logger,
    private readonly stallMsMax = captureStallMsMax,
  ) {
    assert.ok(heldBytesMax >= extentBytesMax, 'one write of the largest size always fits in an empty capture');
  }

  /** A write starts changing the disk; the returned function says it is recorded (or failed). */
  beginPending(timeMs = Date.now()): () => void {
    this.pendingStartsMs.push(timeMs);
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      this.pendingStartsMs.splice(this.pendingStartsMs.indexOf(timeMs), 1);
    };
  }

  /** When the earliest write still being applied started; undefined when none is. */
  get pendingSinceMs(): number | undefined {
    let earliest: number | undefined;
    for (const startMs of this.pendingStartsMs) if (earliest === undefined || startMs < earliest) earliest = startMs;
    return earliest;
  }

  get firstHeldSequence(): number {
    return this.nextSequence - (this.held.length - this.head);
  }

  get heldCount(): number {
    return this.held.length - this.head;
  }

  /** Whether `bytes` more fit under heldBytesMax now (a write then need not wait). */
  hasRoom(bytes: number): boolean {
    return this.heldBytes + bytes <= this.heldBytesMax;
  }

  /**
   * Waits until `bytes` more fit under heldBytesMax, up to the stall limit;
   * then overflows (drops what is held, new capture id) so a write never waits
   * forever for a process server that is slow or away.
   */
  async waitForRoom(bytes: number): Promise<void> {
    assert.ok(bytes <= this.heldBytesMax);
    if (this.heldBytes + bytes <= this.heldBytesMax) return;
    const deadline = Date.now() + this.stallMsMax;
    while (!this.stopped && this.heldBytes + bytes > this.heldBytesMax) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.roomWaiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, left);
        this.roomWaiters.add(done);
      });
    }
    if (!this.stopped && this.heldBytes + bytes > this.heldBytesMax) {
      this.overflow(`held records would pass ${this.heldBytesMax} bytes and no acknowledgement freed room within ${this.stallMsMax} ms`);
    }
  }

  /**
   * Numbers and holds a record. Times never go backwards within a capture (a
   * clock step must not make a later record look older).
   */
  append(record: { offset?: number; data?: Buffer; marker?: MarkerKind__Output; tag?: string }, timeMs = Date.now()): HeldRecord {
    assert.ok(!this.stopped, 'no records after a capture stopped');
    const data = record.data ?? noData;
    return this.hold(record, data, undefined, timeMs);
  }

  /**
   * Numbers and holds a write-through record, with a copy of `data` in a slab:
   * the caller's buffer (a request's) is free again when this returns.
   */
  appendCopy(offset: number, data: Buffer, timeMs = Date.now()): HeldRecord {
    assert.ok(!this.stopped, 'no records after a capture stopped');
    assert.ok(data.length <= extentBytesMax);
    let slab = this.slab;
    if (!slab || slab.buffer.length - slab.used < data.length) {
      if (slab && slab.live === 0) this.recycle(slab);
      slab = this.slab = { buffer: this.freeSlabs.pop() ?? Buffer.allocUnsafeSlow(slabBytes), used: 0, live: 0 };
    }
    const copy = slab.buffer.subarray(slab.used, slab.used + data.length);
    data.copy(copy);
    slab.used += data.length;
    slab.live++;
    return this.hold({ offset }, copy, slab, timeMs);
  }

  /**
   * Numbers and holds a run of `length` zeros at `offset` (whole blocks, at
   * most zeroRecordBytesMax): a record with no data, so TRIM and WRITE_ZEROES
   * carry no zero bytes to the process server or into its journal.
   */
  appendZeros(offset: number, length: number, timeMs = Date.now()): HeldRecord {
    assert.ok(!this.stopped, 'no records after a capture stopped');
    assert.ok(length > 0 && length <= zeroRecordBytesMax, `a zero record covers 1 to ${zeroRecordBytesMax} bytes`);
    return this.hold({ offset, zeroLength: length }, noData, undefined, timeMs);
  }

  private hold(record: { offset?: number; zeroLength?: number; marker?: MarkerKind__Output; tag?: string }, data: Buffer, slab: Slab | undefined, timeMs: number): HeldRecord {
    const held: HeldRecord = {
      sequence: this.nextSequence++,
      timeMs: Math.max(timeMs, this.lastTimeMs),
      offset: record.offset ?? 0,
      data,
      zeroLength: record.zeroLength ?? 0,
      marker: record.marker ?? 'MARKER_NONE',
      tag: record.tag ?? '',
      slab,
    };
    this.lastTimeMs = held.timeMs;
    this.held.push(held);
    this.heldBytes += heldCost(held);
    if (held.marker === 'MARKER_NONE') {
      this.writes++;
      this.bytesWritten += data.length + held.zeroLength;
      this.zeroRunBytes += held.zeroLength;
    }
    this.stream?.wake();
    return held;
  }

  /** Records from `sequence` on, at most `bytesMax` of data (but at least one record) and `countMax` records. */
  recordsFrom(sequence: number, bytesMax: number, countMax: number): HeldRecord[] {
    const first = this.firstHeldSequence;
    assert.ok(sequence >= first, `records from ${sequence} asked, the first held is ${first}`);
    const out: HeldRecord[] = [];
    let bytes = 0;
    for (let index = this.head + (sequence - first); index < this.held.length && out.length < countMax; index++) {
      const record = this.held[index];
      if (out.length > 0 && bytes + record.data.length > bytesMax) break;
      out.push(record);
      bytes += record.data.length;
    }
    return out;
  }

  /** Drops every held record up to `durableSequence`; returns how many. */
  acknowledge(durableSequence: number): number {
    let dropped = 0;
    while (this.head < this.held.length && this.held[this.head].sequence <= durableSequence) {
      const record = this.held[this.head];
      this.heldBytes -= heldCost(record);
      this.held[this.head] = undefined as unknown as HeldRecord;
      const slab = record.slab;
      // The slab is used again only once no held record is in it (records leave in order; a send copies them at once).
      if (slab && --slab.live === 0 && slab !== this.slab) this.recycle(slab);
      this.head++;
      dropped++;
    }
    // Compact once the dropped prefix is large, so the array does not grow forever.
    if (this.head > 1024 && this.head * 2 > this.held.length) {
      this.held = this.held.slice(this.head);
      this.head = 0;
    }
    if (dropped) for (const waiter of [...this.roomWaiters]) waiter();
    return dropped;
  }

  private recycle(slab: Slab): void {
    if (this.freeSlabs.length < freeSlabsMax) this.freeSlabs.push(slab.buffer);
  }

  /** Every held record is dropped: their slabs go too (the current one is started afresh). */
  private dropSlabs(): void {
    this.slab = undefined;
  }

  /**
   * Starts the capture over: held records are dropped, a new capture id, and
   * records from 1 again. The process server sees the new id and resyncs.
   */
  overflow(reason: string): void {
    const dropped = { records: this.heldCount, bytes: this.heldBytes, captureId: this.captureId, nextSequence: this.nextSequence };
    this.held = [];
    this.head = 0;
    this.heldBytes = 0;
    this.dropSlabs();
    this.overflows++;
    this.captureId = crypto.randomUUID();
    this.nextSequence = 1;
    this.log.warn({ disk: this.path, reason, dropped, newCaptureId: this.captureId, overflows: this.overflows }, 'capture overflowed: records dropped, the process server must resync under the new capture id');
    this.stream?.wake();
  }

  /**
   * The time before which every change is in the records up to `sentThrough`,
   * or undefined when that cannot be said (the caller keeps its previous one).
   */
  watermarkMs(sentThrough: number, lastSentTimeMs: number | undefined): number | undefined {
    const caughtUp = sentThrough >= this.nextSequence - 1;
    if (this.mode === 'CAPTURE_SCAN') return caughtUp ? this.passWatermarkMs : undefined;
    if (!caughtUp) return lastSentTimeMs;
    // Later records must not look older than a watermark already given out.
    this.lastTimeMs = Math.max(this.lastTimeMs, Math.min(Date.now(), this.pendingSinceMs ?? Number.POSITIVE_INFINITY));
    return this.lastTimeMs;
  }

  /** Stops the capture; `shutdown`: the agent is stopping (the caller may retry later), not an operator's stop. */
  stop(because: 'stopped' | 'shutdown' = 'stopped'): void {
    this.stopped = true;
    this.stoppedBecause = because;
    this.held = [];
    this.head = 0;
    this.heldBytes = 0;
    this.dropSlabs();
    this.freeSlabs.length = 0;
    for (const waiter of [...this.roomWaiters]) waiter();
    this.stream?.wake();
  }

  status(): CaptureStatus {
    return {
      path: this.path,
      mode: this.mode,
      captureId: this.captureId,
      nextSequence: this.nextSequence,
      firstHeldSequence: this.firstHeldSequence,
      heldBytes: this.heldBytes,
      heldBytesMax: this.heldBytesMax,
      writes: this.writes,
      bytesWritten: this.bytesWritten,
      zeroRunBytes: this.zeroRunBytes,
      streamedBytes: this.streamedBytes,
      scanPasses: this.scanPasses,
      lastPassTimeMs: this.lastPassTimeMs,
      overflows: this.overflows,
      streaming: this.stream !== undefined,
      lastHookError: this.lastHookError,
      startedTimeMs: this.startedTimeMs,
    };
  }
}
