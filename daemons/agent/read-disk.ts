// ReadDisk: streams block-aligned ranges of a source disk in pieces of at most
// 1 MiB, cut at 1 MiB boundaries of the disk, each with its block hashes,
// optionally leaving out all-zero pieces, and packing small pieces several to a
// message when the caller reads them so. Reads run a few pieces ahead of the
// stream; the slots they read into, and the stream's back-pressure, pace both.
import type { FileHandle } from 'node:fs/promises';
import fs from 'node:fs/promises';
import { readAll, readAllSync } from '../../shared/file-io';
import type * as grpc from '@grpc/grpc-js';
import type { ByteRange__Output } from '../../generated/drplane/v1/ByteRange';
import type { DiskData } from '../../generated/drplane/v1/DiskData';
import { failedPrecondition, invalidArgument, limitExceeded, outOfRange } from '../../shared/errors';
import { failpoint } from '../../shared/failpoints';
import { blockBytes, extentBytesMax, readRangesPerRequestMax, readSlotsPerCallMax } from '../../shared/limits';
import { blockHashes, hashBytes } from '../../shared/hashing';
import { BufferPool, Encoder, PreEncoded, bytesFieldBytes, messageFieldBytes, uintFieldBytes } from '../../shared/wire';

/** Reads up to this size run inline (synchronously). */
const syncReadBytesMax = 64 * 1024;

/** Checks a request's ranges against the disk: count, alignment, bounds. */
export function validateRanges(ranges: readonly ByteRange__Output[], diskBytes: number, diskPath: string): void {
  if (ranges.length > readRangesPerRequestMax) throw limitExceeded(`${ranges.length} ranges in one ReadDisk request; at most ${readRangesPerRequestMax}`);
  for (const [index, { offset, length }] of ranges.entries()) {
    if (offset % blockBytes !== 0 || length % blockBytes !== 0) throw invalidArgument(`range ${index} (offset ${offset}, length ${length}) is not aligned to ${blockBytes}-byte blocks`);
    if (length === 0) throw invalidArgument(`range ${index} at offset ${offset} is empty`);
    if (offset + length > diskBytes) throw outOfRange(`range ${index} (offset ${offset}, length ${length}) ends past the end of ${diskPath} (${diskBytes} bytes)`);
  }
}

function drained(call: grpc.ServerWritableStream<unknown, DiskData>): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      call.off('drain', done);
      call.off('cancelled', done);
      call.off('close', done);
      resolve();
    };
    call.on('drain', done);
    call.on('cancelled', done);
    call.on('close', done);
  });
}

/** Where a piece's data starts in its buffer: room for DiskData's offset and data headers before it (at most 15 bytes). */
const dataStartInSlot = 16;
/** A reused buffer per piece in flight: the headers, the data, then the block hashes' header and hashes. */
export const readSlotBytes = dataStartInSlot + extentBytesMax + 8 + (extentBytesMax / blockBytes) * hashBytes;
/** Reads of one call that run ahead of the stream. */
const readsAheadMax = 4;
/**
 * Small pieces (a delta's scattered blocks) packed into one message: DiskData.extents, each extent encoded exactly as
 * the piece's own DiskData would be (the same field numbers). One message per 4 KiB block cost both the agent and
 * the process server more than the bytes (5,243 messages for a 1 % delta of 2 GiB).
 */
const packBytes = extentBytesMax;
/** Pack buffers of one call: one being filled, one grpc-js has not taken yet. */
const packBuffersMax = 2;
const extentsField = 4;

/** A pack being filled: the buffer and the bytes used so far. */
interface Pack {
  buffer: Buffer;
  used: number;
}

/** Reads `length` bytes at `offset` into `buffer` at `at`. */
async function readInto(handle: FileHandle, diskPath: string, buffer: Buffer, at: number, offset: number, length: number): Promise<void> {
  // A delta reads thousands of scattered blocks: inline page-cache reads cost microseconds, the thread pool far more.
  const into = buffer.subarray(at, at + length);
  const pastEnd = (end: number) => failedPrecondition(`${diskPath} ended at ${end} while reading to ${offset + length}: did the disk shrink?`);
  if (length <= syncReadBytesMax) readAllSync(handle.fd, into, offset, pastEnd);
  else await readAll(handle, into, offset, pastEnd);
}

/** The pieces of the ranges: at most extentBytesMax each, cut at the extentBytesMax boundaries of the disk. */
export function* pieceRanges(ranges: readonly ByteRange__Output[]): Generator<{ offset: number; length: number }> {
  for (const { offset, length } of ranges) {
    const end = offset + length;
    for (let position = offset; position < end; ) {
      const pieceEnd = Math.min(end, (Math.floor(position / extentBytesMax) + 1) * extentBytesMax);
      yield { offset: position, length: pieceEnd - position };
      position = pieceEnd;
    }
  }
}

/**
 * Encodes DiskData {offset, data, block_hashes} around the data already in
 * the slot at dataStartInSlot, hashing the blocks straight into the slot: the
 * message is a view of the slot, with no copy. Returns undefined for an
 * all-zero piece when those are skipped.
 */
