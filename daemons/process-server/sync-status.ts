// A sync's figures as the SyncStatus message (GetSync, ListSyncs, and the
// sync of a replication session in GetReplication): the one place the domain
// type of sync.ts meets the wire.
import type { SyncStatus__Output } from '../../generated/drplane/v1/SyncStatus';
import type { SyncStatus } from './sync';

export function syncStatusMessage(status: SyncStatus): SyncStatus__Output {
  return {
    diskId: status.diskId,
    syncId: status.syncId,
    mode: status.mode,
    state: status.state,
    error: status.error,
    diskBytes: status.diskBytes,
    bytesScanned: status.bytesScanned,
    bytesChanged: status.bytesChanged,
    bytesSent: status.bytesSent,
    hashBytesExchanged: status.hashBytesExchanged,
    zeroBytesSkipped: status.zeroBytesSkipped,
    lastAckedSequence: status.lastAckedSequence,
    batchesAcked: status.batchesAcked,
    reconnects: status.reconnects,
    recoveryPointId: status.recoveryPointId,
    startedTimeMs: status.startedTimeMs,
    updatedTimeMs: status.updatedTimeMs,
    resumedFrom: status.resumedFrom,
    noRecoveryPoint: status.noRecoveryPoint,
  };
}
