// Replica disks: creation under a datastore root (empty, adopted, or seeded
// from a disk on this host), their open files, per-disk locks, epochs
// (fencing) and the hash-index trees served for delta sync.
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { Mutex } from 'async-mutex';
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument, limitExceeded, notFound, permissionDenied } from '../../shared/errors';
import { blockBytes, diskBytesMax, disksPerMasterTargetMax, epochStepMax, hashTreeFanout, hashTreesBytesMax, hashTreesOpenMax, nameLengthMax, retentionWindowMsDefault, retentionWindowMsMax, retentionWindowMsMin } from '../../shared/limits';
import assert from 'node:assert/strict';
import { checkHashTreeBytes, HashTree, hashTreeBytes } from '../../shared/hash-tree';
import { hashTaskBytes } from '../../shared/hash-pool';
import { hashBytes } from '../../shared/hashing';
import { openFlags } from '../../shared/open-beneath';
import { ReplicaHashTree, type ServedHashTree } from './replica-hash-tree';
import { DirectWriteBuffers, openDirect } from './direct-writes';
import type { HashPool } from '../../shared/hash-pool';
import type { Logger } from '../../shared/log';
import { failpoint } from '../../shared/failpoints';
import { Datastores, besideTemporary, checkPathText, existsError } from './datastore';
import { syncDirectory } from '../../shared/file-io';
import { RetentionStore, hashPageBytes, emptyReplicaState, type ReplicaRecord } from './retention-store';

const diskIdPattern = /^[A-Za-z0-9._-]+$/;

export function checkDiskId(diskId: string): void {
  if (!diskId) throw invalidArgument('disk_id is empty');
  if (diskId.length > nameLengthMax || !diskIdPattern.test(diskId)) throw invalidArgument(`disk_id ${JSON.stringify(diskId.slice(0, nameLengthMax))} must be 1-${nameLengthMax} letters, digits, dot, dash or underscore`);
}

/** A retention window from CreateReplica (0: the default) or ConfigureReplica (0 refused), checked against its bounds. */
export function checkRetentionWindow(windowMs: number, zeroMeansDefault: boolean): number {
  if (windowMs === 0 && zeroMeansDefault) return retentionWindowMsDefault;
  if (!Number.isSafeInteger(windowMs) || windowMs < retentionWindowMsMin || windowMs > retentionWindowMsMax) {
    throw invalidArgument(`retention_window_ms ${windowMs} is outside ${retentionWindowMsMin} ms (1 second) to ${retentionWindowMsMax} ms (30 days)`);
  }
  return windowMs;
}

/** A new epoch from SetEpoch or RetireReplica: at most epochStepMax above the replica's (checked before anything is written). */
export function checkEpochStep(diskId: string, current: number, epoch: number): void {
  if (epoch - current > epochStepMax) {
    throw invalidArgument(`epoch ${epoch} is more than ${epochStepMax} above the epoch ${current} of disk ${diskId}'s replica (epochStepMax): the configuration server raises epochs one ownership change at a time; nothing was changed`);
  }
}

/** The refusal for anything on a retired replica (FAILED_PRECONDITION, stale epoch: another site owns the disk). */
export function retiredError(record: ReplicaRecord, refused = ''): DrplaneError {
  return new DrplaneError(
    ErrorCode.StaleEpoch,
    `${refused}disk ${record.diskId} was retired on this master target at epoch ${record.epoch} (failover commit): its replica and recovery points are gone; create it again with a newer epoch (CreateReplica) to replicate to it`,
  );
}

export class Replicas {
  private readonly files = new Map<string, fs.promises.FileHandle>();
  /** Each replica's handle for direct writes (direct-writes.ts); null where its file system refuses O_DIRECT. */
  private readonly directFiles = new Map<string, fs.promises.FileHandle | null>();
  /** Aligned buffers for direct writes, shared by every replica. */
  readonly directBuffers = new DirectWriteBuffers();
  private readonly locks = new Map<string, Mutex>();
  private readonly trees = new Map<string, { diskId: string; tree: ServedHashTree; bytes: number }>();

  /** Disks whose retirement has begun and is not yet durable: nothing new may start on them. */
  private readonly retiring = new Set<string>();

