// A piece of a disk (whole blocks, with one hash per block) cut into the
// extents a batch carries: all-zero blocks left out (thin disks stay thin)
// unless they must travel, each run of blocks encoded (LZ4 where it pays).
// Used by the hash pool's workers (pieces they hash themselves) and by the
// process server for pieces the agent already hashed.
import { encode } from './codec';
import { hashBytes } from './hashing';
import { blockBytes } from './limits';

export interface PreparedExtent {
  offset: number;
  length: number;
  /** CODEC_ZERO: a run of zeros, with empty data and empty block hashes (a zero-run change record). */
  codec: 'CODEC_NONE' | 'CODEC_LZ4' | 'CODEC_ZERO';
  data: Uint8Array;
  blockHashes: Uint8Array;
}

/**
 * Appends the extents of one piece to `out`; returns the bytes of zero blocks
 * left out. With keepZero the piece is one extent, zero blocks included (they
 * compress to almost nothing): a delta must send a block that became zero.
 * Raw extents are views of the piece; compressed ones have buffers of their own.
 */
export function extentsOfPiece(offset: number, data: Buffer, hashes: Buffer, compress: boolean, keepZero: boolean, out: PreparedExtent[]): number {
  let zeroBytes = 0;
  let runStart = -1;
  const blocks = data.length / blockBytes;
  for (let block = 0; block <= blocks; block++) {
    const zero = block === blocks || (!keepZero && hashes.readBigUInt64LE(block * hashBytes) === 0n);
    if (!zero && runStart < 0) runStart = block;
    if (zero && runStart >= 0) {
      const plain = data.subarray(runStart * blockBytes, block * blockBytes);
      const { codec, data: encoded } = encode(plain, compress);
      out.push({ offset: offset + runStart * blockBytes, length: plain.length, codec, data: encoded, blockHashes: hashes.subarray(runStart * hashBytes, block * hashBytes) });
      runStart = -1;
    }
    if (zero && block < blocks) zeroBytes += blockBytes;
  }
  return zeroBytes;
}
