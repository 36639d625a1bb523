// StreamChanges, the agent's end: sends a capture's held records in order to
// the process server, and forgets them when it says they are durable. Records
// are never dropped because a stream broke: they stay held until acknowledged
// (or until the capture overflows). One stream per capture: a newer one
// replaces the older (ABORTED).
import * as grpc from '@grpc/grpc-js';
import type { ChangeBatch } from '../../generated/drplane/v1/ChangeBatch';
import type { StreamChangesRequest__Output } from '../../generated/drplane/v1/StreamChangesRequest';
import { DrplaneError, ErrorCode, failedPrecondition, toServiceError } from '../../shared/errors';
import { changeBatchDataBytesMax, changeBatchRecordsMax, units, watermarkIntervalMs } from '../../shared/limits';
import type { Logger } from '../../shared/log';
import { BufferPool, Encoder, PreEncoded, boolFieldBytes, bytesFieldBytes, messageFieldBytes, stringFieldBytes, uintFieldBytes } from '../../shared/wire';
import type { Capture, HeldRecord } from './capture';

type ChangesCall = grpc.ServerDuplexStream<StreamChangesRequest__Output, ChangeBatch>;

// ChangeBatch is encoded by hand into reused buffers (shared/wire.ts): through
// protobufjs every batch cost a fresh buffer of up to 4 MiB and a copy of every
// record, which a profile of write-through capture showed as a large share of
// the agent's time (allocation, copying and garbage collection).
const captureModeCodes: Record<string, number> = { CAPTURE_MODE_UNSPECIFIED: 0, CAPTURE_WRITE_THROUGH: 1, CAPTURE_SCAN: 2 };
const markerCodes: Record<string, number> = { MARKER_NONE: 0, MARKER_CRASH_CONSISTENT: 1, MARKER_APP_CONSISTENT: 2, MARKER_GROUP_CONSISTENT: 3 };
/** A pooled message buffer: a batch's data plus room for the headers of many records (a batch that needs more gets a buffer of its own). */
const messageBufferBytes = changeBatchDataBytesMax + 512 * units.KiB;
/** Messages of one stream written and not yet copied by grpc-js; a further send waits (the stream's bound on memory). */
const messageBuffersMax = 3;

function recordBytes(record: HeldRecord): number {
  return (
    uintFieldBytes(1, record.sequence) +
    uintFieldBytes(2, record.timeMs) +
    uintFieldBytes(3, record.offset) +
    bytesFieldBytes(4, record.data.length) +
    uintFieldBytes(5, markerCodes[record.marker] ?? 0) +
    stringFieldBytes(6, record.tag) +
    uintFieldBytes(7, record.zeroLength)
  );
}

export interface ChangeBatchFields {
  captureId: string;
  mode: string;
  records: HeldRecord[];
  watermarkTimeMs: number;
  everyBoundaryConsistent: boolean;
  nextSequence: number;
}

/** Bytes of a ChangeBatch, and of each of its records (reused by encodeChangeBatch). */
export function changeBatchBytes(batch: ChangeBatchFields, recordSizes: number[]): number {
  let bytes = stringFieldBytes(1, batch.captureId) + uintFieldBytes(2, captureModeCodes[batch.mode] ?? 0);
  recordSizes.length = 0;
  for (const record of batch.records) {
    const size = recordBytes(record);
    recordSizes.push(size);
    bytes += messageFieldBytes(3, size);
  }
  return bytes + uintFieldBytes(4, batch.watermarkTimeMs) + boolFieldBytes(5, batch.everyBoundaryConsistent) + uintFieldBytes(6, batch.nextSequence);
}