  constructor(
    readonly store: RetentionStore,
    readonly datastores: Datastores,
    readonly pool: HashPool,
    private readonly log: Logger,
    readonly disksMax = disksPerMasterTargetMax,
    /** This master target's name, for messages an operator reads at the configuration server. */
    readonly name = 'this master target',
  ) {}

  /** Serialises apply, materialise and rescan of one disk. */
  lock(diskId: string): Mutex {
    let mutex = this.locks.get(diskId);
    if (!mutex) this.locks.set(diskId, (mutex = new Mutex()));
    return mutex;
  }

  get(diskId: string): ReplicaRecord {
    checkDiskId(diskId);
    const record = this.store.replica(diskId);
    if (!record) throw notFound(`no replica for disk ${diskId} on this master target: create it first (CreateReplica)`);
    return record;
  }

  /**
   * A replica that may be used: not retired (nor being retired) and not still
   * being seeded. Synchronous, so a caller that pins or locks in the same tick
   * cannot race a retirement (see Retirement).
   */
  live(diskId: string, refused = ''): ReplicaRecord {
    const record = this.get(diskId);
    if (record.retired || this.retiring.has(diskId)) throw retiredError(record, refused);
    if (record.seeding) throw failedPrecondition(`the replica of disk ${diskId} is still being copied from ${record.seedPath}: repeat its CreateReplica to finish it`);
    return record;
  }

  /** Marks a disk as being retired, until the retired record is durable (endRetiring). */
  beginRetiring(diskId: string): void {
    this.retiring.add(diskId);
  }

  endRetiring(diskId: string): void {
    this.retiring.delete(diskId);
  }

  /** Every record, retired ones included. */
  list(): ReplicaRecord[] {
    return this.store.listReplicas();
  }

  /** Replicas that count against disksMax: retired ones do not. */
  count(): number {
    return this.list().filter((record) => !record.retired).length;
  }

  /** The replica whose file is `filePath` (retired ones only while their file may still exist), if any. */
  replicaAt(filePath: string): ReplicaRecord | undefined {
    return this.list().find((record) => record.path === filePath && (!record.retired || !record.retirementFinished));
  }

  /** Closes the replica's open files (before it is removed or replaced). */
  async closeFile(diskId: string): Promise<void> {
    const handle = this.files.get(diskId);
    const direct = this.directFiles.get(diskId);
    this.files.delete(diskId);
    this.directFiles.delete(diskId);
    await handle?.close();
    await direct?.close();
  }

  /** Forgets every open hash tree of a disk (its replica is going away). */
  closeTreesOf(diskId: string): void {
    for (const [treeId, entry] of this.trees) if (entry.diskId === diskId) this.trees.delete(treeId);
  }

  async file(record: ReplicaRecord): Promise<fs.promises.FileHandle> {
    let handle = this.files.get(record.diskId);
    if (!handle) {
      // By descriptor: a link swapped into the path since the replica was made cannot lead outside the roots.
      handle = await this.datastores.open(record.path, openFlags.readWrite);
      this.files.set(record.diskId, handle);
    }
    return handle;
  }

  /** The replica's file opened for direct writes, or undefined where its file system does not do them. */
  async directFile(record: ReplicaRecord): Promise<fs.promises.FileHandle | undefined> {
    let handle = this.directFiles.get(record.diskId);
    if (handle === undefined) {
      handle = (await openDirect((flags) => this.datastores.open(record.path, flags))) ?? null;
      if (!handle) this.log.info({ diskId: record.diskId, path: record.path }, 'the file system of this replica refuses O_DIRECT: replica writes go through the page cache');
      this.directFiles.set(record.diskId, handle);
    }
    return handle ?? undefined;
  }

  /** Direct writes to this replica stop (a write was refused for its alignment): the page cache takes them from now on. */
  async stopDirectWrites(diskId: string): Promise<void> {
    const handle = this.directFiles.get(diskId);
    this.directFiles.set(diskId, null);
    await handle?.close();
  }

