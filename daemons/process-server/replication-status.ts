// GetReplication's answer for one session: its state (and why), where the
// journal and the replica are, and the figures; read from the session as it is
// now, nothing of it persisted.
import type { ReplicationState__Output } from '../../generated/drplane/v1/ReplicationState';
import type { ReplicationStatus__Output } from '../../generated/drplane/v1/ReplicationStatus';
import type { Session } from './session';
import type { SyncStatus } from './sync';
import { syncStatusMessage } from './sync-status';

/** The session's status; `sync` is the running (or last) sync's figures. */
export function replicationStatus(session: Session, sync: SyncStatus | null): ReplicationStatus__Output {
  const now = Date.now();
  const backlogBytes = session.backlogBytes;
  const applyRate = session.applied.perSecond();
  const reasons = [session.agentProblem, session.masterTargetProblem, session.cacheProblem].filter(Boolean);
  let state: ReplicationState__Output;
  if (session.stopped) state = 'REPLICATION_STOPPED';
  else if (session.failedReason) state = 'REPLICATION_FAILED';
  else if (reasons.length > 0) state = 'REPLICATION_DEGRADED';
  // Until its sync has ended, a capture (or one the journal has just moved to) makes no points.
  else if (session.state.sync || session.state.consistentFrom === 0 || session.state.captureId !== session.journal.captureId) state = 'REPLICATION_SYNCING';
  // Scan: a new capture's first pass is the sync; it is over once a marker of the capture made a point.
  else if (session.spec.captureMode === 'CAPTURE_SCAN' && session.latestPoint?.captureId !== session.journal.captureId) state = 'REPLICATION_SYNCING';
  else state = 'REPLICATION_REPLICATING';
  let reason = session.failedReason || reasons.join('; ');
  if (!reason && state === 'REPLICATION_SYNCING') {
    if (session.spec.captureMode === 'CAPTURE_SCAN') {
      reason = session.state.sync || !session.journal.captureId ? `the scan capture on agent ${session.spec.agentAddress} (re)starts; its first pass is the sync` : `scan capture ${session.journal.captureId} ships its first pass; points follow its first quiet or snapshot pass`;
      if (!session.state.sync && session.state.firstPass?.captureId === session.journal.captureId) reason += '; only the blocks that differ from the replica go to the master target';
      else if (!session.state.sync && session.firstPassAtAgent === session.journal.captureId) reason += '; only the blocks that differ from the replica are read and shipped';
    }
    else reason = session.journal.captureId ? `${session.state.sync?.mode || 'a'} sync runs under capture ${session.journal.captureId}; points follow it` : `waiting for the capture on agent ${session.spec.agentAddress}`;
  }
  const latestTime = session.latestPoint?.sourceTimeMs ?? 0;
  return {
    diskId: session.spec.diskId,
    epoch: session.spec.epoch,
    state,
    stateReason: reason,
    captureMode: session.captureMode,
    captureId: session.journal.captureId,
    sync: sync && syncStatusMessage(sync),
    receivedSequence: session.journal.durableSequence,
    appliedSequence: session.appliedChangeSequence,
    backlogBytes,
    cacheBytes: session.journal.diskBytes,
    memoryBytes: session.journal.memoryBytes,
    applyBytesPerSecond: applyRate,
    receiveBytesPerSecond: session.received.perSecond(),
    etaMs: backlogBytes === 0 ? 0 : applyRate > 0 ? Math.ceil((backlogBytes / applyRate) * 1000) : -1,
    latestRecoveryPointId: session.latestPoint?.id ?? '',
    latestRecoveryPointTimeMs: latestTime,
    // Without any point yet, the whole life of the session is at risk.
    rpoMs: Math.max(0, now - (latestTime || session.state.startedTimeMs)),
    agentConnected: session.agentConnected,
    masterTargetConnected: session.masterTargetConnected,
    resyncs: Math.max(0, session.state.syncsStarted - 1),
    batchesApplied: session.batchesApplied,
    bytesApplied: session.bytesApplied,
    bytesSent: session.bytesSent,
    recoveryPoints: session.recoveryPoints,
    startedTimeMs: session.state.startedTimeMs,
    updatedTimeMs: session.updatedTimeMs,
    crashConsistentIntervalMs: session.spec.crashConsistentIntervalMs,
    sourceClockAheadMs: session.sourceClockAheadMs,
  };
}
