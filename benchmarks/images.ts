// The benchmark's disk images, made from fixed seeds so a run can be repeated
// byte for byte. The generators are the tests' own (test/helpers/disks.ts).
import fs from 'node:fs';
import path from 'node:path';
import { changeBlocks, createImage, randomBytes, seededRandom, sha256File, allocatedBytes } from '../test/helpers/disks';

export { sha256File, allocatedBytes };

/** The unit the delta cases change, and drplane's block. */
export const changeBlockBytes = 4096;
/** Pieces in which the random image is written. */
const writeChunkBytes = 4 * 1024 * 1024;
/** Random and zero regions of the half-empty image alternate at this size (the helper's default). */
export const halfEmptyRegionBytes = 4 * 1024 * 1024;

export interface Image {
  path: string;
  bytes: number;
  /** Bytes that are not holes (data regions), i.e. what must really be copied. */
  dataBytes: number;
  /** Bytes the file occupies on disk. */
  allocatedBytes: number;
}

/** An image of `bytes` random bytes. */
export function writeRandomImage(file: string, bytes: number, seed: number): Image {
  const random = seededRandom(seed);
  const fd = fs.openSync(file, 'w');
  try {
    for (let offset = 0; offset < bytes; offset += writeChunkBytes) {
      const length = Math.min(writeChunkBytes, bytes - offset);
      fs.writeSync(fd, randomBytes(length, random), 0, length, offset);
    }
  } finally {
    fs.closeSync(fd);
  }
  return { path: file, bytes, dataBytes: bytes, allocatedBytes: allocatedBytes(file) };
}

/** An image whose 4 MiB regions alternate random data and holes. */
export function writeHalfEmptyImage(file: string, bytes: number, seed: number): Image {
  const written = createImage(file, bytes, seed, halfEmptyRegionBytes);
  const dataBytes = written.reduce((sum, range) => sum + range.length, 0);
  return { path: file, bytes, dataBytes, allocatedBytes: allocatedBytes(file) };
}

/** A full copy (not a reflink or a hole-punched copy: the source is all data). */
export function copyImage(source: string, target: string): void {
  fs.mkdirSync(path.dirname(target), { recursive: true });
  fs.rmSync(target, { force: true });
  fs.copyFileSync(source, target);
}

/** Overwrites `share` of the image's 4 KiB blocks with new random data; returns the bytes changed. */
export function changeImage(file: string, share: number, seed: number): number {
  return changeBlocks(file, share, seed, changeBlockBytes);
}
