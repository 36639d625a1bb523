// The master target's retention store (LMDB): replica records, batch state,
// before-images, recovery points and the replicas' block-hash index. Keys are
// tuples (lmdb's ordered-binary encoding) that sort in the order they are
// scanned: before-images by (disk, sequence, extent), points by (disk,
// sequence), hash pages by (disk, page), batches by (disk, sequence).
// A replica record is changed by apply (under the disk's lock) and by the
// pruner (without it), so every change is a read-modify-write inside a
// transaction (updateReplica).
//
// The store owns its tables: the rest of the master target asks for
// operations (begin a batch with its before-images, commit it applied with its
// point and hash pages, forget a rolled-back batch, prune, read a point's
// before-images, delete a retired disk's keys), each one LMDB transaction.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import { batchBytesMax, blockBytes, retentionWindowMsDefault } from '../../shared/limits';
import { DrplaneError, ErrorCode, limitExceeded } from '../../shared/errors';
import { hashBytes } from '../../shared/hashing';
import { ownRetentionMapSize, retentionMapBytes } from './retention-map';

/** The store's file in the retention directory (LMDB adds <file>-lock beside it). */
export const storeFileName = 'retention.lmdb';

/** Blocks per hash-index page: one page covers 1 MiB of disk in 2 KiB of hashes. */
export const blocksPerHashPage = 256;
export const hashPageBytes = blocksPerHashPage * hashBytes;

export interface ReplicaRecord {
  diskId: string;
  path: string;
  diskBytes: number;
  epoch: number;
  appliedSequence: number;
  /** The last batch that wrote bytes (a point-only batch writes none); an older store's records read as appliedSequence. */
  dataSequence: number;
  syncId: string;
  syncCursor: number;
  syncComplete: boolean;
  recoveryPointCount: number;
  latestRecoveryPointId: string;
  createdTimeMs: number;
  /** False while the hash index does not describe the replica (adopted disk before its rescan). */
  hashIndexTrusted: boolean;
  /** Continuous replication: the capture of the last batch that named one, and its last change record. */
  captureId: string;
  appliedChangeSequence: number;
  retentionWindowMs: number;
  /** Old data bytes held in before-images (zero markers count 0); changed in the same commits as the images. */
  beforeImageBytes: number;
  /**
   * Retired at failover commit (RetireReplica): from the commit that sets it, no
   * batch, point or hash tree of the disk is served; only the epoch is kept, to
   * fence stale sources. retirementFinished: its keys and file are gone too
   * (false while a retirement interrupted by a crash still has to finish).
   */
  retired: boolean;
  retirementFinished: boolean;
  /** Created as a copy of seedPath (reprotect to the original location). */
  seeded: boolean;
  seedPath: string;
  /** The copy from seedPath is not in place yet: an identical CreateReplica makes it again; nothing else may use the replica. */
  seeding: boolean;
}

/** What a replica holds of batches, syncs, captures and points before anything is applied (a new replica, and a retired one). */
export const emptyReplicaState = {
  appliedSequence: 0,
  dataSequence: 0,
  syncId: '',
  syncCursor: 0,
  syncComplete: false,
  recoveryPointCount: 0,
  latestRecoveryPointId: '',
  captureId: '',
  appliedChangeSequence: 0,
  beforeImageBytes: 0,
} as const satisfies Partial<ReplicaRecord>;

/** A replica record as stored, with the fields a store from an older release lacks filled in (beforeImageBytes is counted by migrate() at start-up). */
export function withReplicaDefaults(stored: ReplicaRecord): ReplicaRecord {
  return {
    ...stored,
    captureId: stored.captureId ?? '',
    appliedChangeSequence: stored.appliedChangeSequence ?? 0,
    dataSequence: stored.dataSequence ?? stored.appliedSequence,
    retentionWindowMs: stored.retentionWindowMs ?? retentionWindowMsDefault,
    beforeImageBytes: stored.beforeImageBytes ?? 0,
    retired: stored.retired ?? false,
    retirementFinished: stored.retirementFinished ?? false,
    seeded: stored.seeded ?? false,
    seedPath: stored.seedPath ?? '',
    seeding: stored.seeding ?? false,
  };
}

export type BatchState = 'applying' | 'applied';

