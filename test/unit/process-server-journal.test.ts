// Goal: the process server's journal keeps every record it acknowledged, in
// order. Appends resolve only once durable (group commit); reads come from
// memory or, past memoryQueueBytesMax, from the segments (spill); a torn or
// corrupt tail at any byte is cut on open and the records before it survive;
// release deletes applied segments and the journal still knows where it got
// to; a new capture starts a new journal. Prints its seed.
import fs from 'node:fs';
import zlib from 'node:zlib';
import path from 'node:path';
import pino from 'pino';
import t, { type Test } from 'tap';
import { Journal } from '../../daemons/process-server/journal';
import { encodeRecord, encodeRecordParts, type JournalRecord } from '../../daemons/process-server/journal-records';
import { tempDir } from '../helpers/daemons';
import { randomBytes, seededRandom } from '../helpers/disks';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 1_000_000);
const log = pino({ level: 'silent' });
const KiB = 1024;
const segmentBytes = 256 * KiB;

function makeRecords(random: () => number, from: number, count: number, withZeroRuns = true): JournalRecord[] {
  const records: JournalRecord[] = [];
  for (let index = 0; index < count; index++) {
    const sequence = from + index;
    const kind = random();
    if (kind < 0.1) {
      records.push({ sequence, timeMs: 1_700_000_000_000 + sequence, offset: 0, marker: kind < 0.05 ? 'MARKER_APP_CONSISTENT' : 'MARKER_GROUP_CONSISTENT', tag: `tag-${sequence}-é`, data: Buffer.alloc(0) });
    } else if (kind < 0.2 && withZeroRuns) {
      // A run of zeros (TRIM, WRITE_ZEROES): no data, up to 1 MiB.
      records.push({ sequence, timeMs: 1_700_000_000_000 + sequence, offset: Math.floor(random() * 1000) * 4096, marker: 'MARKER_NONE', tag: '', data: Buffer.alloc(0), zeroLength: (1 + Math.floor(random() * 256)) * 4096 });
    } else {
      const blocks = 1 + Math.floor(random() * 8);
      records.push({ sequence, timeMs: 1_700_000_000_000 + sequence, offset: Math.floor(random() * 1000) * 4096, marker: 'MARKER_NONE', tag: '', data: randomBytes(blocks * 4096, random) });
    }
  }
  return records;
}

const open = (dir: string, memoryBytesMax = 64 * KiB) => Journal.open(dir, { segmentBytes, memoryBytesMax, log });

function same(t: Test, actual: JournalRecord[], expected: JournalRecord[], what: string): void {
  t.equal(actual.length, expected.length, `${what}: ${expected.length} records`);
  const mismatch = expected.findIndex((record, index) => {
    const other = actual[index];
    return !other || other.sequence !== record.sequence || other.timeMs !== record.timeMs || other.offset !== record.offset || other.marker !== record.marker || other.tag !== record.tag || !other.data.equals(record.data) || (other.zeroLength ?? 0) !== (record.zeroLength ?? 0);
  });
  t.equal(mismatch, -1, `${what}: every record equal${mismatch >= 0 ? ` (first difference at ${expected[mismatch].sequence})` : ''}`);
}

async function readAll(journal: Journal, from: number): Promise<JournalRecord[]> {
  const out: JournalRecord[] = [];
  for (let sequence = from; sequence <= journal.durableSequence; ) {
    const part = await journal.read(sequence, 100 * KiB, 50);
    if (part.length === 0) break;
    out.push(...part);
    sequence += part.length;
  }
  return out;
}

const segmentFiles = (dir: string) => fs.readdirSync(dir).filter((name) => name.endsWith('.segment')).sort();

