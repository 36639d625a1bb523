// The syncs of this process server, one per disk, kept in memory only: the
// master target holds the durable state, so a restarted process server loses
// nothing but counters (StartSync with the same sync_id resumes).
import { version } from '../../shared/daemon';
import { listenAddress } from '../../shared/config';
import { failedPrecondition, invalidArgument, notFound } from '../../shared/errors';
import { nameLengthMax, pathLengthMax } from '../../shared/limits';
import type { StartSyncRequest__Output } from '../../generated/drplane/v1/StartSyncRequest';
import type { SyncStatus__Output } from '../../generated/drplane/v1/SyncStatus';
import type { ProcessServerStatus } from '../../generated/drplane/v1/ProcessServerStatus';
import { Sync, type SyncContext, type SyncRequest } from './sync';
import { syncStatusMessage } from './sync-status';

/** Checks a StartSync request field by field; the message names the proto field. */
export function validateStartSync(request: StartSyncRequest__Output): SyncRequest {
  const text = (field: string, value: string, max: number, required = true) => {
    if (required && !value) throw invalidArgument(`${field} is required`);
    if (value.length > max) throw invalidArgument(`${field} is longer than ${max} characters`);
  };
  text('disk_id', request.diskId, nameLengthMax);
  text('sync_id', request.syncId, nameLengthMax);
  text('source_path', request.sourcePath, pathLengthMax);
  text('tag', request.tag, nameLengthMax, false);
  if (request.mode !== 'SYNC_MODE_FULL' && request.mode !== 'SYNC_MODE_DELTA') throw invalidArgument(`mode must be SYNC_MODE_FULL or SYNC_MODE_DELTA, got ${request.mode}`);
  if (!Number.isSafeInteger(request.epoch) || request.epoch < 1) throw invalidArgument(`epoch must be the disk's epoch from the configuration server (1 or more), got ${request.epoch}`);
  for (const [field, address] of [['agent_address', request.agentAddress], ['master_target_address', request.masterTargetAddress]] as const) {
    if (!listenAddress.safeParse(address).success) throw invalidArgument(`${field} must be host:port, got "${address}"`);
  }
  const { diskId, syncId, mode, epoch, agentAddress, sourcePath, masterTargetAddress, tag, noRecoveryPoint } = request;
  return { diskId, syncId, mode, epoch, agentAddress, sourcePath, masterTargetAddress, tag, noRecoveryPoint };
}

export class Syncs {
  private readonly syncs = new Map<string, Sync>();
  /** Bytes sent by syncs that a later sync of the same disk replaced. */
  private bytesSentRetired = 0;

  constructor(
    private readonly name: string,
    private readonly context: SyncContext,
  ) {}

  /** Starts a sync, or returns the status of the same sync_id when it runs or has completed. */
  start(request: StartSyncRequest__Output): SyncStatus__Output {
    const valid = validateStartSync(request);
    const current = this.syncs.get(valid.diskId);
    if (current && current.request.syncId === valid.syncId && (current.running || current.status.state === 'SYNC_STATE_COMPLETED')) return syncStatusMessage(current.status);
    if (current?.running) throw failedPrecondition(`disk ${valid.diskId} has sync ${current.request.syncId} running; stop it first or wait for it to end`);
    if (current) this.bytesSentRetired += current.status.bytesSent;
    // A failed or stopped sync started again with the same id resumes where the master target says it got to.
    const sync = new Sync(valid, this.context);
    this.syncs.set(valid.diskId, sync);
    sync.start();
    return syncStatusMessage(sync.status);
  }

  get(diskId: string): SyncStatus__Output {
    return syncStatusMessage(this.find(diskId).status);
  }

  list(): SyncStatus__Output[] {
    return [...this.syncs.values()].map((sync) => syncStatusMessage(sync.status));
  }

  async stop(diskId: string): Promise<SyncStatus__Output> {
    const sync = this.find(diskId);
    await sync.stop();
    return syncStatusMessage(sync.status);
  }

  /** Stops every running sync (they stay resumable on the master targets). */
  async stopAll(): Promise<void> {
    await Promise.all([...this.syncs.values()].map((sync) => sync.stop()));
  }

  status(hashWorkers: number): ProcessServerStatus {
    const syncs = [...this.syncs.values()];
    return {
      name: this.name,
      version,
      syncsRunning: syncs.filter((sync) => sync.running).length,
      bytesSent: this.bytesSentRetired + syncs.reduce((total, sync) => total + sync.status.bytesSent, 0),
      hashWorkers,
    };
  }

  private find(diskId: string): Sync {
    if (!diskId) throw invalidArgument('disk_id is required');
    const sync = this.syncs.get(diskId);
    if (!sync) throw notFound(`this process server has no sync of disk ${diskId}`);
    return sync;
  }
}
