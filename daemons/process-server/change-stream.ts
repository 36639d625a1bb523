// The process server's end of the agent's StreamChanges: records go into the
// journal and are acknowledged (durable_sequence) only after their group
// commit, so the agent forgets nothing the journal could still lose. Before
// each message is read the cache and the group commit must have room: at the
// bound nothing is read, so nothing is acknowledged, and the agent holds the
// records (back-pressure; at its own bound its capture overflows).
import type * as grpc from '@grpc/grpc-js';
import { DrplaneError, ErrorCode, fromServiceError, isServiceError } from '../../shared/errors';
import { blockBytes, extentBytesMax, journalUnsyncedBytesMax, nameLengthMax, zeroRecordBytesMax } from '../../shared/limits';
import type { AgentClient } from '../../shared/proto';
import type { ChangeBatch__Output } from '../../generated/drplane/v1/ChangeBatch';
import type { ChangeRecord__Output } from '../../generated/drplane/v1/ChangeRecord';
import type { StreamChangesRequest } from '../../generated/drplane/v1/StreamChangesRequest';
import type { CacheSpace } from './cache';
import type { Journal, JournalRecord } from './journal';

/** How often a session held back by a full cache looks again, besides when segments are deleted. */
const cacheFullRecheckMs = 1_000;

export interface ChangeStreamOptions {
  agent: AgentClient;
  /** The agent, as named in error messages. */
  peer: string;
  path: string;
  diskBytes: number;
  journal: Journal;
  cache: CacheSpace;
  signal: AbortSignal;
  /** The first answer arrived: the agent is streaming. */
  onConnected(): void;
  /**
   * The agent streams another capture than the journal's, or has dropped records
   * the journal still needs: the session starts a new journal (and a sync) for
   * `captureId` from `firstSequence`; resolves once it has.
   */
  onNewCapture(captureId: string, firstSequence: number, reason: string): Promise<void>;
  /** After each message: the watermark and the last record received with it. */
  onBatch(batch: ChangeBatch__Output, lastSequence: number): void;
  /** Plain bytes of writes received. */
  onReceived(bytes: number): void;
  /** Why reading waits ('' once it reads again). */
  onHeldBack(reason: string): void;
}

/** Checks a record from the agent; a bad one ends the stream (the agent has a bug, or is not ours). */
export function checkRecord(record: ChangeRecord__Output, expected: number, diskBytes: number, peer: string): void {
  const bad = (what: string) => new DrplaneError(ErrorCode.InvalidArgument, `${peer} sent change record ${record.sequence}: ${what}`);
  if (record.sequence !== expected) throw bad(`expected record ${expected} (records must be consecutive)`);
  if (record.tag.length > nameLengthMax) throw bad(`its tag is longer than ${nameLengthMax} characters`);
  const zeroLength = Number(record.zeroLength);
  if (record.marker !== 'MARKER_NONE') {
    if (record.data.length > 0 || zeroLength > 0) throw bad('a marker with data or a zero run');
    return;
  }
  const { offset, data } = record;
  if (zeroLength > 0) {
    // A run of zeros: no data, whole blocks, at most one extent, inside the disk.
    if (data.length > 0) throw bad('a zero run with data');
    if (!Number.isSafeInteger(zeroLength) || zeroLength % blockBytes !== 0 || zeroLength > zeroRecordBytesMax) throw bad(`a zero run of ${zeroLength} bytes (whole ${blockBytes}-byte blocks, at most ${zeroRecordBytesMax})`);
    if (!Number.isSafeInteger(offset) || offset % blockBytes !== 0 || offset + zeroLength > diskBytes) throw bad(`a zero run at ${offset} of ${zeroLength} bytes outside the disk of ${diskBytes} bytes`);
    return;
  }
  if (data.length === 0 || data.length % blockBytes !== 0 || data.length > extentBytesMax) throw bad(`a write of ${data.length} bytes (whole ${blockBytes}-byte blocks, at most ${extentBytesMax})`);
  if (!Number.isSafeInteger(offset) || offset % blockBytes !== 0 || offset + data.length > diskBytes) throw bad(`a write at ${offset} of ${data.length} bytes outside the disk of ${diskBytes} bytes`);
}

