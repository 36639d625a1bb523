// The journal of one disk's change records, in cacheDir/<disk>/: what the agent
// sent, durable before the agent is acknowledged, until the master target has
// applied it. One capture id at a time: a new capture starts a new journal
// (reset), because records of two captures cannot be ordered.
//
// On disk: journal.json (capture id, where the journal started, what was
// released) and segment files named after their first sequence, each a header
// then checksummed records with consecutive sequences. Appends are grouped:
// every record appended while one fdatasync runs is written and synced by the
// next one (group commit), and append() resolves only after its fdatasync.
// Opening cuts a torn or corrupt tail (a crash in the middle of a write) and
// rebuilds the index; nothing after a bad record is trusted.
//
// The bytes of a segment and of each record: journal-records.ts.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Mutex } from 'async-mutex';
import { DrplaneError, ErrorCode } from '../../shared/errors';
import { failpoint } from '../../shared/failpoints';
import { syncDirectory, writeAll, writeFileDurably } from '../../shared/file-io';
import { zeroRecordHeldBytes } from '../../shared/limits';
import type { Logger } from '../../shared/log';
import { decodeRecord, decodeSegmentHeader, encodeRecordParts, encodeSegmentHeader, segmentName, segmentSuffix, type JournalRecord } from './journal-records';

export type { JournalRecord } from './journal-records';

export interface JournalOptions {
  /** A segment is closed and a new one started once it holds this many bytes. */
  segmentBytes: number;
  /** Recent records kept in memory; older ones are read back from the segments. */
  memoryBytesMax: number;
  log: Logger;
}

/**
 * What a record counts against memoryBytesMax: its data, or for a zero run (no data) the nominal cost the agent
 * counts too, so a backlog of zero runs (a TRIM of a whole disk while the master target is away) stays bounded in memory.
 */
const memoryCost = (record: JournalRecord) => (record.zeroLength ? zeroRecordHeldBytes : record.data.length);
const metaFile = 'journal.json';

/** A record the journal cannot read back although it was durable: the cache disk corrupted it (the session resyncs). */
export class JournalCorruptError extends DrplaneError {
  constructor(message: string) {
    super(ErrorCode.Corrupt, message);
    this.name = 'JournalCorruptError';
  }
}

interface Segment {
  firstSequence: number;
  file: string;
  /** Byte position of each record, in sequence order. */
  positions: number[];
  /** Data bytes of the records up to and including each one. */
  cumulativeDataBytes: number[];
  sizeBytes: number;
  reader?: Promise<FileHandle>;
}

const lastSequence = (segment: Segment) => segment.firstSequence + segment.positions.length - 1;
const segmentDataBytes = (segment: Segment) => segment.cumulativeDataBytes[segment.cumulativeDataBytes.length - 1] ?? 0;

interface Meta {
  captureId: string;
  /** The first record this journal was started for. */
  firstSequence: number;
  /** Every record up to here is applied and may be gone. */
  releasedSequence: number;
}

interface PendingGroup {
  records: JournalRecord[];
  /** Each record's pieces (encodeRecordParts) and its size. */
  encoded: Buffer[][];
  sizes: number[];
  resolve(): void;
  reject(error: unknown): void;
}


export class Journal {
  private meta: Meta;
  private readonly segments: Segment[] = [];
  /** The segment appends go to (the last one), open for writing. */
  private writer: FileHandle | undefined;
  /** Serialises group writes, rotation, release and reset: they all move segments. */
  private readonly lock = new Mutex();
  private pending: PendingGroup[] = [];
  private writing = false;
  private appendedSequence: number;
  private durable: number;
  private unsynced = 0;
  private broken: Error | undefined;
  /** Recent records, oldest first, from memoryHead on. */
  private memory: JournalRecord[] = [];
  private memoryHead = 0;
  private memoryDataBytes = 0;
  private readonly durableListeners = new Set<() => void>();
  private readonly idleWaiters: (() => void)[] = [];

  private constructor(
    readonly dir: string,
    private readonly options: JournalOptions,
    meta: Meta,
  ) {
    this.meta = meta;
    this.appendedSequence = meta.releasedSequence;
    this.durable = meta.releasedSequence;
  }

