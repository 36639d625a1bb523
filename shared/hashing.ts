// Block hashing: one xxh64 per 4 KiB block, 0 for an all-zero block, so a
// sparse region and a never-written one compare equal.
import xxhash from 'xxhash-wasm';
import { blockBytes } from './limits';

export const hashBytes = 8;
const zeroBlock = Buffer.alloc(blockBytes);

type Hasher = Awaited<ReturnType<typeof xxhash>>;
let hasher: Hasher | undefined;

/** Loads the WebAssembly hasher once per thread; call before the synchronous functions. */
export async function initHashing(): Promise<void> {
  hasher ??= await xxhash();
}

function h64(data: Uint8Array): bigint {
  if (!hasher) throw new Error('initHashing() was not awaited');
  return hasher.h64Raw(data);
}

export function isZero(data: Uint8Array): boolean {
  for (let offset = 0; offset < data.length; offset += blockBytes) {
    const block = data.subarray(offset, Math.min(offset + blockBytes, data.length));
    if (!zeroBlock.subarray(0, block.length).equals(block)) return false;
  }
  return true;
}

/** The hash of one block (0 for zeros). */
export function blockHash(block: Uint8Array): bigint {
  if (zeroBlock.subarray(0, block.length).equals(block)) return 0n;
  const hash = h64(block);
  // A real block whose xxh64 is 0 (odds 2^-64) would read as zeros; give it another value.
  return hash === 0n ? 1n : hash;
}

/** One 8-byte little-endian hash per block of data (data is whole blocks). */
export function blockHashes(data: Uint8Array, out: Buffer = Buffer.allocUnsafe((data.length / blockBytes) * hashBytes), outOffset = 0): Buffer {
  // The hot loop of the data path: compare against zeros in place (no view per block) and hash a view only for data.
  const buffer = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  for (let offset = 0, index = outOffset; offset < buffer.length; offset += blockBytes, index += hashBytes) {
    const end = Math.min(offset + blockBytes, buffer.length);
    if (buffer.compare(zeroBlock, 0, end - offset, offset, end) === 0) {
      out.writeBigUInt64LE(0n, index);
      continue;
    }
    const hash = h64(buffer.subarray(offset, end));
    out.writeBigUInt64LE(hash === 0n ? 1n : hash, index);
  }
  return out;
}

/** The hash of a tree node from its children's hashes: 0 when every child is 0. */
export function combineHashes(children: Uint8Array): bigint {
  for (let index = 0; index < children.length; index++) {
    if (children[index] !== 0) {
      const hash = h64(children);
      return hash === 0n ? 1n : hash;
    }
  }
  return 0n;
}

/** xxh64 of arbitrary bytes (for whole-image checks in tests and benchmarks). */
export function xxh64(data: Uint8Array): bigint {
  return h64(data);
}
