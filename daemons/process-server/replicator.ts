// The replicator of a replication session: brings the replica up to date
// with a sync under the capture (no point at its end), notes consistentFrom,
// then sends the journal as batches that close recovery points
// (change-batches.ts). Peers that go away make the session DEGRADED and it
// retries; only what needs the operator makes it FAILED.
import { setTimeout as sleep } from 'node:timers/promises';
import { unary } from '../../shared/grpc';
import { DrplaneError, ErrorCode } from '../../shared/errors';
import { hashBytes } from '../../shared/hashing';
import { blockBytes } from '../../shared/limits';
import { Backoff } from '../../shared/backoff';
import type { Replica__Output } from '../../generated/drplane/v1/Replica';
import { ChangeBatchSender, type ClosingPoint, type FirstPassSend, type SentBatch } from './change-batches';
import { FirstPassFilter } from './first-pass-filter';
import { JournalCorruptError, type Journal } from './journal';
import { replicaContent } from './scan-baseline';
import { isStop, type Session } from './session';
import { hashTreeOpenTimeoutMs, retryBackoffMsMax, retryBackoffMsMin, Sync, type SyncStatus } from './sync';

export class Replicator {
  private sync: Sync | undefined;
  private lastSyncStatus: SyncStatus | null = null;

  constructor(private readonly session: Session) {}

  get syncRunning(): boolean {
    return this.sync?.running ?? false;
  }

  /** The running sync's figures, else the last one's (null: none ran since the daemon started). */
  get syncStatus(): SyncStatus | null {
    return this.sync?.status ?? this.lastSyncStatus;
  }

  /** Runs a phase at a time (the pending sync, or the journal) until the session stops; retries what may be retried. */
  async run(): Promise<void> {
    const session = this.session;
    const { log } = session.context;
    const backoff = new Backoff({ initialMs: retryBackoffMsMin, maxMs: retryBackoffMsMax });
    while (!session.stopped) {
      const release = await session.replicatorLock.acquire();
      const phase = (session.phase = new AbortController());
      const stop = () => phase.abort();
      session.stopping.signal.addEventListener('abort', stop, { once: true });
      try {
        if (session.stopped) return;
        if (session.failedReason || !session.journal.captureId || session.journalRestart) {
          // Failed: wait for the operator (StartReplication, ResyncReplication). No capture yet, or a journal to restart: wait for the receiver.
          await sleep(60_000, undefined, { signal: phase.signal }).catch(() => undefined);
          continue;
        }
        if (session.state.sync && session.spec.captureMode === 'CAPTURE_SCAN') {
          // Scan never syncs under the capture: the receiver restarts the capture, then resets the journal (which wakes this).
          await sleep(60_000, undefined, { signal: phase.signal }).catch(() => undefined);
          continue;
        }
        const appliedBefore = session.batchesApplied;
        if (session.state.sync) await this.runSync(phase.signal);
        else await this.sendJournal(phase.signal);
        if (session.batchesApplied > appliedBefore) backoff.reset();
      } catch (error) {
        if (phase.signal.aborted || session.stopped) continue;
        if (error instanceof JournalCorruptError) {
          log.error({ diskId: session.spec.diskId, err: error.message }, 'journal record unreadable: starting a new journal and a delta sync');
          // The receiver restarts it: only it knows that nothing is being appended.
          session.journalRestart = `journal record unreadable (${error.message})`;
          session.stream?.abort();
          continue;
        }
        const drplaneError = error instanceof DrplaneError ? error : new DrplaneError(ErrorCode.Internal, (error as Error).message);
        if (!drplaneError.retryable) {
          session.failedReason = `${drplaneError.message}; fix it, then call StartReplication again (or ResyncReplication)`;
          log.error({ diskId: session.spec.diskId, code: drplaneError.code, err: drplaneError.message }, 'replication failed');
          session.touch();
          continue;
        }
        const delayMs = backoff.nextDelayMs();
        log.warn({ diskId: session.spec.diskId, err: drplaneError.message, retryInMs: delayMs }, 'replication interrupted; retrying');
        await sleep(delayMs, undefined, { signal: phase.signal }).catch(() => undefined);
      } finally {
        session.stopping.signal.removeEventListener('abort', stop);
        session.phase = undefined;
        release();
      }
    }
  }