  /** Opens the journal in `dir` (creating an empty one), cutting a torn or corrupt tail. */
  static async open(dir: string, options: JournalOptions): Promise<Journal> {
    await fs.promises.mkdir(dir, { recursive: true });
    let meta: Meta = { captureId: '', firstSequence: 1, releasedSequence: 0 };
    try {
      const parsed = JSON.parse(await fs.promises.readFile(path.join(dir, metaFile), 'utf8')) as Meta;
      if (typeof parsed.captureId === 'string' && Number.isSafeInteger(parsed.firstSequence) && Number.isSafeInteger(parsed.releasedSequence)) meta = parsed;
      else options.log.warn({ dir }, 'journal.json is not valid: starting an empty journal');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') options.log.warn({ dir, err: (error as Error).message }, 'journal.json cannot be read: starting an empty journal');
    }
    const journal = new Journal(dir, options, meta);
    await journal.load();
    return journal;
  }

  get captureId(): string {
    return this.meta.captureId;
  }

  /** The first record of this journal's capture that the journal was started for. */
  get firstSequence(): number {
    return this.meta.firstSequence;
  }

  /** The next record to append. */
  get nextSequence(): number {
    return this.appendedSequence + 1;
  }

  /** Every record up to here is fdatasynced: the agent may forget it. */
  get durableSequence(): number {
    return this.durable;
  }

  /** Records up to here were released (applied on the master target). */
  get releasedSequence(): number {
    return this.meta.releasedSequence;
  }

  /** The oldest record still readable. */
  get firstRetainedSequence(): number {
    return this.segments[0]?.firstSequence ?? this.durable + 1;
  }

  get diskBytes(): number {
    return this.segments.reduce((total, segment) => total + segment.sizeBytes, 0);
  }

  get memoryBytes(): number {
    return this.memoryDataBytes;
  }

  /** Bytes appended and not yet fdatasynced. */
  get unsyncedBytes(): number {
    return this.unsynced;
  }

  /** The write or sync that broke the journal: reopen it to cut what was half written. */
  get failure(): Error | undefined {
    return this.broken;
  }

  /** Data bytes of the durable records after `sequence`. */
  dataBytesAfter(sequence: number): number {
    let total = 0;
    for (const segment of this.segments) {
      if (lastSequence(segment) <= sequence) continue;
      const before = sequence - segment.firstSequence;
      total += segmentDataBytes(segment) - (before >= 0 ? segment.cumulativeDataBytes[before] : 0);
    }
    return total;
  }

  /** Calls `listener` after every group commit; returns the undo. */
  onDurable(listener: () => void): () => void {
    this.durableListeners.add(listener);
    return () => this.durableListeners.delete(listener);
  }

  /** Forgets everything and starts a journal for `captureId` whose first record will be `firstSequence`. */
  async reset(captureId: string, firstSequence: number): Promise<void> {
    assert.ok(Number.isSafeInteger(firstSequence) && firstSequence >= 1);
    await this.idle();
    await this.lock.runExclusive(async () => {
      assert.equal(this.pending.length, 0, 'reset only between appends');
      // The new meta first: a crash between the two leaves segments of another capture, which open() deletes.
      this.meta = { captureId, firstSequence, releasedSequence: firstSequence - 1 };
      await writeFileDurably(path.join(this.dir, metaFile), JSON.stringify(this.meta));
      await this.closeWriter();
      for (const segment of this.segments.splice(0)) await this.removeSegment(segment);
      await syncDirectory(this.dir);
      this.appendedSequence = this.durable = firstSequence - 1;
      this.memory = [];
      this.memoryHead = 0;
      this.memoryDataBytes = 0;
      this.broken = undefined;
    });
  }

  /**
   * Appends records (consecutive, from nextSequence) and resolves once they are
   * fdatasynced. Records appended while a sync runs are written by the next one.
   */
  append(records: JournalRecord[]): Promise<void> {
    if (this.broken) return Promise.reject(this.broken);
    if (records.length === 0) return Promise.resolve();
    for (const [index, record] of records.entries()) {
      assert.equal(record.sequence, this.appendedSequence + 1 + index, 'records are appended in order, without gaps');
    }
    this.appendedSequence = records[records.length - 1].sequence;
    const encoded: Buffer[][] = [];
    const sizes: number[] = [];
    for (const record of records) {
      const { parts, bytes } = encodeRecordParts(record);
      encoded.push(parts);
      sizes.push(bytes);
      this.unsynced += bytes;
    }
    for (const record of records) {
      this.memory.push(record);
      this.memoryDataBytes += memoryCost(record);
    }
    this.trimMemory();
    return new Promise<void>((resolve, reject) => {
      this.pending.push({ records, encoded, sizes, resolve, reject });
      void this.writeGroups();
    });
  }