  async create(request: { diskId: string; path: string; diskBytes: number; epoch: number; adoptExisting: boolean; retentionWindowMs: number; seedPath?: string }): Promise<ReplicaRecord> {
    checkDiskId(request.diskId);
    const { diskBytes, epoch } = request;
    const seedPath = request.seedPath ?? '';
    const retentionWindowMs = checkRetentionWindow(request.retentionWindowMs, true);
    if (!Number.isSafeInteger(diskBytes) || diskBytes <= 0 || diskBytes % blockBytes !== 0) throw invalidArgument(`disk_bytes ${diskBytes} must be a positive multiple of ${blockBytes}`);
    if (diskBytes > diskBytesMax) throw limitExceeded(`disk_bytes ${diskBytes} is over the largest disk drplane replicates (${diskBytesMax})`);
    if (!Number.isSafeInteger(epoch) || epoch < 1) throw invalidArgument('epoch must be 1 or more (the configuration server issues it)');
    if (seedPath) {
      checkPathText(seedPath, 'seed_path');
      if (request.adoptExisting) throw invalidArgument('adopt_existing and seed_path exclude each other: a seeded replica is a new copy of its seed');
    }
    return this.lock(request.diskId).runExclusive(async () => {
      const existing = this.store.replica(request.diskId);
      let replacing: ReplicaRecord | undefined;
      // Every check runs before anything is written, directories included: a refusal leaves no trace.
      const resolved = this.datastores.plannedPath(request.path);
      if (existing && !existing.retired) {
        if (epoch < existing.epoch) throw new DrplaneError(ErrorCode.StaleEpoch, `epoch ${epoch} is older than the replica's epoch ${existing.epoch}`);
        const sameSeed = !seedPath || (this.datastores.resolveExisting(seedPath) ?? path.resolve(seedPath)) === existing.seedPath;
        if (existing.seeding && (existing.path !== resolved || existing.diskBytes !== diskBytes || !seedPath || !sameSeed)) {
          // Nothing was ever applied to a replica still being seeded: another request may take its place (below, once it is checked).
          replacing = existing;
        } else {
          if (existing.path !== resolved || existing.diskBytes !== diskBytes) {
            throw new DrplaneError(ErrorCode.AlreadyExists, `disk ${request.diskId} already has a replica at ${existing.path} (${existing.diskBytes} bytes)`);
          }
          if (seedPath && (!existing.seeded || !sameSeed) && !existing.seeding) {
            throw new DrplaneError(ErrorCode.AlreadyExists, `disk ${request.diskId} already has a replica at ${existing.path} that was not seeded from ${seedPath}${existing.seedPath ? ` (its seed was ${existing.seedPath})` : ''}`);
          }
          let current = existing;
          // The same CreateReplica after a crash: the copy is made again (a reflink costs nothing).
          if (current.seeding) current = await this.copySeed({ ...current, seedPath: this.checkSeed(seedPath, resolved, diskBytes) });
          if (epoch > current.epoch) current = await this.raiseEpoch(current, epoch);
          // Created again from a policy: a window given explicitly is the policy's current one.
          if (request.retentionWindowMs !== 0 && retentionWindowMs !== current.retentionWindowMs) return this.setRetentionWindow(current, retentionWindowMs);
          return current;
        }
      }
      if (existing?.retired) {
        if (epoch <= existing.epoch) {
          throw new DrplaneError(ErrorCode.StaleEpoch, `disk ${request.diskId} was retired on ${this.name} at epoch ${existing.epoch} (failover commit): create it again with a newer epoch than ${existing.epoch}, got ${epoch}`);
        }
        // RetireReplica and start-up finish a retirement before this runs (see the CreateReplica handler).
        if (!existing.retirementFinished) throw failedPrecondition(`the retirement of disk ${request.diskId} has not finished: repeat RetireReplica (epoch ${existing.epoch}) first`);
      }
      const held = this.count() - (replacing ? 1 : 0);
      if (held >= this.disksMax) {
        throw limitExceeded(`this master target already serves ${held} disks, the most it may (${this.disksMax}): use another master target`);
      }
      const owner = this.replicaAt(resolved);
      if (owner && owner.diskId !== request.diskId) throw new DrplaneError(ErrorCode.AlreadyExists, `${resolved} is the replica file of disk ${owner.diskId}: choose another path`);
      const record: ReplicaRecord = {
        diskId: request.diskId,
        path: resolved,
        diskBytes,
        epoch,
        ...emptyReplicaState,
        createdTimeMs: Date.now(),
        hashIndexTrusted: true,
        retentionWindowMs,
        retired: false,
        retirementFinished: false,
        seeded: false,
        seedPath: '',
        seeding: false,
      };
      // The unfinished copy's file is its own: the new replica may take its path.
      const pathTaken = fs.existsSync(resolved) && replacing?.path !== resolved;
      if (seedPath) {
        const seed = this.checkSeed(seedPath, resolved, diskBytes);
        if (pathTaken) throw existsError(resolved);
        if (replacing) await this.abandonSeeding(replacing);
        // Recorded before the copy, so a crash leaves a record an identical call finishes (and that reserves the path).
        // The index describes nothing yet: the first hash tree reads the disk, and apply keeps real before-images.
        await this.datastores.resolveNewFile(request.path);
        const seeding: ReplicaRecord = { ...record, seedPath: seed, seeding: true, hashIndexTrusted: false };
        await this.store.putReplica(seeding);
        this.log.info({ diskId: record.diskId, path: resolved, seedPath: seed, diskBytes, epoch }, 'seeding a replica');
        await failpoint('seed.recorded');
        return this.copySeed(seeding);
      }
      let adopted = false;
      if (pathTaken) {
        if (!request.adoptExisting) throw existsError(resolved);
        // The file itself, never a link in its last component (it could lead anywhere, and later anywhere else).
        if (fs.lstatSync(resolved).isSymbolicLink()) throw permissionDenied(`${resolved} is a symbolic link: adopt_existing takes only a regular file under a datastore root, never a link`);
        const adopting = await this.datastores.open(resolved, openFlags.read);
        const stat = await adopting.stat().finally(() => adopting.close());
        if (!stat.isFile()) throw invalidArgument(`${resolved} is not a regular file`);
        if (stat.size !== diskBytes) throw failedPrecondition(`${resolved} has ${stat.size} bytes, the disk has ${diskBytes}: it is not this disk`);
        if (replacing) await this.abandonSeeding(replacing);
        adopted = true;
      } else {
        if (replacing) await this.abandonSeeding(replacing);
        await this.datastores.resolveNewFile(request.path);
        const handle = await this.datastores.open(resolved, openFlags.createNew, 0o600);
        try {
          // A sparse file: a thin replica until data arrives.
          await handle.truncate(diskBytes);
          await handle.sync();
        } finally {
          await handle.close();
        }
        // The new file's entry is durable before the record that names it.
        await syncDirectory(path.dirname(resolved));
      }
      record.hashIndexTrusted = !adopted;
      await this.store.putReplica(record);
      this.log.info({ diskId: record.diskId, path: resolved, diskBytes, epoch, adopted }, 'replica created');
      if (adopted) await this.rebuildHashIndex(record);
      return this.get(record.diskId);
    });
  }

