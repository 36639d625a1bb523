// Disk images for tests: random and zero regions, in-place changes, and hashes
// of whole files.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';

/** A deterministic pseudo-random generator from a seed (mulberry32), so failures can be replayed. */
export function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function randomBytes(length: number, random: () => number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let i = 0; i < length; i += 4) out.writeUInt32LE(Math.floor(random() * 4294967296), i);
  return out;
}

/**
 * Writes an image of `bytes` whose regions alternate random data and zeros
 * (zero regions are left as holes). Returns the byte ranges that hold data.
 */
export function createImage(path: string, bytes: number, seed: number, regionBytes = 4 * 1024 * 1024): { offset: number; length: number }[] {
  const random = seededRandom(seed);
  const fd = fs.openSync(path, 'w');
  const written: { offset: number; length: number }[] = [];
  try {
    fs.ftruncateSync(fd, bytes);
    for (let offset = 0, region = 0; offset < bytes; offset += regionBytes, region++) {
      if (region % 2 === 1) continue;
      const length = Math.min(regionBytes, bytes - offset);
      fs.writeSync(fd, randomBytes(length, random), 0, length, offset);
      written.push({ offset, length });
    }
  } finally {
    fs.closeSync(fd);
  }
  return written;
}

/** Overwrites `share` of the image's 4 KiB blocks with random data; returns the bytes changed. */
export function changeBlocks(path: string, share: number, seed: number, blockBytes = 4096): number {
  const random = seededRandom(seed);
  const size = fs.statSync(path).size;
  const blocks = size / blockBytes;
  const count = Math.max(1, Math.round(blocks * share));
  const chosen = new Set<number>();
  while (chosen.size < count) chosen.add(Math.floor(random() * blocks));
  const fd = fs.openSync(path, 'r+');
  try {
    for (const block of chosen) fs.writeSync(fd, randomBytes(blockBytes, random), 0, blockBytes, block * blockBytes);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return count * blockBytes;
}

export function sha256File(path: string): string {
  const hash = crypto.createHash('sha256');
  const fd = fs.openSync(path, 'r');
  const buffer = Buffer.allocUnsafe(4 * 1024 * 1024);
  try {
    for (;;) {
      const read = fs.readSync(fd, buffer, 0, buffer.length, null);
      if (read === 0) break;
      hash.update(buffer.subarray(0, read));
    }
  } finally {
    fs.closeSync(fd);
  }
  return hash.digest('hex');
}

/** Bytes the file really occupies on disk (st_blocks), to check sparseness. */
export function allocatedBytes(path: string): number {
  return fs.statSync(path).blocks * 512;
}

/** Whether this process may mount a tmpfs (root); the reason to skip otherwise. */
export const whyNoTmpfs: string | false = process.getuid?.() !== 0 && 'mounting a tmpfs needs root';

/**
 * A small retention volume: a tmpfs of `size` (mount's syntax, e.g. "24m")
 * mounted at DIR/retention in a fresh temporary DIR; unmounted and removed at
 * the end of `t`. Root only (whyNoTmpfs).
 */
export function tmpfsVolume(t: { teardown(fn: () => unknown): void }, dir: string, size: string): string {
  const volume = `${dir}/retention`;
  fs.mkdirSync(volume);
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', volume]);
  t.teardown(() => {
    execFileSync('umount', ['-l', volume]);
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return volume;
}