  /**
   * Durable records from `fromSequence` on, at most `recordsMax` of them and
   * `dataBytesMax` data bytes (always at least one when there is one): from
   * memory when they are still there, else read back from the segments.
   */
  async read(fromSequence: number, dataBytesMax: number, recordsMax: number): Promise<JournalRecord[]> {
    const out: JournalRecord[] = [];
    let dataBytes = 0;
    let sequence = fromSequence;
    if (sequence < this.firstRetainedSequence && sequence <= this.durable) {
      throw new DrplaneError(ErrorCode.Internal, `journal record ${sequence} was released (the journal holds ${this.firstRetainedSequence} on)`);
    }
    while (sequence <= this.durable && out.length < recordsMax) {
      // Looked up again after every read from disk: appends meanwhile may have dropped older records from memory.
      const memoryFirst = this.memoryHead < this.memory.length ? this.memory[this.memoryHead].sequence : Infinity;
      if (sequence >= memoryFirst) {
        const record = this.memory[this.memoryHead + sequence - memoryFirst];
        assert.equal(record.sequence, sequence, 'the memory queue holds consecutive records');
        if (out.length > 0 && dataBytes + record.data.length > dataBytesMax) break;
        out.push(record);
        dataBytes += record.data.length;
        sequence++;
        continue;
      }
      const fromDisk = await this.readSegment(sequence, Math.min(this.durable, memoryFirst - 1), dataBytesMax - dataBytes, recordsMax - out.length, out.length === 0);
      if (fromDisk.length === 0) break;
      for (const record of fromDisk) dataBytes += record.data.length;
      out.push(...fromDisk);
      sequence += fromDisk.length;
      if (dataBytes >= dataBytesMax) break;
    }
    return out;
  }

  /**
   * Records up to `sequence` are applied: deletes the segments that hold
   * nothing newer. The segment being appended to goes too once all of it is
   * applied (the next append starts a new one), so a disk whose master target
   * keeps up holds next to nothing in the cache.
   */
  async release(sequence: number): Promise<void> {
    const upTo = Math.min(sequence, this.durable);
    if (upTo <= this.meta.releasedSequence) return;
    await this.lock.runExclusive(async () => {
      if (upTo <= this.meta.releasedSequence) return;
      this.meta = { ...this.meta, releasedSequence: upTo };
      while (this.memoryHead < this.memory.length && this.memory[this.memoryHead].sequence <= upTo) this.dropOldestInMemory();
      const doomed: Segment[] = [];
      for (const segment of this.segments) {
        if (lastSequence(segment) > upTo) break;
        const active = segment === this.segments[this.segments.length - 1];
        if (active && this.appendedSequence > upTo) break;
        doomed.push(segment);
      }
      if (doomed.length === 0) return;
      // The meta first: a journal with no segments left must still know where it got to.
      await writeFileDurably(path.join(this.dir, metaFile), JSON.stringify(this.meta));
      if (doomed.includes(this.segments[this.segments.length - 1])) await this.closeWriter();
      for (const segment of doomed) {
        this.segments.splice(this.segments.indexOf(segment), 1);
        await this.removeSegment(segment);
      }
    });
  }

  /** Waits for the appends in progress, then closes the files. */
  async close(): Promise<void> {
    await this.idle();
    await this.lock.runExclusive(async () => {
      await this.closeWriter();
      for (const segment of this.segments) await this.closeReader(segment);
    });
  }

  /** Closes the journal and deletes its directory. */
  async destroy(): Promise<void> {
    this.broken ??= new DrplaneError(ErrorCode.Aborted, 'the journal was deleted');
    await this.close();
    await fs.promises.rm(this.dir, { recursive: true, force: true });
  }

  /** Waits until no group is being written. */
  private async idle(): Promise<void> {
    while (this.writing || this.pending.length > 0) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
  }

  private trimMemory(): void {
    while (this.memoryDataBytes > this.options.memoryBytesMax && this.memoryHead < this.memory.length) this.dropOldestInMemory();
  }

  private dropOldestInMemory(): void {
    this.memoryDataBytes -= memoryCost(this.memory[this.memoryHead]);
    this.memoryHead++;
    // Compact now and then, so the array does not grow without end.
    if (this.memoryHead > 4096 && this.memoryHead * 2 > this.memory.length) {
      this.memory = this.memory.slice(this.memoryHead);
      this.memoryHead = 0;
    }
  }