t.test('append, group commit, read from memory and spill, reopen', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const journal = await open(dir);
  t.equal(journal.captureId, '');
  await journal.reset('capture-a', 5);
  t.equal(journal.nextSequence, 5);
  const records = makeRecords(random, 5, 400);
  // Many appends without waiting: they share fdatasyncs and resolve in order.
  const resolved: number[] = [];
  await Promise.all(
    Array.from({ length: 40 }, (_, index) => journal.append(records.slice(index * 10, index * 10 + 10)).then(() => resolved.push(index))),
  );
  t.same(resolved, [...resolved].sort((a, b) => a - b), 'appends resolve in order');
  t.equal(journal.durableSequence, 404);
  t.ok(segmentFiles(dir).length > 3, `${segmentFiles(dir).length} segments of at most ${segmentBytes} bytes`);
  t.ok(journal.memoryBytes <= 64 * KiB, `memory holds ${journal.memoryBytes} bytes, at most the bound`);
  same(t, await readAll(journal, 5), records, 'read back (memory and spill)');
  // At least one record however small the byte bound; past the first, only records without data (markers) still fit.
  const small = await journal.read(200, 1, 10);
  same(t, small.slice(0, 1), [records[195]], 'a read returns at least one record');
  t.ok(small.slice(1).every((record) => record.data.length === 0), `the records after the first carry no data (${small.length} read)`);
  const totalData = records.reduce((sum, record) => sum + record.data.length, 0);
  t.equal(journal.dataBytesAfter(4), totalData, 'backlog of everything');
  t.equal(journal.dataBytesAfter(104), records.slice(100).reduce((sum, record) => sum + record.data.length, 0), 'backlog after 104');
  await journal.close();

  const again = await open(dir);
  t.equal(again.captureId, 'capture-a');
  t.equal(again.firstSequence, 5);
  t.equal(again.nextSequence, 405, 'reopened where it ended');
  same(t, await readAll(again, 5), records, 'read back after reopen');
  const more = makeRecords(random, 405, 20);
  await again.append(more);
  same(t, await readAll(again, 395), [...records.slice(390), ...more], 'appends after reopen follow on');
  await again.close();
});

t.test('a torn or corrupt tail is cut at any byte; the records before it survive', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed + 1);
  const root = tempDir();
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const dir = path.join(root, 'journal');
  const journal = await open(dir);
  await journal.reset('capture-b', 1);
  const records = makeRecords(random, 1, 120);
  for (let index = 0; index < records.length; index += 15) await journal.append(records.slice(index, index + 15));
  await journal.close();
  const files = segmentFiles(dir);
  const pristine = path.join(root, 'pristine');
  fs.cpSync(dir, pristine, { recursive: true });
  const lastFile = files[files.length - 1];
  const lastSize = fs.statSync(path.join(dir, lastFile)).size;
  t.ok(files.length >= 2, `${files.length} segments`);
  const firstOfLast = Number(lastFile.split('.')[0]);
  // Where each record of the last segment ends: after a cut at byte P, exactly the records ending at or before P survive.
  const lastRecordBytes = records.slice(firstOfLast - 1).map((record) => encodeRecord(record).length);
  const ends: number[] = [];
  lastRecordBytes.reduce((position, bytes) => (ends.push(position + bytes), position + bytes), lastSize - lastRecordBytes.reduce((a, b) => a + b, 0));

  for (let trial = 0; trial < 12; trial++) {
    const work = path.join(root, `trial-${trial}`);
    fs.cpSync(pristine, work, { recursive: true });
    const position = Math.floor(random() * lastSize);
    const corruptInstead = trial % 3 === 2;
    const file = path.join(work, lastFile);
    if (corruptInstead) {
      const fd = fs.openSync(file, 'r+');
      const byte = Buffer.alloc(1);
      fs.readSync(fd, byte, 0, 1, position);
      byte[0] ^= 0x5a;
      fs.writeSync(fd, byte, 0, 1, position);
      fs.closeSync(fd);
    } else {
      fs.truncateSync(file, position);
    }
    const cut = await open(work);
    const survived = cut.durableSequence;
    const expected = firstOfLast - 1 + ends.filter((end) => end <= position).length;
    t.equal(survived, expected, `${corruptInstead ? 'flipped' : 'truncated at'} byte ${position} of ${lastSize}: records 1..${survived} survive`);
    same(t, await readAll(cut, 1), records.slice(0, survived), `trial ${trial}: the surviving prefix is intact`);
    const next = makeRecords(random, survived + 1, 5);
    await cut.append(next);
    await cut.close();
    const reopened = await open(work);
    same(t, await readAll(reopened, 1), [...records.slice(0, survived), ...next], `trial ${trial}: appends after the cut survive another reopen`);
    await reopened.close();
  }
});