  /** Runs (or resumes) the pending sync; at its end notes consistentFrom. */
  private async runSync(signal: AbortSignal): Promise<void> {
    const session = this.session;
    const pending = session.state.sync!;
    const replica = await session.replica(signal);
    if (!pending.mode) {
      // The first sync may be named by StartReplication; otherwise a replica that never held data gets everything.
      const first = session.state.syncsStarted <= 1;
      // A seeded replica (a copy of the machine's old disk, made at reprotect) holds data although nothing was applied.
      pending.mode = first && session.spec.initialSync ? session.spec.initialSync : replica.appliedSequence === 0 && !replica.syncComplete && !replica.seeded ? 'SYNC_MODE_FULL' : 'SYNC_MODE_DELTA';
      await session.persist();
    }
    const sync = new Sync(
      {
        diskId: session.spec.diskId,
        syncId: pending.syncId,
        mode: pending.mode,
        epoch: session.spec.epoch,
        agentAddress: session.spec.agentAddress,
        sourcePath: session.spec.sourcePath,
        masterTargetAddress: session.spec.masterTargetAddress,
        tag: session.spec.tag,
        noRecoveryPoint: true,
      },
      session.context,
    );
    this.sync = sync;
    const onAbort = () => void sync.stop();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      sync.start();
      await sync.finished;
    } finally {
      signal.removeEventListener('abort', onAbort);
      this.lastSyncStatus = sync.status;
      this.sync = undefined;
      session.touch();
    }
    if (signal.aborted) return;
    const status = this.lastSyncStatus!;
    if (status.state !== 'SYNC_STATE_COMPLETED') throw sync.failure ?? new DrplaneError(ErrorCode.Unavailable, status.error || `the sync ended ${status.state}`);
    session.masterTargetConnected = true;
    session.masterTargetProblem = '';
    // Every write the sync could have read has a record before the agent's next_sequence now.
    const agent = session.context.peers.agent(session.spec.agentAddress);
    const capture = await session.ask(`agent ${session.spec.agentAddress}`, unary(agent, agent.startCapture, { path: session.spec.sourcePath, mode: session.spec.captureMode, scanIntervalMs: session.spec.scanIntervalMs }, { timeoutMs: hashTreeOpenTimeoutMs(status.diskBytes) }), signal);
    if (capture.captureId !== session.journal.captureId) throw new DrplaneError(ErrorCode.Unavailable, `the agent's capture changed to ${capture.captureId} during the sync; the session resyncs under it`);
    session.state = { ...session.state, consistentFrom: capture.nextSequence, replayFrom: session.state.replayFrom, sync: null };
    await session.persist();
    session.context.log.info({ diskId: session.spec.diskId, syncId: pending.syncId, mode: pending.mode, consistentFrom: capture.nextSequence, bytesChanged: status.bytesChanged }, 'sync under the capture completed');
    session.touch();
  }

  /** Sends the journal until the phase is stopped or the master target fails. */
  private async sendJournal(signal: AbortSignal): Promise<void> {
    const session = this.session;
    const journal = session.journal;
    const replica = await session.replica(signal);
    await this.learnLatestPoint(replica, signal);
    const sameCapture = replica.captureId !== '' && replica.captureId === journal.captureId;
    const start = sameCapture ? Math.max(replica.appliedChangeSequence + 1, session.state.replayFrom) : session.state.replayFrom;
    if (start < journal.firstRetainedSequence && start <= journal.durableSequence) {
      // The replica needs records the journal no longer has (e.g. the master target's store was restored from an older copy).
      const reason = `the replica needs record ${start}, the journal starts at ${journal.firstRetainedSequence}`;
      if (session.spec.captureMode === 'CAPTURE_SCAN') {
        await session.scheduleSync('', 1, `${reason}: the scan capture restarts`);
        session.stream?.abort();
        return;
      }
      await session.scheduleSync('SYNC_MODE_DELTA', journal.nextSequence, reason);
      return;
    }
    session.appliedChangeSequence = Math.max(session.appliedChangeSequence, start - 1);
    if (start - 1 > journal.releasedSequence) session.release(journal, start - 1);
    session.settleFlushes();
    const firstPass = await this.firstPassSend(journal, start, replica, signal);
    const masterTarget = session.context.peers.masterTarget(session.spec.masterTargetAddress);
    const sender = new ChangeBatchSender({
      diskId: session.spec.diskId,
      epoch: session.spec.epoch,
      captureId: journal.captureId,
      journal,
      masterTarget,
      peer: `master target ${session.spec.masterTargetAddress}`,
      firstBatchSequence: replica.appliedSequence + 1,
      startSequence: start,
      consistentFrom: session.state.consistentFrom,
      everyBoundaryConsistent: () => session.captureMode === 'CAPTURE_WRITE_THROUGH',
      crashConsistentIntervalMs: () => session.spec.crashConsistentIntervalMs,
      watermark: () => session.watermark,
      flushTarget: () => session.flushTarget(),
      tagFor: (point) => (!session.state.firstPointMade && point.kind === 'CRASH_CONSISTENT' ? session.spec.tag : ''),
      batchBytesMax: session.context.batchBytesMax,
      pool: session.context.pool,
      compression: session.context.compression,
      onSent: (extent) => {
        session.bytesSent += extent.data.byteLength;
        session.context.metrics?.sentBytes.inc({ disk_id: session.spec.diskId, mode: 'continuous' }, extent.data.byteLength);
        session.context.metrics?.sentPlainBytes.inc({ disk_id: session.spec.diskId, mode: 'continuous' }, extent.length);
      },
      onApplied: (batch, ack) => this.batchApplied(journal, batch, ack.recoveryPointId),
      onSourceClockAhead: (aheadMs) => {
        if (aheadMs > 0 && session.sourceClockAheadMs === 0) session.context.log.warn({ diskId: session.spec.diskId, aheadMs }, "the agent's clock is ahead of this process server's: its points are dated with this clock");
        session.sourceClockAheadMs = aheadMs;
      },
      firstPass,
    });
    session.sender = sender;
    const onAbort = () => sender.stop();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      await sender.run();
    } catch (error) {
      if (error instanceof DrplaneError && error.code === ErrorCode.Unavailable) session.masterTargetAway(error.message);
      throw error;
    } finally {
      signal.removeEventListener('abort', onAbort);
      session.sender = undefined;
    }
  }

  /**
   * The sender's part in filtering a scan capture's first pass, while records
   * of it remain to be sent. After a restart of the process server the filter
   * is rebuilt from the replica's hashes now: the blocks the rest of the first
   * pass covers have not been written since the capture started (each block
   * once per pass, in order), so they still hold what the filter compares with.
   */
  private async firstPassSend(journal: Journal, start: number, replica: Replica__Output, signal: AbortSignal): Promise<FirstPassSend | undefined> {
    const session = this.session;
    const persisted = session.state.firstPass;
    if (!persisted || persisted.captureId !== journal.captureId || (persisted.endSequence !== 0 && start > persisted.endSequence)) return undefined;
    const captureId = persisted.captureId;
    if (session.firstPass?.captureId !== captureId) {
      const content = await replicaContent(session.baselineSession(), replica, false, signal);
      // All zeros (nothing applied yet, or only zeros): every hash is 0.
      const hashes = content.hashes ?? (content.scanBaseline === 'SCAN_BASELINE_EMPTY' ? Buffer.alloc((replica.diskBytes / blockBytes) * hashBytes) : undefined);
      session.firstPass = { captureId, filter: new FirstPassFilter(hashes, session.context.pool) };
    }
    // The sender's own copy of the end: it must never read 0 again once the pass ended (0 would mean "filter").
    let endSequence = persisted.endSequence;
    return {
      filter: session.firstPass.filter,
      diskBytes: replica.diskBytes,
      endSequence: () => endSequence,
      passEnded: async (sequence) => {
        endSequence = sequence;
        if (session.state.firstPass?.captureId !== captureId) return;
        session.state = { ...session.state, firstPass: { captureId, endSequence: sequence } };
        await session.persist();
      },
    };
  }

  /** The first pass's last record is applied: its filter (and the replica hashes it holds) is done. */
  private firstPassApplied(journal: Journal, changeSequence: number): void {
    const session = this.session;
    const persisted = session.state.firstPass;
    if (!persisted || persisted.captureId !== journal.captureId || persisted.endSequence === 0 || changeSequence < persisted.endSequence) return;
    const figures = session.firstPass?.captureId === persisted.captureId ? session.firstPass.filter.figures : undefined;
    session.firstPass?.filter.release();
    session.firstPass = undefined;
    session.state = { ...session.state, firstPass: null };
    session.persist().catch((error: unknown) => session.context.log.warn({ diskId: session.spec.diskId, err: (error as Error).message }, 'cannot write the session record'));
    session.context.log.info({ diskId: session.spec.diskId, captureId: persisted.captureId, endSequence: persisted.endSequence, ...figures }, 'first scan pass applied: only the blocks that differed from the replica were sent');
  }

  /** The newest point on the replica, so status and flush know it after a restart. */
  private async learnLatestPoint(replica: Replica__Output, signal: AbortSignal): Promise<void> {
    const session = this.session;
    if (!replica.latestRecoveryPointId || session.latestPoint?.id === replica.latestRecoveryPointId) return;
    const masterTarget = session.context.peers.masterTarget(session.spec.masterTargetAddress);
    try {
      session.latestPoint = await session.ask('master target', unary(masterTarget, masterTarget.selectRecoveryPoint, { diskId: session.spec.diskId, selector: 'BY_ID', pointId: replica.latestRecoveryPointId }, { timeoutMs: 5_000 }), signal);
    } catch (error) {
      if (isStop(error)) throw error;
      // An older master target without SelectRecoveryPoint: what the replica says is enough for the status.
      const sequence = Number(replica.latestRecoveryPointId.split('@').pop());
      session.latestPoint = { id: replica.latestRecoveryPointId, diskId: session.spec.diskId, sequence, kind: 'CRASH_CONSISTENT', sourceTimeMs: replica.latestRecoveryPointTimeMs, appliedTimeMs: 0, tag: '', syncId: '', captureId: replica.captureId, changeSequence: replica.appliedChangeSequence };
    }
  }

  private batchApplied(journal: Journal, batch: SentBatch, pointId: string): void {
    const session = this.session;
    session.appliedChangeSequence = batch.changeSequence;
    this.firstPassApplied(journal, batch.changeSequence);
    session.batchesApplied++;
    session.bytesApplied += batch.plainBytes;
    session.context.metrics?.batchesAcknowledged.inc({ disk_id: session.spec.diskId, mode: 'continuous' });
    session.applied.add(batch.plainBytes);
    if (batch.point && pointId) this.pointApplied(journal.captureId, batch, batch.point, pointId);
    session.release(journal, batch.changeSequence);
    session.settleFlushes();
    session.touch();
  }

  private pointApplied(captureId: string, batch: SentBatch, point: ClosingPoint, pointId: string): void {
    const session = this.session;
    session.latestPoint = {
      id: pointId,
      diskId: session.spec.diskId,
      sequence: batch.sequence,
      kind: point.kind,
      sourceTimeMs: point.sourceTimeMs,
      appliedTimeMs: Date.now(),
      tag: point.tag,
      syncId: '',
      captureId,
      changeSequence: batch.changeSequence,
    };
    session.recoveryPoints++;
    if (!session.state.firstPointMade) {
      session.state = { ...session.state, firstPointMade: true };
      session.persist().catch((error: unknown) => session.context.log.warn({ diskId: session.spec.diskId, err: (error as Error).message }, 'cannot write the session record'));
    }
  }
}