function encodePiece(slot: Buffer, offset: number, length: number, skipZero: boolean): Buffer | undefined {
  const data = slot.subarray(dataStartInSlot, dataStartInSlot + length);
  const hashesLength = (length / blockBytes) * hashBytes;
  const hashesAt = dataStartInSlot + length + bytesFieldBytes(3, hashesLength) - hashesLength;
  const hashes = blockHashes(data, slot, hashesAt).subarray(hashesAt, hashesAt + hashesLength);
  if (skipZero && isAllZeroHashes(hashes)) return undefined;
  const headerBytes = uintFieldBytes(1, offset) + bytesFieldBytes(2, length) - length;
  const start = dataStartInSlot - headerBytes;
  new Encoder(slot, start).uint(1, offset).header(2, length);
  new Encoder(slot, dataStartInSlot + length).header(3, hashesLength);
  return slot.subarray(start, hashesAt + hashesLength);
}

function isAllZeroHashes(hashes: Buffer): boolean {
  for (let at = 0; at < hashes.length; at += 8) if (hashes.readBigUInt64LE(at) !== 0n) return false;
  return true;
}

/**
 * Streams the ranges (already validated) to the call as DiskData messages
 * with their block hashes: the blocks are hashed here, where the data enters
 * drplane, and the master target checks the same hashes where it lands.
 * Each piece is read into a reused slot; a slot is free again once grpc-js has
 * taken the message (the write's callback), so memory is bounded by the slots.
 */
export async function streamRanges(
  call: grpc.ServerWritableStream<unknown, DiskData>,
  diskPath: string,
  ranges: readonly ByteRange__Output[],
  options: { skipZero: boolean; packSmallPieces: boolean },
  onRead: (bytes: number) => void,
  /** How the disk is opened (the agent's confined open for a path under a disk root). */
  openDisk: () => Promise<fs.FileHandle> = () => fs.open(diskPath, 'r'),
): Promise<void> {
  const { skipZero, packSmallPieces } = options;
  const handle = await openDisk();
  const slots = new BufferPool(readSlotBytes, readSlotsPerCallMax);
  const packs = new BufferPool(packBytes, packBuffersMax);
  let pack: Pack | undefined;
  /** Sends the pack being filled, if any; false when the stream wants a drain first. */
  const sendPack = (): boolean => {
    if (!pack) return true;
    const { buffer, used } = pack;
    pack = undefined;
    return call.write(new PreEncoded(buffer.subarray(0, used)) as unknown as DiskData, () => packs.release(buffer));
  };
  const stop = () => {
    slots.close();
    packs.close();
  };
  call.once('cancelled', stop);
  call.once('close', stop);
  const pieces = pieceRanges(ranges);
  const reads: Promise<{ slot: Buffer; offset: number; length: number } | undefined>[] = [];
  const readNext = (): boolean => {
    const next = pieces.next();
    if (next.done) return false;
    const { offset, length } = next.value;
    const read = slots.acquire().then(async (slot) => {
      if (!slot) return undefined;
      await readInto(handle, diskPath, slot, dataStartInSlot, offset, length);
      onRead(length);
      return { slot, offset, length };
    });
    // Awaited in order below; until then a failure must not count as unhandled.
    read.catch(() => undefined);
    reads.push(read);
    return true;
  };
  try {
    while (reads.length < readsAheadMax && readNext());
    while (reads.length > 0) {
      const piece = await reads.shift()!;
      if (!piece || call.cancelled) return;
      readNext();
      await failpoint('read-disk.run-read');
      const message = encodePiece(piece.slot, piece.offset, piece.length, skipZero);
      if (!message) {
        slots.release(piece.slot);
        continue;
      }
      const slot = piece.slot;
      let written = true;
      if (packSmallPieces && piece.length <= syncReadBytesMax) {
        const extentBytes = messageFieldBytes(extentsField, message.length);
        if (pack && pack.used + extentBytes > packBytes) written = sendPack();
        if (!written) await drained(call);
        if (!pack) {
          const buffer = await packs.acquire();
          if (!buffer) return;
          pack = { buffer, used: 0 };
        }
        pack.used = new Encoder(pack.buffer, pack.used).header(extentsField, message.length).position;
        pack.used += message.copy(pack.buffer, pack.used);
        slots.release(slot);
        continue;
      }
      // In order: what is packed goes before a large piece.
      if (!sendPack()) await drained(call);
      if (piece.length <= syncReadBytesMax) {
        // A delta's scattered blocks: a small copy frees the slot now, instead of after grpc-js's write callback, which
        // comes an event-loop turn later and would let only readSlotsPerCallMax small messages out per turn.
        written = call.write(new PreEncoded(Buffer.from(message)) as unknown as DiskData);
        slots.release(slot);
      } else written = call.write(new PreEncoded(message) as unknown as DiskData, () => slots.release(slot));
      if (!written) await drained(call);
      if (call.cancelled) return;
    }
    if (!sendPack()) await drained(call);
  } finally {
    slots.close();
    packs.close();
    call.off('cancelled', stop);
    call.off('close', stop);
    // Reads ahead may still be running: let them finish (or fail) before the handle closes.
    await Promise.allSettled(reads);
    await handle.close();
  }
}