/** Encodes a ChangeBatch (plain protobuf, as protobufjs would) into `buffer` from 0; returns its length. */
export function encodeChangeBatch(batch: ChangeBatchFields, recordSizes: number[], buffer: Buffer): number {
  const out = new Encoder(buffer);
  out.string(1, batch.captureId).uint(2, captureModeCodes[batch.mode] ?? 0);
  batch.records.forEach((record, index) => {
    out.header(3, recordSizes[index]);
    out.uint(1, record.sequence).uint(2, record.timeMs).uint(3, record.offset).bytes(4, record.data).uint(5, markerCodes[record.marker] ?? 0).string(6, record.tag).uint(7, record.zeroLength);
  });
  out.uint(4, batch.watermarkTimeMs).bool(5, batch.everyBoundaryConsistent).uint(6, batch.nextSequence);
  return out.position;
}

export class ChangeStream {
  /** The capture id of the records this stream sends (it follows an overflow to the new id). */
  private captureId: string;
  /** The next sequence to send. */
  private cursor: number;
  /** The last sequence sent under captureId: an acknowledgement never goes past it. */
  private lastSent: number;
  private lastSentTimeMs: number | undefined;
  private watermarkMs = 0;
  private lastSendMs = 0;
  private closed = false;
  private waiting: (() => void) | undefined;
  private readonly buffers = new BufferPool(messageBufferBytes, messageBuffersMax);
  private readonly recordSizes: number[] = [];

  constructor(
    private readonly call: ChangesCall,
    private readonly capture: Capture,
    first: StreamChangesRequest__Output,
    private readonly log: Logger,
  ) {
    this.captureId = capture.captureId;
    const resumes = first.captureId === capture.captureId && first.fromSequence >= capture.firstHeldSequence && first.fromSequence <= capture.nextSequence;
    // Otherwise the first batch starts at the first held record, with the capture id: the caller sees it cannot resume and resyncs.
    this.cursor = resumes ? first.fromSequence : capture.firstHeldSequence;
    this.lastSent = this.cursor - 1;
    // The caller needs nothing before from_sequence: it holds those records durably.
    if (resumes) capture.acknowledge(first.fromSequence - 1);
    this.log.info({ disk: capture.path, captureId: capture.captureId, asked: { captureId: first.captureId, fromSequence: first.fromSequence }, from: this.cursor, resumes }, 'change stream opened');
    call.on('drain', () => this.wake());
  }

  wake(): void {
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.();
  }

  replace(reason: string): void {
    this.close(new DrplaneError(ErrorCode.Aborted, reason));
  }

  /** Ends the stream: OK without an error; nothing is sent when the caller has gone. */
  close(error?: DrplaneError): void {
    if (this.closed) return;
    this.closed = true;
    if (this.capture.stream === this) this.capture.stream = undefined;
    // grpc-js may never call back the writes of a call that ended: a send waiting for a buffer gives up.
    this.buffers.close();
    this.wake();
    if (this.call.cancelled || this.call.destroyed) return;
    if (error) this.call.emit('error', toServiceError(error));
    else this.call.end();
  }

  /** A later request: every record up to durable_sequence is durable at the caller. */
  acknowledge(request: StreamChangesRequest__Output): void {
    if (this.closed || !request.durableSequence) return;
    // An acknowledgement of an older capture (before an overflow) must not drop records of the new one.
    if (request.captureId && request.captureId !== this.captureId) return;
    if (this.captureId !== this.capture.captureId) return;
    this.capture.acknowledge(Math.min(request.durableSequence, this.lastSent));
  }

  async run(): Promise<void> {
    const capture = this.capture;
    let first = true;
    while (!this.closed) {
      if (capture.stopped) {
        if (capture.stoppedBecause === 'shutdown') return this.close(new DrplaneError(ErrorCode.Unavailable, `the agent is shutting down: records not acknowledged are lost with it, so expect a new capture id`));
        return this.close(failedPrecondition(`the capture of ${capture.path} was stopped: StartCapture again`));
      }
      if (capture.captureId !== this.captureId) {
        this.log.info({ disk: capture.path, from: this.captureId, to: capture.captureId }, 'change stream follows the capture to its new id');
        this.captureId = capture.captureId;
        this.cursor = capture.firstHeldSequence;
        this.lastSent = this.cursor - 1;
        this.lastSentTimeMs = undefined;
      }
      if (this.cursor < capture.firstHeldSequence) {
        // Only this stream acknowledges, and never past what it sent: this is a bug, but the caller can still resync.
        this.log.error({ disk: capture.path, cursor: this.cursor, firstHeld: capture.firstHeldSequence }, 'change stream is behind the held records');
        this.cursor = capture.firstHeldSequence;
      }
      const idleMs = Date.now() - this.lastSendMs;
      if (first || this.cursor < capture.nextSequence || idleMs >= watermarkIntervalMs) {
        first = false;
        await this.send();
        // Back-pressure: wait until the caller has taken what is queued.
        while (!this.closed && this.call.writableNeedDrain) await this.sleep(watermarkIntervalMs);
        continue;
      }
      await this.sleep(watermarkIntervalMs - idleMs);
    }
  }