  /** The group-commit loop: writes every pending group, one fdatasync for all of them. */
  private async writeGroups(): Promise<void> {
    if (this.writing) return;
    this.writing = true;
    try {
      while (this.pending.length > 0) {
        const groups = this.pending;
        this.pending = [];
        try {
          if (this.broken) throw this.broken;
          await this.lock.runExclusive(() => this.writeAndSync(groups));
        } catch (error) {
          this.broken ??= error instanceof Error ? error : new Error(String(error));
          this.options.log.error({ dir: this.dir, err: this.broken.message }, 'journal write failed');
          for (const group of [...groups, ...this.pending.splice(0)]) group.reject(this.broken);
          continue;
        }
        for (const group of groups) {
          for (const bytes of group.sizes) this.unsynced -= bytes;
          this.durable = group.records[group.records.length - 1].sequence;
        }
        for (const group of groups) group.resolve();
        for (const listener of [...this.durableListeners]) listener();
      }
    } finally {
      this.writing = false;
      for (const wake of this.idleWaiters.splice(0)) wake();
    }
  }

  private async writeAndSync(groups: PendingGroup[]): Promise<void> {
    let buffers: Buffer[] = [];
    let bufferBytes = 0;
    let newSegment = false;
    const flush = async () => {
      const segment = this.segments[this.segments.length - 1];
      if (buffers.length === 0) return;
      const written = await this.writer!.writev(buffers, segment.sizeBytes - bufferBytes);
      if (written.bytesWritten !== bufferBytes) throw new Error(`short write to ${segment.file}`);
      buffers = [];
      bufferBytes = 0;
    };
    for (const group of groups) {
      for (const [index, parts] of group.encoded.entries()) {
        const recordBytes = group.sizes[index];
        let segment = this.segments[this.segments.length - 1] as Segment | undefined;
        if (!segment || !this.writer || (segment.sizeBytes + recordBytes > this.options.segmentBytes && segment.positions.length > 0)) {
          await flush();
          // A full segment is synced before records go to the next one, so only the last segment can have a torn tail.
          if (this.writer) {
            await this.writer.datasync();
            await this.closeWriter();
          }
          segment = await this.startSegment(group.records[index].sequence);
          newSegment = true;
        }
        segment.positions.push(segment.sizeBytes);
        segment.cumulativeDataBytes.push(segmentDataBytes(segment) + group.records[index].data.length);
        segment.sizeBytes += recordBytes;
        for (const part of parts) buffers.push(part);
        bufferBytes += recordBytes;
      }
    }
    await flush();
    await failpoint('journal.before-sync');
    await this.writer!.datasync();
    if (newSegment) await syncDirectory(this.dir);
    await failpoint('journal.synced');
  }

  private async startSegment(firstSequence: number): Promise<Segment> {
    const file = path.join(this.dir, segmentName(firstSequence));
    const header = encodeSegmentHeader(this.meta.captureId, firstSequence);
    this.writer = await fs.promises.open(file, 'w');
    await writeAll(this.writer, header, 0, 'journal.header-write');
    const segment: Segment = { firstSequence, file, positions: [], cumulativeDataBytes: [], sizeBytes: header.length };
    this.segments.push(segment);
    return segment;
  }

  private async closeWriter(): Promise<void> {
    const writer = this.writer;
    this.writer = undefined;
    await writer?.close();
  }

  private async closeReader(segment: Segment): Promise<void> {
    const reader = segment.reader;
    segment.reader = undefined;
    await reader?.then((handle) => handle.close()).catch(() => undefined);
  }

  private async removeSegment(segment: Segment): Promise<void> {
    await this.closeReader(segment);
    await fs.promises.rm(segment.file, { force: true });
  }

