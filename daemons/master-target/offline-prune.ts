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
import { acquirePruneLock, prunedCopyMarkerPath, processesHolding } from './prune-lock';

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
  /** This run only finished the copy-back of a prune killed after it removed the store (nothing more was pruned). */
  resumed?: boolean;
}

export async function pruneOffline(options: OfflinePruneOptions): Promise<OfflinePruneResult> {
  const dir = path.resolve(options.retentionDir);
  const file = path.join(dir, storeFileName);
  const marker = prunedCopyMarkerPath(file);
  if (!fs.existsSync(file) && fs.lstatSync(marker, { throwIfNoEntry: false })) {
    const lock = acquirePruneLock(file);
    try {
      return finishCopyBack(file, marker, options.log);
    } finally {
      lock.release();
    }
  }
  if (!fs.existsSync(file)) throw failedPrecondition(`${file} does not exist: give the master target's retentionDir (or its dataDir, whose default retention directory is <dataDir>/retention)`);
  // The lock first, the holders second (prune-lock.ts): a master target starting meanwhile opens the store before it
  // reads the lock, so either it sees this lock or this sees its descriptor.
  const lock = acquirePruneLock(file);
  try {
    const holders = processesHolding(fs.realpathSync(file));
    if (holders.length) throw failedPrecondition(`${file} is open in process ${holders.join(', ')}: stop the master target first (systemctl stop drplane-master-target)`);
    await failpoint('offline-prune.locked', lock.file);
    // Compacted copies of a prune killed in place take room the volume lacks: no other prune runs now.
    for (const name of fs.readdirSync(path.dirname(file))) if (name.startsWith(`${storeFileName}.compact-`) && name.endsWith('.tmp')) fs.rmSync(path.join(path.dirname(file), name), { force: true });
    return await pruneLocked(file, options);
  } finally {
    lock.release();
  }
}

/**
 * Copies the pruned store back from where the marker points (--compact-via), durably, then removes the
 * marker, the old LMDB lock file and the work directory. Also what a run after a killed prune does.
 */
function finishCopyBack(file: string, marker: string, log: Logger): OfflinePruneResult {
  const dir = path.dirname(file);
  const compacted = fs.readlinkSync(marker);
  if (!fs.existsSync(compacted)) throw failedPrecondition(`${file} is missing and ${marker} names the pruned copy ${compacted}, which is gone too: restore the store from a backup of the retention volume`);
  const back = path.join(dir, `${storeFileName}.compact-${process.pid}.tmp`);
  try {
    fs.copyFileSync(compacted, back);
    syncFile(back);
    fs.renameSync(back, file);
  } catch (error) {
    fs.rmSync(back, { force: true });
    throw failedPrecondition(`the pruned store could not be copied back (${(error as Error).message}): it is complete at ${compacted}; run drctl prune-retention again, or copy it to ${file} by hand and remove ${marker}`);
  }
  fs.rmSync(`${file}-lock`, { force: true });
  fs.rmSync(marker);
  syncFile(dir);
  // The work directory pruneLocked made (mkdtemp retention-prune-*), and nothing else.
  if (path.basename(path.dirname(compacted)).startsWith('retention-prune-')) fs.rmSync(path.dirname(compacted), { recursive: true, force: true });
  log.info({ store: file }, 'the pruned store is back in place');
  const bytes = fs.statSync(file).size;
  return { replicas: 0, pointsPruned: 0, beforeImageBytesPruned: 0, storeBytesBefore: bytes, storeBytesAfter: bytes, resumed: true };
}

/** fsync of a file or directory. */
function syncFile(target: string): void {
  const fd = fs.openSync(target, 'r');
  fs.fsyncSync(fd);
  fs.closeSync(fd);
}

/** The prune itself, under the prune lock and with no process holding the store. */
async function pruneLocked(file: string, options: OfflinePruneOptions): Promise<OfflinePruneResult> {
  const dir = path.dirname(file);
  const storeBytesBefore = fs.statSync(file).size;

  // With --compact-via the work happens there: a volume so full that LMDB cannot commit even a deletion (it writes
  // new pages before it frees old ones) is only read. Without it, in place.
  const workDir = options.compactVia ? fs.mkdtempSync(path.join(path.resolve(options.compactVia), 'retention-prune-')) : dir;
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
      // The pruned, compacted copy is complete and durable elsewhere: the store goes, then the copy comes back. A
      // marker beside the store says where the copy is until it is back: a prune killed meanwhile is finished by the
      // next run, and a master target refuses to start on a store that is not there (it would make an empty one).
      const marker = prunedCopyMarkerPath(file);
      try {
        fs.symlinkSync(compacted, marker);
        syncFile(dir);
      } catch (error) {
        throw failedPrecondition(`cannot leave ${marker} to say where the pruned copy is (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}): the store was not touched; free a little space on its volume and run again`);
      }
      fs.rmSync(file);
      await failpoint('offline-prune.original-removed');
      finishCopyBack(file, marker, options.log);
      return { replicas: replicaCount, pointsPruned, beforeImageBytesPruned, storeBytesBefore, storeBytesAfter: fs.statSync(file).size };
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
