// The journal's bytes on disk (process server): a segment's header, and each
// change record encoded and decoded. The journal itself is journal.ts.
//
// Record layout (little-endian):
//   u32 record bytes | u32 magic | u64 sequence | i64 time_ms | u64 offset |
//   u8 marker | u8 flags | u16 tag bytes | u32 data bytes | tag | data | u32 crc32 of everything before it
// flags bit 0 (segment version 2): a zero run; `data bytes` is then the run's
// length and no data follows. Version 1 segments (flags always 0) read the same.
// Version 2 is written; an older process server drops a version 2 segment
// (as a torn header) rather than misread a zero run.
import assert from 'node:assert/strict';
import zlib from 'node:zlib';
import { extentBytesMax, nameLengthMax, zeroRecordBytesMax } from '../../shared/limits';
import type { MarkerKind__Output } from '../../generated/drplane/v1/MarkerKind';

export interface JournalRecord {
  sequence: number;
  /** The agent's clock when the write completed on the source, or the marker was made. */
  timeMs: number;
  offset: number;
  marker: MarkerKind__Output;
  tag: string;
  /** Whole blocks for a write; empty for a marker and a zero run. */
  data: Buffer;
  /** A run of zeros of this many bytes, with no data (TRIM, WRITE_ZEROES); 0 or absent otherwise. */
  zeroLength?: number;
}

const recordMagic = 0x524a5244; // "DRJR"
const segmentMagic = 0x534a5244; // "DRJS"
/** The version written; versions 1 (no zero runs) and 2 are read. */
const segmentVersion = 2;
const segmentVersionsRead = new Set([1, 2]);
const recordFlagZeroRun = 0x01;
const recordHeaderBytes = 40;
const recordTrailerBytes = 4;
/** A tag is an operator's name (at most nameLengthMax characters), up to 4 UTF-8 bytes each. */
const tagBytesMax = 4 * nameLengthMax;
export const journalRecordBytesMax = recordHeaderBytes + tagBytesMax + extentBytesMax + recordTrailerBytes;
export const segmentSuffix = '.segment';

const markerCodes: Record<MarkerKind__Output, number> = {
  MARKER_NONE: 0,
  MARKER_CRASH_CONSISTENT: 1,
  MARKER_APP_CONSISTENT: 2,
  MARKER_GROUP_CONSISTENT: 3,
};
const markerByCode = Object.fromEntries(Object.entries(markerCodes).map(([marker, code]) => [code, marker])) as Record<number, MarkerKind__Output>;

/** Encodes one record; the checksum covers every byte before it. */
export function encodeRecord(record: JournalRecord): Buffer {
  const tag = Buffer.from(record.tag, 'utf8');
  const zeroLength = record.zeroLength ?? 0;
  assert.ok(tag.length <= tagBytesMax && record.data.length <= extentBytesMax && zeroLength <= zeroRecordBytesMax, 'records are checked before they are journaled');
  assert.ok(zeroLength === 0 || record.data.length === 0, 'a zero run has no data');
  const bytes = recordHeaderBytes + tag.length + record.data.length + recordTrailerBytes;
  const out = Buffer.allocUnsafe(bytes);
  out.writeUInt32LE(bytes, 0);
  out.writeUInt32LE(recordMagic, 4);
  out.writeBigUInt64LE(BigInt(record.sequence), 8);
  out.writeBigInt64LE(BigInt(record.timeMs), 16);
  out.writeBigUInt64LE(BigInt(record.offset), 24);
  out.writeUInt8(markerCodes[record.marker], 32);
  out.writeUInt8(zeroLength > 0 ? recordFlagZeroRun : 0, 33);
  out.writeUInt16LE(tag.length, 34);
  out.writeUInt32LE(zeroLength > 0 ? zeroLength : record.data.length, 36);
  tag.copy(out, recordHeaderBytes);
  record.data.copy(out, recordHeaderBytes + tag.length);
  out.writeUInt32LE(zlib.crc32(out.subarray(0, bytes - recordTrailerBytes)), bytes - recordTrailerBytes);
  return out;
}

/**
 * The same bytes as encodeRecord, in pieces for writev: the header and tag,
 * the record's data as it is (not copied: a group commit must not copy every
 * byte it journals) and the checksum. The data must stay untouched until written.
 */
export function encodeRecordParts(record: JournalRecord): { parts: Buffer[]; bytes: number } {
  const tag = record.tag.length > 0 ? Buffer.from(record.tag, 'utf8') : undefined;
  const tagBytes = tag?.length ?? 0;
  const zeroLength = record.zeroLength ?? 0;
  assert.ok(tagBytes <= tagBytesMax && record.data.length <= extentBytesMax && zeroLength <= zeroRecordBytesMax, 'records are checked before they are journaled');
  assert.ok(zeroLength === 0 || record.data.length === 0, 'a zero run has no data');
  const bytes = recordHeaderBytes + tagBytes + record.data.length + recordTrailerBytes;
  // Header, tag and checksum in one small allocation (Node's pool serves these).
  const small = Buffer.allocUnsafe(recordHeaderBytes + tagBytes + recordTrailerBytes);
  small.writeUInt32LE(bytes, 0);
  small.writeUInt32LE(recordMagic, 4);
  writeUint64(small, 8, record.sequence);
  writeInt64(small, 16, record.timeMs);
  writeUint64(small, 24, record.offset);
  small.writeUInt8(markerCodes[record.marker], 32);
  small.writeUInt8(zeroLength > 0 ? recordFlagZeroRun : 0, 33);
  small.writeUInt16LE(tagBytes, 34);
  small.writeUInt32LE(zeroLength > 0 ? zeroLength : record.data.length, 36);
  tag?.copy(small, recordHeaderBytes);
  const head = small.subarray(0, recordHeaderBytes + tagBytes);
  const trailer = small.subarray(recordHeaderBytes + tagBytes);
  let crc = zlib.crc32(head);
  if (record.data.length > 0) crc = zlib.crc32(record.data, crc);
  trailer.writeUInt32LE(crc, 0);
  return { parts: record.data.length > 0 ? [head, record.data, trailer] : [head, trailer], bytes };
}

