// The master target's retention store (LMDB): replica records, batch state,
// before-images, recovery points and the replicas' block-hash index. Keys are
// tuples (lmdb's ordered-binary encoding) that sort in the order they are
// scanned: before-images by (disk, sequence, extent), points by (disk,
// sequence), hash pages by (disk, page), batches by (disk, sequence).
import path from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import { blockBytes } from '../../shared/limits';
import { hashBytes } from '../../shared/hashing';

/** Blocks per hash-index page: one page covers 1 MiB of disk in 2 KiB of hashes. */
export const blocksPerHashPage = 256;
export const hashPageBytes = blocksPerHashPage * hashBytes;

export interface ReplicaRecord {
  diskId: string;
  path: string;
  diskBytes: number;
  epoch: number;
  appliedSequence: number;
  syncId: string;
  syncCursor: number;
  syncComplete: boolean;
  recoveryPointCount: number;
  latestRecoveryPointId: string;
  createdTimeMs: number;
  /** False while the hash index does not describe the replica (adopted disk before its rescan). */
  hashIndexTrusted: boolean;
}

export type BatchState = 'applying' | 'applied';

export interface BatchRecord {
  state: BatchState;
  extents: { offset: number; length: number }[];
  appliedTimeMs: number;
}

export interface RecoveryPointRecord {
  id: string;
  diskId: string;
  sequence: number;
  kind: 'CRASH_CONSISTENT' | 'APP_CONSISTENT' | 'GROUP_CONSISTENT';
  sourceTimeMs: number;
  appliedTimeMs: number;
  tag: string;
  syncId: string;
}

/**
 * A before-image: the old bytes of the range an extent overwrites, or a marker
 * that none of it was ever written (zeros). Keyed by (disk, sequence, extent
 * index), not by offset: two extents of one batch may start at the same offset.
 */
export type BeforeImage = { offset: number; zero: true; length: number } | { offset: number; zero: false; data: Buffer };

const zeroMarker = 0;
const dataMarker = 1;
/** marker (1 byte) + offset (6 bytes: up to 256 TiB, above diskBytesMax). */
const headerBytes = 7;

export function encodeBeforeImage(image: BeforeImage): Buffer {
  if (image.zero) {
    const out = Buffer.alloc(headerBytes + 4);
    out[0] = zeroMarker;
    out.writeUIntLE(image.offset, 1, 6);
    out.writeUInt32LE(image.length, headerBytes);
    return out;
  }
  const out = Buffer.allocUnsafe(headerBytes + image.data.length);
  out[0] = dataMarker;
  out.writeUIntLE(image.offset, 1, 6);
  image.data.copy(out, headerBytes);
  return out;
}

export function decodeBeforeImage(value: Buffer): BeforeImage {
  const offset = value.readUIntLE(1, 6);
  if (value[0] === zeroMarker) return { offset, zero: true, length: value.readUInt32LE(headerBytes) };
  return { offset, zero: false, data: value.subarray(headerBytes) };
}

export class RetentionStore {
  readonly root: RootDatabase;
  readonly replicas: Database<ReplicaRecord, string>;
  readonly batches: Database<BatchRecord, [string, number]>;
  readonly beforeImages: Database<Buffer, [string, number, number]>;
  readonly points: Database<RecoveryPointRecord, [string, number]>;
  readonly hashPages: Database<Buffer, [string, number]>;

  constructor(directory: string) {
    this.root = open({
      path: path.join(directory, 'retention.lmdb'),
      // Durable commits: a commit's promise resolves only once the data is on disk,
      // because the replica is written after the before-images commit (invariant 4).
      noSync: false,
      overlappingSync: false,
      compression: false,
      maxDbs: 16,
    });
    this.replicas = this.root.openDB({ name: 'replicas' });
    this.batches = this.root.openDB({ name: 'batches' });
    this.beforeImages = this.root.openDB({ name: 'before-images', encoding: 'binary' });
    this.points = this.root.openDB({ name: 'recovery-points' });
    this.hashPages = this.root.openDB({ name: 'hash-pages', encoding: 'binary' });
  }

  /** The block hashes of a whole disk from the index (absent pages are never-written blocks: 0). */
  readLeaves(diskId: string, diskBytes: number): Buffer {
    const blocks = Math.ceil(diskBytes / blockBytes);
    const leaves = Buffer.alloc(blocks * hashBytes);
    for (const { key, value } of this.hashPages.getRange({ start: [diskId, 0], end: [diskId, Number.MAX_SAFE_INTEGER] })) {
      const start = key[1] * hashPageBytes;
      value.copy(leaves, start, 0, Math.min(value.length, leaves.length - start));
    }
    return leaves;
  }

  /** Whether any block of [offset, offset+length) has a non-zero hash (was written with data). */
  anyWritten(diskId: string, offset: number, length: number): boolean {
    const firstBlock = offset / blockBytes;
    const lastBlock = (offset + length) / blockBytes;
    for (let page = Math.floor(firstBlock / blocksPerHashPage); page * blocksPerHashPage < lastBlock; page++) {
      const value = this.hashPages.getBinary([diskId, page]);
      if (!value) continue;
      const from = Math.max(firstBlock, page * blocksPerHashPage) - page * blocksPerHashPage;
      const to = Math.min(lastBlock, (page + 1) * blocksPerHashPage) - page * blocksPerHashPage;
      for (let block = from; block < to; block++) {
        if (value.readBigUInt64LE(block * hashBytes) !== 0n) return true;
      }
    }
    return false;
  }

  /** Size of the store's file on disk. */
  bytesUsed(): number {
    const stats = this.root.getStats() as { treeBranchPageCount?: number; pageSize?: number; lastPageNumber?: number };
    return (stats.lastPageNumber ?? 0) * (stats.pageSize ?? 4096);
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}