  /** Reads consecutive records of one segment from `sequence` to at most `lastWanted`. */
  private async readSegment(sequence: number, lastWanted: number, dataBytesMax: number, recordsMax: number, atLeastOne: boolean): Promise<JournalRecord[]> {
    const segment = this.segments.find((candidate) => candidate.firstSequence <= sequence && sequence <= lastSequence(candidate));
    if (!segment) throw new DrplaneError(ErrorCode.Internal, `journal record ${sequence} is in no segment`);
    const first = sequence - segment.firstSequence;
    const before = first > 0 ? segment.cumulativeDataBytes[first - 1] : 0;
    let last = first;
    const lastIndex = Math.min(lastWanted, lastSequence(segment)) - segment.firstSequence;
    while (last + 1 <= lastIndex && last + 1 - first < recordsMax && segment.cumulativeDataBytes[last + 1] - before <= dataBytesMax) last++;
    if (!atLeastOne && segment.cumulativeDataBytes[first] - before > dataBytesMax) return [];
    const start = segment.positions[first];
    const end = last + 1 < segment.positions.length ? segment.positions[last + 1] : segment.sizeBytes;
    segment.reader ??= fs.promises.open(segment.file, 'r');
    const handle = await segment.reader;
    const buffer = Buffer.allocUnsafe(end - start);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, start);
    if (bytesRead !== buffer.length) throw new JournalCorruptError(`journal segment ${segment.file} is shorter than its index (read ${bytesRead} of ${buffer.length} bytes at ${start})`);
    const records: JournalRecord[] = [];
    for (let position = 0; position < buffer.length; ) {
      const decoded = decodeRecord(buffer, position);
      if ('problem' in decoded || decoded.record.sequence !== sequence + records.length) {
        throw new JournalCorruptError(`journal segment ${segment.file} holds ${'problem' in decoded ? decoded.problem : `record ${decoded.record.sequence}`} where record ${sequence + records.length} was written: the cache disk corrupted it`);
      }
      records.push(decoded.record);
      position += decoded.bytes;
    }
    return records;
  }

  /** Rebuilds the index from the segment files, cutting a torn or corrupt tail. */
  private async load(): Promise<void> {
    const { log } = this.options;
    const names = (await fs.promises.readdir(this.dir)).filter((name) => name.endsWith(segmentSuffix)).sort();
    for (const name of (await fs.promises.readdir(this.dir)).filter((name) => name.endsWith('.tmp'))) await fs.promises.rm(path.join(this.dir, name), { force: true });
    let expected = -1;
    let cut = false;
    for (const name of names) {
      const file = path.join(this.dir, name);
      if (cut) {
        await fs.promises.rm(file, { force: true });
        continue;
      }
      const content = await fs.promises.readFile(file);
      const header = decodeSegmentHeader(content);
      if (!header || header.captureId !== this.meta.captureId || name !== segmentName(header.firstSequence)) {
        // A segment of an earlier capture (a crash during reset) or one whose header was torn.
        log.warn({ file, reason: header ? 'another capture' : 'torn header' }, 'journal segment dropped');
        await fs.promises.rm(file, { force: true });
        if (header?.captureId !== this.meta.captureId && this.segments.length === 0) continue;
        cut = true;
        continue;
      }
      if (expected >= 0 && header.firstSequence !== expected) {
        log.warn({ file, expected }, 'journal segment does not follow the previous one: it and the rest are dropped');
        cut = true;
        await fs.promises.rm(file, { force: true });
        continue;
      }
      const segment: Segment = { firstSequence: header.firstSequence, file, positions: [], cumulativeDataBytes: [], sizeBytes: header.bytes };
      let position = header.bytes;
      while (position < content.length) {
        const decoded = decodeRecord(content, position);
        const problem = 'problem' in decoded ? decoded.problem : decoded.record.sequence !== segment.firstSequence + segment.positions.length ? `record ${decoded.record.sequence} out of order` : undefined;
        if (problem) {
          log.warn({ file, position, problem, bytesCut: content.length - position }, 'journal tail cut: a write was torn by a crash, or the cache disk corrupted it');
          await fs.promises.truncate(file, position);
          cut = true;
          break;
        }
        const record = (decoded as { record: JournalRecord }).record;
        segment.positions.push(position);
        segment.cumulativeDataBytes.push(segmentDataBytes(segment) + record.data.length);
        position += (decoded as { bytes: number }).bytes;
      }
      segment.sizeBytes = position;
      if (segment.positions.length === 0) {
        await fs.promises.rm(file, { force: true });
        cut = true;
        continue;
      }
      if (segment.firstSequence > this.meta.releasedSequence + 1 && this.segments.length === 0) {
        // Records between the release point and this segment are missing: nothing after them can be replayed in order.
        log.warn({ file, releasedSequence: this.meta.releasedSequence }, 'journal segments start after a gap: they are dropped');
        await fs.promises.rm(file, { force: true });
        cut = true;
        continue;
      }
      this.segments.push(segment);
      expected = lastSequence(segment) + 1;
    }
    // Segments whose records were all released (a crash before they were deleted) go now.
    while (this.segments.length > 1 && lastSequence(this.segments[0]) <= this.meta.releasedSequence) await this.removeSegment(this.segments.shift()!);
    if (cut) await syncDirectory(this.dir);
    const last = this.segments[this.segments.length - 1];
    this.appendedSequence = this.durable = last ? Math.max(lastSequence(last), this.meta.releasedSequence) : this.meta.releasedSequence;
    // Appends go to a new segment: the last one may have been cut, and a fresh file keeps the write path simple.
    log.info({ dir: this.dir, captureId: this.meta.captureId, firstRetained: this.firstRetainedSequence, durableSequence: this.durable, segments: this.segments.length, diskBytes: this.diskBytes }, 'journal opened');
  }
}