  /** Sends the next records (or a watermark alone); waits first for a message buffer (at most messageBuffersMax unwritten). */
  private async send(): Promise<void> {
    const pooled = await this.buffers.acquire();
    if (!pooled || this.closed) return;
    const capture = this.capture;
    const records = this.cursor < capture.nextSequence ? capture.recordsFrom(this.cursor, changeBatchDataBytesMax, changeBatchRecordsMax) : [];
    if (records.length) {
      const last = records[records.length - 1];
      this.cursor = last.sequence + 1;
      this.lastSent = last.sequence;
      this.lastSentTimeMs = last.timeMs;
    }
    const watermark = capture.watermarkMs(this.lastSent, this.lastSentTimeMs);
    if (watermark !== undefined && watermark > this.watermarkMs) this.watermarkMs = watermark;
    this.lastSendMs = Date.now();
    const batch: ChangeBatchFields = {
      captureId: this.captureId,
      mode: capture.mode,
      records,
      watermarkTimeMs: this.watermarkMs,
      everyBoundaryConsistent: capture.mode === 'CAPTURE_WRITE_THROUGH',
      nextSequence: capture.nextSequence,
    };
    const bytes = changeBatchBytes(batch, this.recordSizes);
    // Many markers with long tags may not fit the pooled buffer: that message gets one of its own.
    const buffer = bytes <= pooled.length ? pooled : Buffer.allocUnsafe(bytes);
    if (buffer !== pooled) this.buffers.release(pooled);
    const length = encodeChangeBatch(batch, this.recordSizes, buffer);
    capture.streamedBytes += length;
    // The buffer stays untouched until grpc-js has copied it (the write's callback).
    this.call.write(new PreEncoded(buffer.subarray(0, length)) as unknown as ChangeBatch, () => {
      if (buffer === pooled) this.buffers.release(pooled);
    });
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.wake(), ms);
      this.waiting = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
}

/** Serves one StreamChanges call; `find` gives the running capture of a disk or throws. Returns a way to end it with an error. */
export function serveChangeStream(call: ChangesCall, find: (path: string) => Capture, log: Logger): (error: DrplaneError) => void {
  let stream: ChangeStream | undefined;
  let refused = false;
  call.on('data', (request: StreamChangesRequest__Output) => {
    if (stream) return stream.acknowledge(request);
    if (refused) return;
    try {
      const capture = find(request.path);
      capture.stream?.replace(`a newer StreamChanges for ${capture.path} replaced this one`);
      stream = new ChangeStream(call, capture, request, log);
      capture.stream = stream;
    } catch (error) {
      refused = true;
      call.emit('error', toServiceError(error));
      return;
    }
    const running = stream;
    running.run().catch((error: unknown) => {
      log.error({ err: error, disk: request.path }, 'change stream failed');
      running.close(new DrplaneError(ErrorCode.Internal, `change stream failed: ${(error as Error).message}`));
    });
  });
  // The caller half-closed: it wants nothing more.
  call.on('end', () => (stream ? stream.close() : refused || call.end()));
  call.on('cancelled', () => stream?.close());
  return (error) => {
    if (stream) return stream.close(error);
    if (refused) return;
    refused = true;
    call.emit('error', toServiceError(error));
  };
}
