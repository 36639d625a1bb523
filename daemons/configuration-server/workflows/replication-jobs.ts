// The replication family of jobs (enable, resync; reprotect and failback run
// the same steps toward the other site): their kinds, the parameters each
// persists with its job to resume from, and the deadlines of their steps.
import type { CaptureMode__Output } from '../../../generated/drplane/v1/CaptureMode';
import type { DiskRecord } from '../store/records';

/** Deadline of asking an agent how far its scan pass has read (a progress figure: never worth holding the job's poll). */
export const scanProgressAskTimeoutMs = 1_000;
/** How often a session's progress is asked of the process server while a job waits for it. */
export const replicationPollIntervalMs = 300;
/** Deadline of a CreateReplica that copies a seed disk on the master target (a reflink is instant; a copy reads the whole disk). */
export const replicaSeedTimeoutMs = 60 * 60_000;
export const enableJobKind = 'enable-replication';
export const resyncJobKind = 'resync';
/** Tag of a disk's first recovery point. */
export const initialSyncTag = 'initial-sync';

export interface ReplicationDisk {
  diskId: string;
  sourcePath: string;
  diskBytes: number;
  replicaPath: string;
  /** The epoch this job uses; 0 until issued (enable) or copied (resync). */
  epoch: number;
  replicaReady: boolean;
  /** The replica existed before this job (an earlier enable): the session syncs it by hashes, not in full. */
  replicaAdopted: boolean;
  /** Reprotect to the original location: the machine's disk at the target site, which the new replica starts as a copy of ('' otherwise). */
  seedPath?: string;
  /** The master target made the replica as a copy of seedPath: the session syncs it by hashes. */
  replicaSeeded?: boolean;
  /** StartReplication (enable) or ResyncReplication (resync) answered. */
  started: boolean;
  completed: boolean;
  bytesScanned: number;
  bytesSent: number;
  recoveryPointId: string;
  /** Resync: the session's newest point and resync count when the resync was asked; it is done past both (-1: a new session). */
  pointSequenceBefore: number;
  resyncsBefore: number;
  /** Resync: the session's capture when the resync was asked; a scan's progress counts only a newer capture's first pass. */
  captureIdBefore?: string;
  /**
   * Resync of a scan capture (no SyncStatus: the restarted capture's first pass is the sync): the
   * session's bytes sent when the resync was asked, so the job counts what went on the wire since.
   */
  sessionBytesSentBefore?: number;
}

export interface ReplicationParams {
  processServerId: string;
  masterTargetId: string;
  datastore: string;
  policyId: string;
  captureMode: CaptureMode__Output;
  scanIntervalMs: number;
  /** Resync: every block, not only those that differ. */
  full: boolean;
  disks: ReplicationDisk[];
  /**
   * Reprotect: the target master target may hold the disk already (a replica
   * retired at a commit): the new epoch is above both its epoch and ours.
   */
  epochAboveTarget?: boolean;
}

export function newReplicationDisk(disk: DiskRecord): ReplicationDisk {
  return {
    diskId: disk.diskId,
    sourcePath: disk.sourcePath,
    diskBytes: disk.diskBytes,
    replicaPath: disk.replicaPath,
    epoch: disk.epoch,
    replicaReady: false,
    replicaAdopted: false,
    started: false,
    completed: false,
    bytesScanned: 0,
    bytesSent: 0,
    recoveryPointId: '',
    pointSequenceBefore: 0,
    resyncsBefore: 0,
  };
}