/** Streams changes into the journal until the stream fails, the agent ends it, or `signal` stops it. */
export async function receiveChanges(options: ChangeStreamOptions): Promise<void> {
  const { agent, peer, journal, signal } = options;
  const call: grpc.ClientDuplexStream<StreamChangesRequest, ChangeBatch__Output> = agent.streamChanges();
  let open = true;
  const closed = () => (open = false);
  call.on('status', closed);
  call.on('error', closed);
  const onAbort = () => call.cancel();
  signal.addEventListener('abort', onAbort, { once: true });
  let appends: Promise<void> = Promise.resolve();
  let appendFailure: unknown;
  try {
    call.write({ path: options.path, captureId: journal.captureId, fromSequence: journal.nextSequence });
    let first = true;
    for await (const batch of call as AsyncIterable<ChangeBatch__Output>) {
      if (first) options.onConnected();
      const records = batch.records;
      const firstSequence = records[0]?.sequence ?? batch.nextSequence;
      let reason = '';
      if (batch.captureId !== journal.captureId) reason = journal.captureId ? `the agent's capture is ${batch.captureId}, the journal's ${journal.captureId}` : 'the session has no journal yet';
      else if (records.length > 0 && firstSequence > journal.nextSequence) reason = `the agent holds records from ${firstSequence}, the journal needs ${journal.nextSequence}`;
      else if (first && records.length === 0 && batch.nextSequence > journal.nextSequence) reason = `the agent is at record ${batch.nextSequence} and holds none of ${journal.nextSequence} on`;
      first = false;
      if (reason) {
        // The journal may only be replaced once nothing is being appended to it.
        await appends;
        if (appendFailure) throw appendFailure;
        await options.onNewCapture(batch.captureId, firstSequence, reason);
      }
      // The agent may send again what the journal has (a stream that started before an acknowledgement).
      const fresh = records.filter((record) => record.sequence >= journal.nextSequence);
      const journaled: JournalRecord[] = [];
      let dataBytes = 0;
      for (const record of fresh) {
        checkRecord(record, journal.nextSequence + journaled.length, options.diskBytes, peer);
        journaled.push({ sequence: record.sequence, timeMs: record.timeMs || Date.now(), offset: record.offset, marker: record.marker, tag: record.tag, data: record.data, zeroLength: Number(record.zeroLength) });
        dataBytes += record.data.length;
      }
      if (journaled.length > 0) {
        const last = journaled[journaled.length - 1].sequence;
        const captureId = journal.captureId;
        appends = journal.append(journaled).then(
          () => {
            // Naming the capture: the agent ignores an acknowledgement of a capture it has left (after an overflow).
            if (open) call.write({ durableSequence: last, captureId });
          },
          (error: unknown) => {
            appendFailure ??= error;
            call.cancel();
          },
        );
        options.onReceived(dataBytes);
      }
      options.onBatch(batch, journal.nextSequence - 1);
      if (appendFailure) throw appendFailure;
      await holdBack(options);
    }
    if (signal.aborted) return;
    throw new DrplaneError(ErrorCode.Unavailable, `${peer} ended the change stream`);
  } catch (error) {
    if (signal.aborted) return;
    if (appendFailure) throw appendFailure;
    throw isServiceError(error) ? fromServiceError(error, peer) : error;
  } finally {
    signal.removeEventListener('abort', onAbort);
    call.cancel();
    // Nothing may still be appended once the caller looks at (or replaces) the journal.
    await appends;
  }
}

/** Waits while the cache is full or the group commit is far behind. */
async function holdBack(options: ChangeStreamOptions): Promise<void> {
  const { cache, journal, signal } = options;
  let held = false;
  while (!signal.aborted) {
    if (cache.full) {
      options.onHeldBack(`cache full: ${cache.usedBytes} of ${cache.bytesMax} bytes; new changes wait on the agent until the master target applies the backlog`);
      held = true;
      await cache.nextChange(cacheFullRecheckMs);
      continue;
    }
    if (journal.unsyncedBytes > journalUnsyncedBytesMax && !journal.failure) {
      // Bounded too: a group that fails never reports durable, and its failure ends the stream.
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => (forget(), resolve()), cacheFullRecheckMs);
        const forget = journal.onDurable(() => (clearTimeout(timer), forget(), resolve()));
      });
      continue;
    }
    break;
  }
  if (held) options.onHeldBack('');
}
