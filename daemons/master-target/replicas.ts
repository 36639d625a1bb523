// Replica disks: creation under a datastore root, their open files, per-disk
// locks, epochs (fencing) and the hash-index trees served for delta sync.
import fs from 'node:fs';
import crypto from 'node:crypto';
import { Mutex } from 'async-mutex';
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument, limitExceeded, notFound } from '../../shared/errors';
import { blockBytes, diskBytesMax, disksPerMasterTargetMax, hashTreesOpenMax, nameLengthMax, retentionWindowDefaultMs, retentionWindowMaxMs, retentionWindowMinMs } from '../../shared/limits';
import { HashTree } from '../../shared/hash-tree';
import type { HashPool } from '../../shared/hash-pool';
import type { Logger } from '../../shared/log';
import { Datastores, existsError } from './datastore';
import { RetentionStore, hashPageBytes, withReplicaDefaults, type ReplicaRecord } from './retention-store';

const diskIdPattern = /^[A-Za-z0-9._-]+$/;

export function checkDiskId(diskId: string): void {
  if (!diskId) throw invalidArgument('disk_id is empty');
  if (diskId.length > nameLengthMax || !diskIdPattern.test(diskId)) throw invalidArgument(`disk_id ${JSON.stringify(diskId.slice(0, nameLengthMax))} must be 1-${nameLengthMax} letters, digits, dot, dash or underscore`);
}

/** A retention window from CreateReplica (0: the default) or ConfigureReplica (0 refused), checked against its bounds. */
export function checkRetentionWindow(windowMs: number, zeroMeansDefault: boolean): number {
  if (windowMs === 0 && zeroMeansDefault) return retentionWindowDefaultMs;
  if (!Number.isSafeInteger(windowMs) || windowMs < retentionWindowMinMs || windowMs > retentionWindowMaxMs) {
    throw invalidArgument(`retention_window_ms ${windowMs} is outside ${retentionWindowMinMs} ms (1 second) to ${retentionWindowMaxMs} ms (30 days)`);
  }
  return windowMs;
}

export class Replicas {
  private readonly files = new Map<string, fs.promises.FileHandle>();
  private readonly locks = new Map<string, Mutex>();
  private readonly trees = new Map<string, { diskId: string; tree: HashTree }>();