t.test('release deletes applied segments; the journal still knows where it got to', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed + 2);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const journal = await open(dir);
  await journal.reset('capture-c', 1);
  const records = Array.from({ length: 300 }, (_, index): JournalRecord => ({ sequence: index + 1, timeMs: index, offset: index * 4096, marker: 'MARKER_NONE', tag: '', data: randomBytes(32 * KiB, random) }));
  await journal.append(records);
  const before = segmentFiles(dir).length;
  const diskBefore = journal.diskBytes;
  await journal.release(150);
  t.ok(segmentFiles(dir).length < before, `${before} segments, ${segmentFiles(dir).length} after releasing half`);
  t.ok(journal.diskBytes < diskBefore);
  t.ok(journal.firstRetainedSequence <= 151, 'record 151 is still held');
  same(t, await readAll(journal, 151), records.slice(150), 'the unreleased records read back');
  await journal.release(300);
  t.equal(segmentFiles(dir).length, 0, 'everything applied: no segment left');
  t.equal(journal.diskBytes, 0);
  await journal.close();
  const reopened = await open(dir);
  t.equal(reopened.nextSequence, 301, 'an empty journal still knows the next sequence');
  t.equal(reopened.captureId, 'capture-c');
  const more = makeRecords(random, 301, 10);
  await reopened.append(more);
  same(t, await readAll(reopened, 301), more, 'appends after an empty reopen');
  await reopened.close();
});

t.test('a new capture starts a new journal; a crash during reset leaves no old segment', async (t) => {
  const random = seededRandom(seed + 3);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const journal = await open(dir);
  await journal.reset('capture-d', 1);
  await journal.append(makeRecords(random, 1, 100));
  const oldSegments = segmentFiles(dir).map((name) => [name, fs.readFileSync(path.join(dir, name))] as const);
  await journal.reset('capture-e', 40);
  t.equal(journal.durableSequence, 39);
  t.equal(segmentFiles(dir).length, 0, 'the old capture is gone');
  const fresh = makeRecords(random, 40, 10);
  await journal.append(fresh);
  await journal.close();
  // As if the process died after the new journal.json but before the old segments were deleted.
  for (const [name, content] of oldSegments) if (!fs.existsSync(path.join(dir, name))) fs.writeFileSync(path.join(dir, name), content);
  const reopened = await open(dir);
  t.equal(reopened.captureId, 'capture-e');
  same(t, await readAll(reopened, 40), fresh, 'only the new capture is read');
  t.equal(reopened.nextSequence, 50);
  await reopened.destroy();
  t.notOk(fs.existsSync(dir), 'destroy removes the directory');
});

t.test('a read that spills stays right while appends push records out of memory', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed + 4);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const journal = await open(dir);
  await journal.reset('capture-f', 1);
  const records = makeRecords(random, 1, 200);
  await journal.append(records);
  for (let round = 0; round < 5; round++) {
    // The read starts on disk and continues in memory; the append meanwhile drops the oldest records from memory.
    const reading = journal.read(1 + round * 10, 64 * 1024 * 1024, 10_000);
    const more = makeRecords(random, journal.nextSequence, 30);
    const appended = journal.append(more);
    records.push(...more);
    const got = await reading;
    await appended;
    same(t, got, records.slice(round * 10, round * 10 + got.length), `round ${round}: ${got.length} records read while appending`);
  }
  await journal.close();
});

