// Offline prune: when the retention volume is full the master target refuses
// to start (retentionFreeBytesMin), and nothing that runs inside it can free
// space. This prunes the retention store with the daemon stopped: the points
// older than a window the operator gives (the newest point of each disk is
// always kept) and the before-images only they needed, by the pruner's own
// code (retention.ts), then compacts the store file, because LMDB reuses freed
// pages but never gives them back to the file system.
import fs from 'node:fs';
import path from 'node:path';
import { failedPrecondition } from '../../shared/errors';
import { failpoint } from '../../shared/failpoints';
import type { Logger } from '../../shared/log';
import { pruneKeysPerTransactionMax } from '../../shared/limits';
import { RetentionStore, storeFileName } from './retention-store';
import { Retention } from './retention';
import type { Replicas } from './replicas';
import { acquirePruneLock, processesHolding } from './prune-lock';

export interface OfflinePruneOptions {
  retentionDir: string;
  /** Points older than this (by source time) are deleted, whatever the replica's own window says (a longer one is cut). */
  keepMs: number;
  /**
   * Another volume to prune on: the store is copied there, pruned and compacted, and copied back (room for it
   * twice). Unset: pruned in place and compacted beside itself (room for the live data on the retention volume).
   */
  compactVia?: string;
  log: Logger;
  now?: number;
}

export interface OfflinePruneResult {
  replicas: number;
  pointsPruned: number;
  beforeImageBytesPruned: number;
  storeBytesBefore: number;
  storeBytesAfter: number;
}

export async function pruneOffline(options: OfflinePruneOptions): Promise<OfflinePruneResult> {
  const dir = path.resolve(options.retentionDir);
  const file = path.join(dir, storeFileName);
  if (!fs.existsSync(file)) throw failedPrecondition(`${file} does not exist: give the master target's retentionDir (or its dataDir, whose default retention directory is <dataDir>/retention)`);
  // The lock first, the holders second (prune-lock.ts): a master target starting meanwhile opens the store before it
  // reads the lock, so either it sees this lock or this sees its descriptor.
  const lock = acquirePruneLock(file);
  try {
    const holders = processesHolding(fs.realpathSync(file));
    if (holders.length) throw failedPrecondition(`${file} is open in process ${holders.join(', ')}: stop the master target first (systemctl stop drplane-master-target)`);
    await failpoint('offline-prune.locked', lock.file);
    return await pruneLocked(file, options);
  } finally {
    lock.release();
  }
}

/** The prune itself, under the prune lock and with no process holding the store. */
async function pruneLocked(file: string, options: OfflinePruneOptions): Promise<OfflinePruneResult> {
  const dir = path.dirname(file);
  const storeBytesBefore = fs.statSync(file).size;

  // With --compact-via the work happens there: a volume so full that LMDB cannot commit even a deletion (it writes
  // new pages before it frees old ones) is only read. Without it, in place.
  const workDir = options.compactVia ? fs.mkdtempSync(path.join(path.resolve(options.compactVia), 'retention-prune-')) : dir;
  const syncFile = (target: string) => {
    const fd = fs.openSync(target, 'r');
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  };
  let pointsPruned = 0;
  let beforeImageBytesPruned = 0;
  let replicaCount = 0;
  try {
    if (workDir !== dir) {
      const original = new RetentionStore(dir);
      try {
        await original.copyCompacted(path.join(workDir, storeFileName));
      } catch (error) {
        throw failedPrecondition(`cannot copy ${file} into ${workDir} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}): --compact-via needs room for the store, twice`);
      } finally {
        await original.close();
      }
    }
    const store = new RetentionStore(workDir);
    const compacted = path.join(workDir, `${storeFileName}.compact-${process.pid}.tmp`);
    try {
      const cut = <T extends { retentionWindowMs: number }>(record: T): T => ({ ...record, retentionWindowMs: Math.min(record.retentionWindowMs, options.keepMs) });
      // The pruner reads only the store and the replicas' records: no replica file is opened.
      const replicas = {
        store,
        list: () => store.listReplicas().map(cut),
        get: (diskId: string) => {
          const record = store.replica(diskId);
          if (!record) throw failedPrecondition(`replica ${diskId} vanished from the store`);
          return cut(record);
        },
      } as unknown as Replicas;
      replicaCount = store.listReplicas().filter((record) => !record.retired).length;
      const retention = new Retention(replicas, options.log, { pruneIntervalMs: 1_000, pruneKeysPerTransaction: pruneKeysPerTransactionMax });
      await retention.pruneOnce(options.now ?? Date.now());
      pointsPruned = retention.recoveryPointsPruned;
      beforeImageBytesPruned = retention.beforeImageBytesPruned;
      options.log.info({ pointsPruned, beforeImageBytesPruned }, 'retention store pruned');
      // LMDB reuses freed pages but never shrinks its file: a compacted copy does.
      fs.rmSync(compacted, { force: true });
      try {
        await store.copyCompacted(compacted);
        syncFile(compacted);
      } catch (error) {
        fs.rmSync(compacted, { force: true });
        const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
        throw failedPrecondition(`pruned, but the compacted copy does not fit in ${workDir} (${code}): give --compact-via a directory on another volume with room for the store, twice`);
      }
    } finally {
      await store.close();
    }
    if (workDir === dir) fs.renameSync(compacted, file);
    else {
      // The pruned, compacted copy is complete and durable elsewhere: the store goes, then the copy comes back.
      const back = path.join(dir, `${storeFileName}.compact-${process.pid}.tmp`);
      fs.rmSync(file);
      try {
        fs.copyFileSync(compacted, back);
        syncFile(back);
        fs.renameSync(back, file);
      } catch (error) {
        throw failedPrecondition(`the pruned store could not be copied back (${(error as Error).message}): it is complete at ${compacted}; copy it to ${file} by hand`);
      }
    }
    fs.rmSync(`${file}-lock`, { force: true });
    syncFile(dir);
    if (workDir !== dir) fs.rmSync(workDir, { recursive: true, force: true });
  } catch (error) {
    // Nothing of the original is lost on any failure before the copy came back; the work directory goes.
    if (workDir !== dir && fs.existsSync(file)) fs.rmSync(workDir, { recursive: true, force: true });
    throw error;
  }
  const storeBytesAfter = fs.statSync(file).size;
  return { replicas: replicaCount, pointsPruned, beforeImageBytesPruned, storeBytesBefore, storeBytesAfter };
}
