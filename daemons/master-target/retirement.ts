// Retiring a replica at failover commit (RetireReplica, docs/failover.md).
//
// The machine now runs from its recovered disk, so the replica, its points,
// before-images, batch states and hash index are no longer needed. In order:
//   1. one commit marks the record retired (epoch = max(request, current));
//      from then on nothing serves the disk: batches of any epoch are refused,
//      it lists no points, and it no longer counts against disksMax;
//   2. its keys are deleted in transactions of at most pruneKeysPerTransaction
//      keys (as the pruner does, so apply on other disks never waits long);
//   3. its file is removed and its directory fsynced;
//   4. one commit marks the retirement finished.
// A crash anywhere leaves a retired record whose retirement is unfinished:
// start-up (before serving) or the next RetireReplica or CreateReplica of the
// disk finishes it. Every step is idempotent.
//
// Concurrency: it runs under the disk's lock (no apply, copy or rescan of the
// disk meanwhile). A materialisation pins its point before it takes the lock,
// so the pins are checked and the disk marked retiring in one synchronous step:
// either the materialisation pinned first (retirement refused, try again once
// it ends) or it finds the disk retiring (refused).
import fs from 'node:fs';
import path from 'node:path';
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument } from '../../shared/errors';
import { failpoint } from '../../shared/failpoints';
import type { Logger } from '../../shared/log';
import { besideTemporary } from './datastore';
import { syncDirectory } from '../../shared/file-io';
import { checkDiskId, checkEpochStep, type Replicas } from './replicas';
import type { Retention } from './retention';
import { emptyReplicaState, type ReplicaRecord } from './retention-store';

const yieldToOthers = () => new Promise<void>((resolve) => setImmediate(resolve));

export class Retirement {
  constructor(
    private readonly replicas: Replicas,
    private readonly retention: Retention,
    private readonly log: Logger,
    private readonly keysPerTransaction: number,
  ) {}

  /** RetireReplica: idempotent; a repeated call finishes an interrupted retirement. */
  async retire(diskId: string, epoch: number): Promise<ReplicaRecord> {
    checkDiskId(diskId);
    if (!Number.isSafeInteger(epoch) || epoch < 1) throw invalidArgument('epoch must be 1 or more (the epoch of the failover that retires the replica)');
    return this.replicas.lock(diskId).runExclusive(async () => {
      let record = this.replicas.get(diskId);
      if (epoch < record.epoch) {
        throw new DrplaneError(ErrorCode.StaleEpoch, `epoch ${epoch} is older than the epoch ${record.epoch} of disk ${diskId}'s replica: a newer failover owns it; nothing was retired`);
      }
      checkEpochStep(diskId, record.epoch, epoch);
      if (!record.retired) record = await this.markRetired(record, epoch);
      else if (epoch > record.epoch) record = await this.replicas.store.changeReplica(diskId, () => ({ epoch }));
      if (!record.retirementFinished) record = await this.finish(record);
      return record;
    });
  }

  /** Start-up, before the daemon serves: finishes every retirement a crash interrupted. */
  async finishInterrupted(): Promise<number> {
    let finished = 0;
    for (const record of this.replicas.list()) {
      if (!record.retired || record.retirementFinished) continue;
      await this.replicas.lock(record.diskId).runExclusive(() => this.finish(this.replicas.get(record.diskId)));
      this.log.warn({ diskId: record.diskId, epoch: record.epoch }, 'finished a retirement a crash interrupted');
      finished++;
    }
    return finished;
  }

  /** Before a CreateReplica: a retired disk's interrupted retirement is finished first, so its new replica starts clean. */
  async finishIfInterrupted(diskId: string): Promise<void> {
    checkDiskId(diskId);
    const stored = this.replicas.store.replica(diskId);
    if (!stored?.retired || stored.retirementFinished) return;
    await this.replicas.lock(diskId).runExclusive(async () => {
      const record = this.replicas.get(diskId);
      if (record.retired && !record.retirementFinished) await this.finish(record);
    });
  }

  private async markRetired(record: ReplicaRecord, epoch: number): Promise<ReplicaRecord> {
    const { diskId } = record;
    // Synchronous with the pin check: see the top of this file.
    if (this.retention.pinned(diskId)) {
      throw failedPrecondition(`a recovery point of disk ${diskId} is being materialised: retire its replica once the materialisation has finished`);
    }
    this.replicas.beginRetiring(diskId);
    try {
      const retired = await this.replicas.store.changeReplica(diskId, (current) => ({
          epoch: Math.max(epoch, current.epoch),
          retired: true,
          retirementFinished: false,
          ...emptyReplicaState,
          hashIndexTrusted: false,
          seeding: false,
        }));
      this.log.info({ diskId, epoch: retired.epoch, path: retired.path }, 'replica retired (failover commit); removing its points, before-images and file');
      await failpoint('retire.marked');
      return retired;
    } finally {
      this.replicas.endRetiring(diskId);
    }
  }

  /** Steps 2-4 for a record already marked retired. Caller holds the disk's lock. */
  private async finish(record: ReplicaRecord): Promise<ReplicaRecord> {
    const { diskId } = record;
    const store = this.replicas.store;
    // The pruner skips retired disks; a run already inside this one stops at its next transaction.
    await this.retention.idle(diskId);
    this.retention.forget(diskId);
    this.replicas.closeTreesOf(diskId);
    await this.replicas.closeFile(diskId);
    let keys = 0;
    for (;;) {
      const deleted = await store.deleteDiskKeys(diskId, this.keysPerTransaction);
      if (deleted === 0) break;
      keys += deleted;
      await failpoint('retire.deleted-keys');
      await yieldToOthers();
    }
    // Another disk's replica may have been created at this path only after this retirement finished (replicaAt), so the file is this replica's.
    await fs.promises.rm(besideTemporary(record.path, 'seed'), { force: true });
    await fs.promises.rm(record.path, { force: true });
    await syncDirectory(path.dirname(record.path)).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOENT') throw error;
    });
    await failpoint('retire.file-removed');
    const finished = await store.changeReplica(diskId, () => ({ retirementFinished: true, recoveryPointCount: 0, beforeImageBytes: 0 }));
    this.log.info({ diskId, epoch: finished.epoch, keys, path: record.path }, 'replica retirement finished');
    return finished;
  }
}