/** A u64 field without a BigInt (sequences and offsets are safe integers). */
function writeUint64(buffer: Buffer, at: number, value: number): void {
  buffer.writeUInt32LE(value % 0x1_0000_0000, at);
  buffer.writeUInt32LE(Math.floor(value / 0x1_0000_0000), at + 4);
}

/** An i64 field (two's complement) without a BigInt. */
function writeInt64(buffer: Buffer, at: number, value: number): void {
  if (value >= 0) return writeUint64(buffer, at, value);
  buffer.writeBigInt64LE(BigInt(value), at);
}

/**
 * Decodes the record at `position` of `buffer`: the record and its size, or
 * the reason it is not a whole, intact record (a torn or corrupt tail).
 */
export function decodeRecord(buffer: Buffer, position: number): { record: JournalRecord; bytes: number } | { problem: string } {
  if (buffer.length - position < recordHeaderBytes + recordTrailerBytes) return { problem: 'a record header cut short' };
  const bytes = buffer.readUInt32LE(position);
  if (buffer.readUInt32LE(position + 4) !== recordMagic) return { problem: 'no record magic' };
  const flags = buffer.readUInt8(position + 33);
  if (flags & ~recordFlagZeroRun) return { problem: `a record with unknown flags 0x${flags.toString(16)}` };
  const tagBytes = buffer.readUInt16LE(position + 34);
  const lengthField = buffer.readUInt32LE(position + 36);
  const zeroLength = flags & recordFlagZeroRun ? lengthField : 0;
  const dataBytes = zeroLength > 0 ? 0 : lengthField;
  if (flags & recordFlagZeroRun && (zeroLength === 0 || zeroLength > zeroRecordBytesMax)) return { problem: `a zero run of impossible length (${zeroLength} bytes)` };
  if (tagBytes > tagBytesMax || dataBytes > extentBytesMax || bytes !== recordHeaderBytes + tagBytes + dataBytes + recordTrailerBytes) return { problem: `a record of impossible size (${bytes} bytes)` };
  if (buffer.length - position < bytes) return { problem: 'a record cut short' };
  const stored = buffer.readUInt32LE(position + bytes - recordTrailerBytes);
  if (zlib.crc32(buffer.subarray(position, position + bytes - recordTrailerBytes)) !== stored) return { problem: 'a record whose checksum does not match' };
  const marker = markerByCode[buffer.readUInt8(position + 32)];
  if (!marker) return { problem: 'a record with an unknown marker' };
  const tagStart = position + recordHeaderBytes;
  return {
    bytes,
    record: {
      sequence: Number(buffer.readBigUInt64LE(position + 8)),
      timeMs: Number(buffer.readBigInt64LE(position + 16)),
      offset: Number(buffer.readBigUInt64LE(position + 24)),
      marker,
      tag: buffer.toString('utf8', tagStart, tagStart + tagBytes),
      data: buffer.subarray(tagStart + tagBytes, tagStart + tagBytes + dataBytes),
      zeroLength,
    },
  };
}

export function encodeSegmentHeader(captureId: string, firstSequence: number): Buffer {
  const id = Buffer.from(captureId, 'utf8');
  const out = Buffer.alloc(18 + id.length + 4);
  out.writeUInt32LE(segmentMagic, 0);
  out.writeUInt32LE(segmentVersion, 4);
  out.writeBigUInt64LE(BigInt(firstSequence), 8);
  out.writeUInt16LE(id.length, 16);
  id.copy(out, 18);
  out.writeUInt32LE(zlib.crc32(out.subarray(0, out.length - 4)), out.length - 4);
  return out;
}

export function decodeSegmentHeader(buffer: Buffer): { captureId: string; firstSequence: number; bytes: number } | undefined {
  if (buffer.length < 22 || buffer.readUInt32LE(0) !== segmentMagic || !segmentVersionsRead.has(buffer.readUInt32LE(4))) return undefined;
  const idBytes = buffer.readUInt16LE(16);
  const bytes = 18 + idBytes + 4;
  if (buffer.length < bytes || zlib.crc32(buffer.subarray(0, bytes - 4)) !== buffer.readUInt32LE(bytes - 4)) return undefined;
  return { captureId: buffer.toString('utf8', 18, 18 + idBytes), firstSequence: Number(buffer.readBigUInt64LE(8)), bytes };
}

export const segmentName = (firstSequence: number) => `${String(firstSequence).padStart(16, '0')}${segmentSuffix}`;