  constructor(
    readonly store: RetentionStore,
    readonly datastores: Datastores,
    readonly pool: HashPool,
    private readonly log: Logger,
    readonly disksMax = disksPerMasterTargetMax,
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

  list(): ReplicaRecord[] {
    return [...this.store.replicas.getRange({})].map((entry) => withReplicaDefaults(entry.value));
  }

  count(): number {
    return this.store.replicas.getKeysCount();
  }

  async file(record: ReplicaRecord): Promise<fs.promises.FileHandle> {
    let handle = this.files.get(record.diskId);
    if (!handle) {
      handle = await fs.promises.open(record.path, 'r+');
      this.files.set(record.diskId, handle);
    }
    return handle;
  }

  async create(request: { diskId: string; path: string; diskBytes: number; epoch: number; adoptExisting: boolean; retentionWindowMs: number }): Promise<ReplicaRecord> {
    checkDiskId(request.diskId);
    const { diskBytes, epoch } = request;
    const retentionWindowMs = checkRetentionWindow(request.retentionWindowMs, true);
    if (!Number.isSafeInteger(diskBytes) || diskBytes <= 0 || diskBytes % blockBytes !== 0) throw invalidArgument(`disk_bytes ${diskBytes} must be a positive multiple of ${blockBytes}`);
    if (diskBytes > diskBytesMax) throw limitExceeded(`disk_bytes ${diskBytes} is over the largest disk drplane replicates (${diskBytesMax})`);
    if (!Number.isSafeInteger(epoch) || epoch < 1) throw invalidArgument('epoch must be 1 or more (the configuration server issues it)');
    return this.lock(request.diskId).runExclusive(async () => {
      const existing = this.store.replica(request.diskId);
      const resolved = this.datastores.resolveNewFile(request.path);
      if (existing) {
        if (existing.path !== resolved || existing.diskBytes !== diskBytes) {
          throw new DrplaneError(ErrorCode.AlreadyExists, `disk ${request.diskId} already has a replica at ${existing.path} (${existing.diskBytes} bytes)`);
        }
        if (epoch < existing.epoch) throw new DrplaneError(ErrorCode.StaleEpoch, `epoch ${epoch} is older than the replica's epoch ${existing.epoch}`);
        const raised = epoch > existing.epoch ? await this.raiseEpoch(existing, epoch) : existing;
        // Created again from a policy: a window given explicitly is the policy's current one.
        if (request.retentionWindowMs !== 0 && retentionWindowMs !== raised.retentionWindowMs) return this.setRetentionWindow(raised, retentionWindowMs);
        return raised;
      }
      if (this.count() >= this.disksMax) {
        throw limitExceeded(`this master target already serves ${this.count()} disks, the most it may (${this.disksMax}): use another master target`);
      }
      let adopted = false;
      if (fs.existsSync(resolved)) {
        if (!request.adoptExisting) throw existsError(resolved);
        const stat = fs.statSync(resolved);
        if (!stat.isFile()) throw invalidArgument(`${resolved} is not a regular file`);
        if (stat.size !== diskBytes) throw failedPrecondition(`${resolved} has ${stat.size} bytes, the disk has ${diskBytes}: it is not this disk`);
        adopted = true;
      } else {
        const handle = await fs.promises.open(resolved, 'wx', 0o600);
        try {
          // A sparse file: a thin replica until data arrives.
          await handle.truncate(diskBytes);
          await handle.sync();
        } finally {
          await handle.close();
        }
      }
      const record: ReplicaRecord = {
        diskId: request.diskId,
        path: resolved,
        diskBytes,
        epoch,
        appliedSequence: 0,
        syncId: '',
        syncCursor: 0,
        syncComplete: false,
        recoveryPointCount: 0,
        latestRecoveryPointId: '',
        createdTimeMs: Date.now(),
        hashIndexTrusted: !adopted,
        captureId: '',
        appliedChangeSequence: 0,
        retentionWindowMs,
        beforeImageBytes: 0,
      };
      await this.store.replicas.put(record.diskId, record);
      this.log.info({ diskId: record.diskId, path: resolved, diskBytes, epoch, adopted }, 'replica created');
      if (adopted) await this.rebuildHashIndex(record);
      return this.get(record.diskId);
    });
  }

  /** Fencing: batches of older epochs are refused from now on. */
  async setEpoch(diskId: string, epoch: number): Promise<ReplicaRecord> {
    return this.lock(diskId).runExclusive(async () => {
      const record = this.get(diskId);
      if (!Number.isSafeInteger(epoch) || epoch < record.epoch) throw new DrplaneError(ErrorCode.StaleEpoch, `epoch ${epoch} is older than the replica's epoch ${record.epoch}`);
      return epoch === record.epoch ? record : this.raiseEpoch(record, epoch);
    });
  }

  /** Sets how long points are kept; the pruner applies it on its next run. */
  async configure(diskId: string, retentionWindowMs: number): Promise<ReplicaRecord> {
    const windowMs = checkRetentionWindow(retentionWindowMs, false);
    return this.lock(diskId).runExclusive(async () => {
      const record = this.get(diskId);
      return windowMs === record.retentionWindowMs ? record : this.setRetentionWindow(record, windowMs);
    });
  }

  private async setRetentionWindow(record: ReplicaRecord, retentionWindowMs: number): Promise<ReplicaRecord> {
    const updated = await this.store.root.transaction(() => this.store.updateReplica(record.diskId, () => ({ retentionWindowMs })));
    this.log.info({ diskId: record.diskId, from: record.retentionWindowMs, to: retentionWindowMs }, 'retention window set');
    return updated;
  }

  private async raiseEpoch(record: ReplicaRecord, epoch: number): Promise<ReplicaRecord> {
    // Read-modify-write in the transaction: the pruner updates the record's counters without the lock.
    const updated = await this.store.root.transaction(() => this.store.updateReplica(record.diskId, () => ({ epoch })));
    this.log.info({ diskId: record.diskId, from: record.epoch, to: epoch }, 'epoch raised');
    return updated;
  }

  /** Reads the replica and rewrites its hash index (for a disk the index does not describe). Caller holds the lock. */
  private async rebuildHashIndex(record: ReplicaRecord): Promise<Buffer> {
    const leaves = await this.pool.hashFile(record.path, 0, record.diskBytes);
    await this.store.root.transaction(() => {
      for (let page = 0; page * hashPageBytes < leaves.length; page++) {
        const value = leaves.subarray(page * hashPageBytes, (page + 1) * hashPageBytes);
        if (value.some((byte) => byte !== 0)) this.store.hashPages.put([record.diskId, page], Buffer.from(value));
        else this.store.hashPages.remove([record.diskId, page]);
      }
      this.store.updateReplica(record.diskId, () => ({ hashIndexTrusted: true }));
    });
    return leaves;
  }

  async openHashTree(diskId: string, rescan: boolean): Promise<{ treeId: string; tree: HashTree; record: ReplicaRecord; bytesRead: number }> {
    return this.lock(diskId).runExclusive(async () => {
      const record = this.get(diskId);
      const readDisk = rescan || !record.hashIndexTrusted;
      const leaves = readDisk ? await this.rebuildHashIndex(record) : this.store.readLeaves(diskId, record.diskBytes);
      const tree = new HashTree(leaves);
      const treeId = crypto.randomUUID();
      if (this.trees.size >= hashTreesOpenMax) this.trees.delete(this.trees.keys().next().value!);
      this.trees.set(treeId, { diskId, tree });
      return { treeId, tree, record, bytesRead: readDisk ? record.diskBytes : 0 };
    });
  }

  tree(treeId: string): HashTree {
    const entry = this.trees.get(treeId);
    if (!entry) throw notFound(`hash tree ${treeId} is not open (closed, or evicted after ${hashTreesOpenMax} newer ones): open it again`);
    return entry.tree;
  }

  closeTree(treeId: string): void {
    this.trees.delete(treeId);
  }

  async close(): Promise<void> {
    for (const handle of this.files.values()) await handle.close();
    this.files.clear();
  }
}