  /** The seed of a new replica: an existing regular file under a root, exactly the disk's size, not a replica. */
  private checkSeed(seedPath: string, target: string, diskBytes: number): string {
    const seed = this.datastores.resolveExisting(seedPath);
    if (!seed) throw notFound(`original disk ${seedPath} not found on ${this.name}: reprotect to an alternate location`);
    const stat = fs.statSync(seed);
    if (!stat.isFile()) throw invalidArgument(`seed_path ${seed} is not a regular file`);
    if (stat.size !== diskBytes) throw invalidArgument(`seed_path ${seed} has ${stat.size} bytes, the disk has ${diskBytes}: it is not this disk's original (reprotect to an alternate location)`);
    if (seed === target) throw invalidArgument(`seed_path and path are the same file (${seed}): the replica is a copy, never the machine's own disk`);
    const owner = this.replicaAt(seed);
    if (owner) throw failedPrecondition(`seed_path ${seed} is the replica file of disk ${owner.diskId}: seed from the machine's disk, not from a replica`);
    return seed;
  }

  /**
   * Copies the seed to a temporary file beside the replica (a reflink where the
   * file system has them, a plain copy elsewhere), makes it durable and renames
   * it into place: the replica's path holds the whole copy or nothing of it.
   */
  private async copySeed(record: ReplicaRecord): Promise<ReplicaRecord> {
    const temporary = besideTemporary(record.path, 'seed');
    const started = Date.now();
    try {
      await fs.promises.rm(temporary, { force: true });
      await fs.promises.copyFile(record.seedPath, temporary, fs.constants.COPYFILE_FICLONE);
      const handle = await this.datastores.open(temporary, openFlags.readWrite);
      try {
        const { size } = await handle.stat();
        if (size !== record.diskBytes) throw failedPrecondition(`the copy of ${record.seedPath} has ${size} bytes, not ${record.diskBytes}: the seed changed size while it was copied`);
        await handle.chmod(0o600);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await failpoint('seed.copied');
      await fs.promises.rename(temporary, record.path);
      await syncDirectory(path.dirname(record.path));
    } catch (error) {
      await fs.promises.rm(temporary, { force: true }).catch(() => undefined);
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOSPC' || code === 'EDQUOT') throw limitExceeded(`no space left to copy ${record.seedPath} to ${record.path}: free space on its datastore and repeat the CreateReplica`);
      throw error;
    }
    await failpoint('seed.renamed');
    const seeded = await this.store.changeReplica(record.diskId, () => ({ seedPath: record.seedPath, seeding: false, seeded: true, hashIndexTrusted: false }));
    this.log.info({ diskId: record.diskId, path: record.path, seedPath: record.seedPath, durationMs: Date.now() - started }, 'replica seeded');
    return seeded;
  }

  /** Forgets a replica whose seed copy never finished (nothing was applied to it), with its files. Caller holds the lock. */
  private async abandonSeeding(record: ReplicaRecord): Promise<void> {
    await this.closeFile(record.diskId);
    await fs.promises.rm(besideTemporary(record.path, 'seed'), { force: true });
    // The path did not exist when the record was made, and the record reserved it since: the file there is ours.
    await fs.promises.rm(record.path, { force: true });
    await syncDirectory(path.dirname(record.path)).catch(() => undefined);
    await this.store.removeReplica(record.diskId);
    this.log.warn({ diskId: record.diskId, path: record.path, seedPath: record.seedPath }, 'abandoned an unfinished seed copy for another CreateReplica');
  }

  /** Start-up: temporary copies a crash left behind (their records stay, for an identical CreateReplica to finish). */
  async removeSeedLeftovers(): Promise<number> {
    let removed = 0;
    for (const record of this.list()) {
      if (!record.seeding) continue;
      await fs.promises.rm(besideTemporary(record.path, 'seed'), { force: true });
      this.log.warn({ diskId: record.diskId, seedPath: record.seedPath }, 'a seed copy was interrupted: repeat its CreateReplica to finish it');
      removed++;
    }
    return removed;
  }

  /** Fencing: batches of older epochs are refused from now on. */
  async setEpoch(diskId: string, epoch: number): Promise<ReplicaRecord> {
    return this.lock(diskId).runExclusive(async () => {
      const record = this.get(diskId);
      if (!Number.isSafeInteger(epoch) || epoch < record.epoch) throw new DrplaneError(ErrorCode.StaleEpoch, `epoch ${epoch} is older than the replica's epoch ${record.epoch}`);
      checkEpochStep(diskId, record.epoch, epoch);
      return epoch === record.epoch ? record : this.raiseEpoch(record, epoch);
    });
  }

  /** Sets how long points are kept; the pruner applies it on its next run. */
  async configure(diskId: string, retentionWindowMs: number): Promise<ReplicaRecord> {
    const windowMs = checkRetentionWindow(retentionWindowMs, false);
    return this.lock(diskId).runExclusive(async () => {
      const record = this.live(diskId);
      return windowMs === record.retentionWindowMs ? record : this.setRetentionWindow(record, windowMs);
    });
  }

  private async setRetentionWindow(record: ReplicaRecord, retentionWindowMs: number): Promise<ReplicaRecord> {
    const updated = await this.store.changeReplica(record.diskId, () => ({ retentionWindowMs }));
    this.log.info({ diskId: record.diskId, from: record.retentionWindowMs, to: retentionWindowMs }, 'retention window set');
    return updated;
  }

  private async raiseEpoch(record: ReplicaRecord, epoch: number): Promise<ReplicaRecord> {
    // Read-modify-write in the transaction: the pruner updates the record's counters without the lock.
    const updated = await this.store.changeReplica(record.diskId, () => ({ epoch }));
    this.log.info({ diskId: record.diskId, from: record.epoch, to: epoch }, 'epoch raised');
    return updated;
  }

  /**
   * Reads the replica and rewrites its hash index (for a disk the index does not describe). Caller holds the lock.
   * A window of hashing tasks at a time, its pages written as it ends: memory stays a window's leaves whatever the
   * disk's size. The index is trusted only once every page is written (a crash before rebuilds it again).
   */
  private async rebuildHashIndex(record: ReplicaRecord): Promise<void> {
    // Not trusted while pages of two states are mixed: a crash in the middle leaves it to be rebuilt again.
    await this.store.changeReplica(record.diskId, () => ({ hashIndexTrusted: false }));
    const windowBytes = this.pool.threads * hashTaskBytes;
    assert.equal(windowBytes % ((hashPageBytes / hashBytes) * blockBytes), 0, 'a window is whole hash pages');
    // The hash workers read the descriptor opened here (/proc/self/fd/N, shared with the workers), not the path.
    const handle = await this.datastores.open(record.path, openFlags.read);
    try {
      for (let offset = 0; offset < record.diskBytes; offset += windowBytes) {
        const length = Math.min(windowBytes, record.diskBytes - offset);
        const leaves = await this.pool.hashFile(`/proc/self/fd/${handle.fd}`, offset, length);
        const firstPage = offset / blockBytes / (hashPageBytes / hashBytes);
        await this.store.writeHashPages(record.diskId, firstPage, leaves);
      }
    } finally {
      await handle.close();
    }
    await this.store.changeReplica(record.diskId, () => ({ hashIndexTrusted: true }));
  }

  async openHashTree(diskId: string, rescan: boolean): Promise<{ treeId: string; tree: ServedHashTree; record: ReplicaRecord; bytesRead: number }> {
    return this.lock(diskId).runExclusive(async () => {
      const record = this.live(diskId);
      const leafCount = Math.ceil(record.diskBytes / blockBytes);
      // The leaves stay in the hash pages (ReplicaHashTree): the tree holds level 1 and above, dense.
      const treeBytes = leafCount > hashTreeFanout ? hashTreeBytes(leafCount, 1) : hashTreeBytes(leafCount);
      checkHashTreeBytes(treeBytes, record.diskBytes, `replica ${diskId}`);
      const readDisk = rescan || !record.hashIndexTrusted;
      if (readDisk) await this.rebuildHashIndex(record);
      const treeId = crypto.randomUUID();
      // Older trees close until this one fits beside the others.
      while (this.trees.size > 0 && (this.trees.size >= hashTreesOpenMax || this.openTreeBytes() + treeBytes > hashTreesBytesMax)) this.trees.delete(this.trees.keys().next().value!);
      // The leaves stay in the hash pages (ReplicaHashTree); a disk of one parent's leaves or fewer is simpler whole.
      const tree: ServedHashTree =
        leafCount > hashTreeFanout
          ? new ReplicaHashTree(leafCount, this.store.storedLeaves(diskId), (firstLeaf, count) => this.store.readLeafRange(diskId, firstLeaf, count), treeId)
          : new HashTree(this.store.readLeafRange(diskId, 0, leafCount));
      this.trees.set(treeId, { diskId, tree, bytes: treeBytes });
      return { treeId, tree, record, bytesRead: readDisk ? record.diskBytes : 0 };
    });
  }

  private openTreeBytes(): number {
    let bytes = 0;
    for (const entry of this.trees.values()) bytes += entry.bytes;
    return bytes;
  }

  tree(treeId: string): ServedHashTree {
    const entry = this.trees.get(treeId);
    if (!entry) throw notFound(`hash tree ${treeId} is not open (closed, or evicted after ${hashTreesOpenMax} newer ones): open it again`);
    return entry.tree;
  }

  closeTree(treeId: string): void {
    this.trees.delete(treeId);
  }

  async close(): Promise<void> {
    for (const handle of this.files.values()) await handle.close();
    for (const handle of this.directFiles.values()) await handle?.close();
    this.directFiles.clear();
    this.files.clear();
  }
}