t.test('a record written in pieces (header, its data uncopied, checksum) has the bytes of encodeRecord', async (t) => {
  const random = seededRandom(seed + 7);
  const records = [
    ...makeRecords(random, 1, 50),
    { sequence: 2 ** 40 + 3, timeMs: 2 ** 33 + 5, offset: 2 ** 45, marker: 'MARKER_NONE' as const, tag: '', data: randomBytes(4096, random) },
    { sequence: 7, timeMs: -5, offset: 0, marker: 'MARKER_CRASH_CONSISTENT' as const, tag: '', data: Buffer.alloc(0) },
  ];
  for (const record of records) {
    const { parts, bytes } = encodeRecordParts(record);
    const whole = encodeRecord(record);
    t.equal(bytes, whole.length, `record ${record.sequence}: size`);
    t.ok(Buffer.concat(parts).equals(whole), `record ${record.sequence}: bytes`);
    if (record.data.length > 0) t.equal(parts[1], record.data, `record ${record.sequence}: the data is not copied`);
  }
});

t.test('segments of version 1 (before zero runs) are read back after a restart; zero runs survive a reopen', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const journal = await open(dir);
  await journal.reset('capture-old', 1);
  const old = makeRecords(random, 1, 120, false);
  await journal.append(old);
  await journal.close();
  // What a process server before zero runs wrote: the same records, in segments whose header says version 1.
  for (const name of segmentFiles(dir)) {
    const file = path.join(dir, name);
    const content = fs.readFileSync(file);
    t.equal(content.readUInt32LE(4), 2, `${name} was written as version 2`);
    content.writeUInt32LE(1, 4);
    const headerBytes = 18 + content.readUInt16LE(16) + 4;
    content.writeUInt32LE(zlib.crc32(content.subarray(0, headerBytes - 4)), headerBytes - 4);
    fs.writeFileSync(file, content);
  }
  const reopened = await open(dir);
  t.equal(reopened.nextSequence, 121, 'the version 1 segments are kept whole');
  same(t, await readAll(reopened, 1), old, 'every record of the version 1 segments reads back');
  const zeros: JournalRecord[] = [
    { sequence: 121, timeMs: 1_700_000_000_121, offset: 0, marker: 'MARKER_NONE', tag: '', data: Buffer.alloc(0), zeroLength: 1024 * 1024 },
    { sequence: 122, timeMs: 1_700_000_000_122, offset: 8192, marker: 'MARKER_NONE', tag: '', data: Buffer.alloc(0), zeroLength: 4096 },
  ];
  await reopened.append(zeros);
  await reopened.close();
  const again = await open(dir, 1);
  same(t, await readAll(again, 100), [...old.slice(99), ...zeros], 'version 1 records and zero runs after them read back after another reopen (from the segments)');
  t.equal(again.dataBytesAfter(120), 0, 'a zero run holds no data bytes in the journal');
  await again.close();
});

t.test('zero runs count a nominal cost against the memory bound, so a backlog of them spills like data', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const journal = await open(dir, 16 * KiB);
  await journal.reset('capture-zeros', 1);
  const zeros: JournalRecord[] = Array.from({ length: 500 }, (_, index) => ({ sequence: index + 1, timeMs: 1_700_000_000_000 + index, offset: index * 4096, marker: 'MARKER_NONE', tag: '', data: Buffer.alloc(0), zeroLength: 1024 * 1024 }));
  await journal.append(zeros);
  t.ok(journal.memoryBytes <= 16 * KiB, `500 zero runs keep ${journal.memoryBytes} bytes counted in memory, at most the bound`);
  same(t, await readAll(journal, 1), zeros, 'all of them read back (memory and spill)');
  await journal.close();
});
