// Extent encoding on the wire. LZ4 where it pays; raw where it does not. A
// 4 KiB sample decides first, so random data costs almost nothing to skip
// (lz4 on random data runs at 0.2 GB/s, MEASURED.md).
import { compressSync, uncompressSync } from 'lz4-napi';
import { corrupt, invalidArgument } from './errors';
import { blockBytes } from './limits';
import { zeroBytes } from './zeros';

export type CodecName = 'CODEC_NONE' | 'CODEC_LZ4';

/** The plain size lz4-napi puts before each compressed block. */
const lz4SizePrefixBytes = 4;

/** Compressed output must be at most this share of the input to be worth sending. */
const worthwhileRatio = 0.875;

export function encode(plain: Buffer, allowCompression: boolean): { codec: CodecName; data: Buffer } {
  if (!allowCompression || plain.length < 2 * blockBytes) return { codec: 'CODEC_NONE', data: plain };
  const sampleStart = Math.floor(plain.length / 2 / blockBytes) * blockBytes;
  const sample = compressSync(plain.subarray(sampleStart, sampleStart + blockBytes));
  if (sample.length > blockBytes * worthwhileRatio) return { codec: 'CODEC_NONE', data: plain };
  const packed = compressSync(plain);
  if (packed.length > plain.length * worthwhileRatio) return { codec: 'CODEC_NONE', data: plain };
  return { codec: 'CODEC_LZ4', data: packed };
}

/**
 * Decodes an extent's data; throws corrupt() when it does not decode to `length` bytes. A CODEC_ZERO extent
 * decodes to a view of one shared buffer of zeros, which the caller must never write into.
 */
export function decode(codec: string, data: Buffer, length: number): Buffer {
  switch (codec) {
    case 'CODEC_NONE':
      if (data.length !== length) throw corrupt(`extent data has ${data.length} bytes, its header says ${length}`);
      return data;
    case 'CODEC_LZ4': {
      // lz4-napi's blocks start with the plain size (u32, little-endian), and uncompressSync allocates that
      // much before it decodes a byte: 8 hostile bytes would cost 4 GiB. The prefix must equal the extent's
      // length, which the caller has bounded (extentBytesMax), before anything is allocated.
      if (data.length < lz4SizePrefixBytes) throw corrupt(`extent data has ${data.length} bytes: too short for lz4 (a ${lz4SizePrefixBytes}-byte size prefix first)`);
      const declaredBytes = data.readUInt32LE(0);
      if (declaredBytes !== length) throw corrupt(`extent's lz4 data declares ${declaredBytes} plain bytes, its header says ${length}: refused before decoding`);
      let plain: Buffer;
      try {
        plain = uncompressSync(data);
      } catch (error) {
        throw corrupt(`extent data does not decode as lz4: ${(error as Error).message}`);
      }
      if (plain.length !== length) throw corrupt(`extent decodes to ${plain.length} bytes, its header says ${length}`);
      return plain;
    }
    case 'CODEC_ZERO':
      // A run of zeros: nothing on the wire; the plain bytes are a view of the shared zeros (read only), length
      // bounded by the caller (extentBytesMax).
      if (data.length !== 0) throw corrupt(`a CODEC_ZERO extent carries ${data.length} bytes of data, it must carry none`);
      return zeroBytes(length);
    default:
      throw invalidArgument(`unknown codec ${codec}`);
  }
}