export interface BatchRecord {
  state: BatchState;
  extents: { offset: number; length: number }[];
  appliedTimeMs: number;
  /** Old data bytes in this batch's before-images: what the pruner takes off the replica's count when it removes them. */
  beforeImageBytes: number;
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
  /** Continuous replication: the capture and its last change record in this point ('' and 0 for a sync's point). */
  captureId: string;
  changeSequence: number;
}

/** A point as stored, with the fields a store from an older release lacks filled in. */
export function withPointDefaults(stored: RecoveryPointRecord): RecoveryPointRecord {
  return { ...stored, captureId: stored.captureId ?? '', changeSequence: stored.changeSequence ?? 0 };
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

/**
 * A data before-image laid out in `out` (headerBytes + the old data's length):
 * writes the header and returns the view the old data is read into, so the
 * image needs no buffer of its own (apply.ts reads into a reused slab).
 */
export function dataBeforeImageInto(out: Buffer, offset: number): Buffer {
  out[0] = dataMarker;
  out.writeUIntLE(offset, 1, 6);
  return out.subarray(headerBytes);
}

/** The bytes an encoded data before-image of `length` old bytes takes. */
export const dataBeforeImageBytes = (length: number): number => headerBytes + length;

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

/** Old data bytes an encoded before-image holds (0 for a zero marker). */
export function beforeImageDataBytes(value: Buffer): number {
  return value[0] === zeroMarker ? 0 : value.length - headerBytes;
}

export function decodeBeforeImage(value: Buffer): BeforeImage {
  const offset = value.readUIntLE(1, 6);
  if (value[0] === zeroMarker) return { offset, zero: true, length: value.readUInt32LE(headerBytes) };
  return { offset, zero: false, data: value.subarray(headerBytes) };
}

/** What a batch's applied commit records besides its state (apply.ts, step 4). */
export interface AppliedBatch {
  /** The batch's record as begun (its extents and before-image bytes). */
  header: BatchRecord;
  appliedTimeMs: number;
  /** The extents written, in order, with one hash per block: the hash index takes them (a later extent wins). */
  written: { offset: number; hashes: Buffer }[];
  /** The replica record's changes, read-modify-write inside the commit. */
  replica: (current: ReplicaRecord) => Partial<ReplicaRecord>;
  point?: RecoveryPointRecord;
}

/** The highest sequence or index a key of a disk can have. */
const keyMax = Number.MAX_SAFE_INTEGER;

export class RetentionStore {
  private readonly root: RootDatabase;
  private readonly replicas: Database<ReplicaRecord, string>;
  private readonly batches: Database<BatchRecord, [string, number]>;
  private readonly beforeImages: Database<Buffer, [string, number, number]>;
  private readonly points: Database<RecoveryPointRecord, [string, number]>;
  private readonly hashPages: Database<Buffer, [string, number]>;

  /**
   * Opens (or creates) the store in `directory`. `mapBytes`: the address
   * space to map (ownRetentionMapSize()). A store file larger than the map
   * an address-space limit allows is refused with a clear error rather than
   * mapped (lmdb would map the whole file and die of SIGSEGV).
   */
  constructor(directory: string, mapBytes = ownRetentionMapSize().bytes) {
    const file = path.join(directory, storeFileName);
    const fileBytes = fs.statSync(file, { throwIfNoEntry: false })?.size ?? 0;
    if (mapBytes < retentionMapBytes && fileBytes > mapBytes) {
      throw new DrplaneError(
        ErrorCode.FailedPrecondition,
        `the retention store ${file} (${fileBytes} bytes) does not fit in the ${mapBytes} bytes of address space this process's limit (RLIMIT_AS: LimitAS= of the unit, or ulimit -v) leaves for it: raise or remove the limit (the map is address space, not memory)`,
      );
    }
    this.root = open({
      path: file,
      // Durable commits: a commit's promise resolves only once the data is on disk,
      // because the replica is written after the before-images commit (invariant 4).
      noSync: false,
      overlappingSync: false,
      compression: false,
      // Reads here are random (a before-image, a hash page): read-ahead would map 128 KiB or more around each one
      // into the process (a continuous run held over 200 MiB of the map resident this way). Documented by lmdb,
      // missing from its types.
      ...({ noReadAhead: true } as object),
      // Address space, not memory or disk: the file grows only as pages are written. When the
      // store outgrows its map, lmdb maps the file again and keeps the old mapping (buffers may
      // point into it), so every page read after a remap is resident twice: a continuous run
      // held 140 MiB of the map in 13 mappings. One map this large is never outgrown in practice.
      mapSize: mapBytes,
      maxDbs: 16,
    });
    this.replicas = this.root.openDB({ name: 'replicas' });
    this.batches = this.root.openDB({ name: 'batches' });
    this.beforeImages = this.root.openDB({ name: 'before-images', encoding: 'binary' });
    this.points = this.root.openDB({ name: 'recovery-points' });
    this.hashPages = this.root.openDB({ name: 'hash-pages', encoding: 'binary' });
    // Every write of the store fails with a typed error (a full volume: RESOURCE_EXHAUSTED) instead of stopping the daemon.
    guardTransactions(this.root, directory);
    for (const db of [this.replicas, this.batches, this.beforeImages, this.points, this.hashPages]) {
      guardWrites(db, 'put');
      guardWrites(db, 'remove');
    }
  }

  /** A replica's record with defaults for fields an older store lacks, or undefined. */
  replica(diskId: string): ReplicaRecord | undefined {
    const stored = this.replicas.get(diskId);
    return stored && withReplicaDefaults(stored);
  }

  /** Every replica record, retired ones included. */
  listReplicas(): ReplicaRecord[] {
    return [...this.replicas.getRange({})].map((entry) => withReplicaDefaults(entry.value));
  }

  /** Writes a whole replica record (a new replica, or one being seeded). */
  async putReplica(record: ReplicaRecord): Promise<void> {
    await this.replicas.put(record.diskId, record);
  }

  async removeReplica(diskId: string): Promise<void> {
    await this.replicas.remove(diskId);
  }

  /** Changes a replica record in a commit of its own; returns the record as committed. */
  changeReplica(diskId: string, change: (record: ReplicaRecord) => Partial<ReplicaRecord>): Promise<ReplicaRecord> {
    return this.root.transaction(() => this.updateReplica(diskId, change));
  }

  /**
   * Read-modify-write of a replica record; called inside a transaction callback,
   * where reads see the transaction's own writes, so concurrent writers (apply,
   * the pruner) never lose each other's updates.
   */
  private updateReplica(diskId: string, change: (record: ReplicaRecord) => Partial<ReplicaRecord>): ReplicaRecord {
    const current = this.replica(diskId);
    assert.ok(current, `replica ${diskId} vanished inside a transaction`);
    const updated = { ...current, ...change(current) };
    this.replicas.put(diskId, updated);
    return updated;
  }

  /** The oldest and newest points of a disk at or after `fromSequence` (the pruner's floor). */
  oldestPoint(diskId: string, fromSequence = 0): RecoveryPointRecord | undefined {
    for (const { value } of this.points.getRange({ start: [diskId, fromSequence], end: [diskId, Number.MAX_SAFE_INTEGER], limit: 1 })) return withPointDefaults(value);
    return undefined;
  }

  newestPoint(diskId: string, fromSequence = 0): RecoveryPointRecord | undefined {
    for (const { value } of this.points.getRange({ start: [diskId, Number.MAX_SAFE_INTEGER], end: [diskId, fromSequence], reverse: true, inclusiveEnd: true, limit: 1 })) return withPointDefaults(value);
    return undefined;
  }

  /** A batch's record, or undefined. */
  batch(diskId: string, sequence: number): BatchRecord | undefined {
    return this.batches.get([diskId, sequence]);
  }

  /** A point at its sequence, or undefined. */
  point(diskId: string, sequence: number): RecoveryPointRecord | undefined {
    const stored = this.points.get([diskId, sequence]);
    return stored && withPointDefaults(stored);
  }

  /** A disk's points at or after `fromSequence`, oldest first; before `toSequence` when given. */
  *pointsFrom(diskId: string, fromSequence: number, toSequence = keyMax): Generator<RecoveryPointRecord> {
    for (const { value } of this.points.getRange({ start: [diskId, fromSequence], end: [diskId, toSequence] })) yield withPointDefaults(value);
  }

  /** A disk's points at or after `fromSequence`, newest first. */
  *pointsNewestFirst(diskId: string, fromSequence: number): Generator<RecoveryPointRecord> {
    for (const { value } of this.points.getRange({ start: [diskId, keyMax], end: [diskId, fromSequence], reverse: true, inclusiveEnd: true })) yield withPointDefaults(value);
  }

  // Batches (apply.ts): begun with their before-images, committed applied, or rolled back and forgotten.

  /** Step 2 of an apply: the batch 'applying' with the before-image of each extent, durable before the replica is touched. */
  async beginBatch(diskId: string, sequence: number, header: BatchRecord, images: Buffer[]): Promise<void> {
    await this.root.transaction(() => {
      this.batches.put([diskId, sequence], header);
      // LMDB copies each image here, inside the transaction: the caller may reuse their buffers once it resolves.
      images.forEach((image, index) => this.beforeImages.put([diskId, sequence, index], image));
    });
  }

  /** Step 4 of an apply: the batch applied, with the hash index, the replica's record and its point, in one commit. */
  async commitBatch(diskId: string, sequence: number, applied: AppliedBatch): Promise<void> {
    const pages = new Map<number, Buffer>();
    for (const extent of applied.written) {
      for (let block = 0; block < extent.hashes.length / hashBytes; block++) {
        const diskBlock = extent.offset / blockBytes + block;
        const pageIndex = Math.floor(diskBlock / blocksPerHashPage);
        let page = pages.get(pageIndex);
        if (!page) {
          const stored = this.hashPages.getBinary([diskId, pageIndex]);
          page = stored ? Buffer.from(stored) : Buffer.alloc(hashPageBytes);
          pages.set(pageIndex, page);
        }
        extent.hashes.copy(page, (diskBlock % blocksPerHashPage) * hashBytes, block * hashBytes, (block + 1) * hashBytes);
      }
    }
    await this.root.transaction(() => {
      this.batches.put([diskId, sequence], { ...applied.header, state: 'applied', appliedTimeMs: applied.appliedTimeMs });
      for (const [pageIndex, page] of pages) this.hashPages.put([diskId, pageIndex], page);
      this.updateReplica(diskId, applied.replica);
      if (applied.point) this.points.put([diskId, sequence], applied.point);
    });
  }

  /** Batches a crash left 'applying', in key order. */
  *unfinishedBatches(): Generator<{ diskId: string; sequence: number }> {
    for (const { key, value } of this.batches.getRange({})) {
      if (value.state === 'applying') yield { diskId: key[0], sequence: key[1] };
    }
  }

  /** A batch's before-images, in extent order. */
  *batchBeforeImages(diskId: string, sequence: number): Generator<BeforeImage> {
    for (const { value } of this.beforeImages.getRange({ start: [diskId, sequence, 0], end: [diskId, sequence, keyMax] })) yield decodeBeforeImage(value);
  }

  /** A rolled-back batch: its record and before-images go, in one commit. */
  async forgetBatch(diskId: string, sequence: number): Promise<void> {
    await this.root.transaction(() => {
      this.batches.remove([diskId, sequence]);
      for (const key of this.beforeImages.getKeys({ start: [diskId, sequence, 0], end: [diskId, sequence, keyMax] })) this.beforeImages.remove(key);
    });
  }

  /** The before-images of batches after `afterSequence` up to `throughSequence`, oldest first (materialising a point). */
  *beforeImagesBetween(diskId: string, afterSequence: number, throughSequence: number): Generator<BeforeImage> {
    for (const { value } of this.beforeImages.getRange({ start: [diskId, afterSequence + 1, 0], end: [diskId, throughSequence + 1, 0] })) yield decodeBeforeImage(value);
  }

  // Pruning (retention.ts): a bounded number of keys per commit.

  /** Removes up to `keysMax` points below `sequence` and takes them off the replica's count; returns how many went. */
  async prunePointsBelow(diskId: string, sequence: number, keysMax: number): Promise<number> {
    const keys = [...this.points.getKeys({ start: [diskId, 0], end: [diskId, sequence], limit: keysMax })];
    if (keys.length === 0) return 0;
    await this.root.transaction(() => {
      for (const key of keys) this.points.remove(key);
      this.updateReplica(diskId, (current) => ({ recoveryPointCount: Math.max(0, current.recoveryPointCount - keys.length) }));
    });
    return keys.length;
  }

  /**
   * Removes before-images and records of applied batches at or below
   * `sequence`, oldest first, at most `keysMax` keys: a batch's record goes
   * with (or after) its last image. Returns what went (all 0: nothing left).
   */
  async pruneBatchesThrough(diskId: string, sequence: number, keysMax: number): Promise<{ batches: number; images: number; bytes: number }> {
    const imageKeys: [string, number, number][] = [];
    const batchKeys: [string, number][] = [];
    let bytes = 0;
    let budget = keysMax;
    for (const { key, value } of this.batches.getRange({ start: [diskId, 0], end: [diskId, sequence + 1] })) {
      // Only applied batches lie at or below a point or the applied sequence; anything else is a bug.
      assert.equal(value.state, 'applied', `batch ${diskId}@${key[1]} at or below ${sequence} is not applied`);
      const keys = [...this.beforeImages.getKeys({ start: [diskId, key[1], 0], end: [diskId, key[1], keyMax], limit: budget })];
      imageKeys.push(...keys);
      budget -= keys.length;
      // Out of room: the rest of this batch's images, and its record, go in the next transaction.
      if (budget === 0) break;
      batchKeys.push(key);
      bytes += value.beforeImageBytes ?? 0;
      budget--;
      if (budget === 0) break;
    }
    if (imageKeys.length === 0 && batchKeys.length === 0) return { batches: 0, images: 0, bytes: 0 };
    await this.root.transaction(() => {
      for (const key of imageKeys) this.beforeImages.remove(key);
      for (const key of batchKeys) this.batches.remove(key);
      if (bytes > 0) this.updateReplica(diskId, (current) => ({ beforeImageBytes: Math.max(0, current.beforeImageBytes - bytes) }));
    });
    return { batches: batchKeys.length, images: imageKeys.length, bytes };
  }

  // Retirement (retirement.ts).

  /**
   * Deletes up to `keysMax` keys of a disk (its points, then before-images,
   * batches and hash pages) in one commit; returns how many (0: none left).
   */
  async deleteDiskKeys(diskId: string, keysMax: number): Promise<number> {
    const tables = [this.points, this.beforeImages, this.batches, this.hashPages] as Database<unknown, (string | number)[]>[];
    for (const table of tables) {
      const keys = [...table.getKeys({ start: [diskId, 0], end: [diskId, keyMax], limit: keysMax })];
      if (keys.length === 0) continue;
      for (const key of keys) assert.equal(key[0], diskId, `key ${JSON.stringify(key)} lies outside disk ${diskId}'s range`);
      await this.root.transaction(() => {
        for (const key of keys) table.remove(key);
      });
      return keys.length;
    }
    return 0;
  }

  /** Keys a disk has in the store besides its replica record (a finished retirement leaves none). */
  diskKeyCount(diskId: string): number {
    const tables = [this.points, this.beforeImages, this.batches, this.hashPages] as Database<unknown, (string | number)[]>[];
    return tables.reduce((sum, table) => sum + table.getKeysCount({ start: [diskId, 0], end: [diskId, keyMax] }), 0);
  }

  // The hash index.

  /** Replaces hash pages from `firstPage` with a window of leaves (a rescan): pages of zeros are removed. */
  async writeHashPages(diskId: string, firstPage: number, leaves: Buffer): Promise<void> {
    await this.root.transaction(() => {
      for (let page = 0; page * hashPageBytes < leaves.length; page++) {
        const value = leaves.subarray(page * hashPageBytes, (page + 1) * hashPageBytes);
        if (value.some((byte) => byte !== 0)) this.hashPages.put([diskId, firstPage + page], Buffer.from(value));
        else this.hashPages.remove([diskId, firstPage + page]);
      }
    });
  }

  /**
   * Counts the before-image bytes of replicas and batches written before the
   * count existed (a store from an older release), once, at start-up. A crash
   * half-way is harmless: batches already counted keep their count.
   */
  async migrate(): Promise<number> {
    let migrated = 0;
    const uncounted = [...this.replicas.getRange({})].filter((entry) => entry.value.beforeImageBytes === undefined).map((entry) => entry.key);
    for (const diskId of uncounted) {
      let total = 0;
      for (const { key, value: batch } of [...this.batches.getRange({ start: [diskId, 0], end: [diskId, Number.MAX_SAFE_INTEGER] })]) {
        if (batch.beforeImageBytes === undefined) {
          let bytes = 0;
          for (const image of this.beforeImages.getRange({ start: [diskId, key[1], 0], end: [diskId, key[1], Number.MAX_SAFE_INTEGER] })) bytes += beforeImageDataBytes(image.value);
          await this.batches.put(key, { ...batch, beforeImageBytes: bytes });
          // A batch still 'applying' counts only once applied, as in apply; start-up rolls it back.
          if (batch.state === 'applied') total += bytes;
        } else if (batch.state === 'applied') total += batch.beforeImageBytes;
      }
      await this.root.transaction(() => this.updateReplica(diskId, () => ({ beforeImageBytes: total })));
      migrated++;
    }
    return migrated;
  }

  /** The stored runs of a replica's hash index, in order: one per hash page that exists (a page's first leaf is a multiple of blocksPerHashPage). */
  *storedLeaves(diskId: string): Generator<{ firstLeaf: number; leaves: Buffer }> {
    for (const { key, value } of this.hashPages.getRange({ start: [diskId, 0], end: [diskId, Number.MAX_SAFE_INTEGER] })) {
      yield { firstLeaf: key[1] * blocksPerHashPage, leaves: value };
    }
  }

  /** Leaves [firstLeaf, firstLeaf + count) of a replica's hash index: zeros where no page exists. */
  readLeafRange(diskId: string, firstLeaf: number, count: number): Buffer {
    const leaves = Buffer.alloc(count * hashBytes);
    const end = firstLeaf + count;
    for (let page = Math.floor(firstLeaf / blocksPerHashPage); page * blocksPerHashPage < end; page++) {
      const value = this.hashPages.getBinary([diskId, page]);
      if (!value) continue;
      const from = Math.max(firstLeaf, page * blocksPerHashPage);
      const to = Math.min(end, (page + 1) * blocksPerHashPage);
      const inPage = (from - page * blocksPerHashPage) * hashBytes;
      value.copy(leaves, (from - firstLeaf) * hashBytes, inPage, inPage + (to - from) * hashBytes);
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

  /** Writes a compacted copy of the whole store to `file` (drctl prune-retention: LMDB never shrinks its own file). */
  async copyCompacted(file: string): Promise<void> {
    await this.root.backup(file, true);
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}

/**
 * lmdb rejects the writes of a failed commit (the transaction and every put or
 * remove in it) with an error whose commitError is a second promise, rejected
 * with the cause, that nothing awaits: unhandled, any of them stops the daemon.
 * The transaction's failure becomes one DrplaneError for its caller:
 * RESOURCE_EXHAUSTED when the retention volume is full (nothing of the
 * transaction was written: LMDB commits are atomic), INTERNAL otherwise.
 */
function guardTransactions(root: RootDatabase, directory: string): void {
  const original = root.transaction.bind(root);
  (root as { transaction: unknown }).transaction = (action: () => unknown) => original(action).catch((error: unknown) => commitFailure(error, directory));
}

/** A put or remove inside a transaction is not awaited: its rejection is marked handled (the transaction reports it). */
function guardWrites(db: object, method: 'put' | 'remove'): void {
  const holder = db as Record<string, (...args: unknown[]) => unknown>;
  const original = holder[method].bind(db);
  holder[method] = (...args: unknown[]) => {
    const result = original(...args);
    if (result instanceof Promise) result.catch((error: unknown) => (error as { commitError?: Promise<unknown> } | undefined)?.commitError?.catch(() => undefined));
    return result;
  };
}

async function commitFailure(error: unknown, directory: string): Promise<never> {
  if (error instanceof DrplaneError) throw error;
  const pending = (error as { commitError?: Promise<unknown> } | undefined)?.commitError;
  const cause = pending instanceof Promise ? await pending.then(() => error, (reason: unknown) => reason) : error;
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  const message = cause instanceof Error ? cause.message : String(cause);
  // LMDB reports a write that found no space as EIO at times: a failed commit on a volume with less free space
  // than two batches' before-images is taken as a full volume.
  let freeBytes = Number.POSITIVE_INFINITY;
  try {
    const stats = fs.statfsSync(directory);
    freeBytes = stats.bavail * stats.bsize;
  } catch {
    // The volume is gone: not a question of space.
  }
  if (code === 'ENOSPC' || code === 'EDQUOT' || /MDB_MAP_FULL|ENOSPC|no space left/i.test(message) || freeBytes < 2 * batchBytesMax) {
    throw limitExceeded(`the retention volume is full (${message}; ${freeBytes} bytes free): nothing of this change was written; shorten retention windows (ConfigureReplica) so the pruner frees space, or grow the volume`);
  }
  throw new DrplaneError(ErrorCode.Internal, `the retention store could not commit: ${message}`, { cause });
}
