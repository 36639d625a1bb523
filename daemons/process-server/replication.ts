// One disk's continuous replication session (docs/continuous-replication.md),
// put together from its parts, which share one Session (session.ts: spec,
// persisted state, journal, figures):
//   - receiver.ts keeps the agent's capture streaming into the journal;
//   - replicator.ts brings the replica up to date with a sync under the
//     capture (no point at its end), notes consistentFrom, then sends the
//     journal as batches that close recovery points;
//   - flush.ts serves FlushReplication, replication-status.ts GetReplication.
// This file starts and stops the parts and takes the operator's calls
// (StartReplication again, ResyncReplication) that reach across them.
import fs from 'node:fs';
import { exitCode } from '../../shared/process';
import { DrplaneError, ErrorCode, failedPrecondition } from '../../shared/errors';
import type { RecoveryPoint__Output } from '../../generated/drplane/v1/RecoveryPoint';
import type { ReplicationStatus__Output } from '../../generated/drplane/v1/ReplicationStatus';
import { flush } from './flush';
import { Receiver } from './receiver';
import { replicationStatus } from './replication-status';
import { Replicator } from './replicator';
import { recordFile, Session, type ReplicationContext, type ReplicationRecord, type ReplicationSpec } from './session';

export class Replication {
  private receiverDone: Promise<void> = Promise.resolve();
  private replicatorDone: Promise<void> = Promise.resolve();
  private readonly receiver: Receiver;
  private readonly replicator: Replicator;

  private constructor(private readonly session: Session) {
    this.receiver = new Receiver(session);
    this.replicator = new Replicator(session);
  }

  /** Opens (or creates) the session's journal and record; call start() to run it. */
  static async open(record: ReplicationRecord, context: ReplicationContext): Promise<Replication> {
    return new Replication(await Session.open(record, context));
  }

  static fresh(spec: ReplicationSpec): ReplicationRecord {
    return { spec, state: { startedTimeMs: Date.now(), captureId: '', consistentFrom: 0, replayFrom: 0, sync: null, syncsStarted: 0, firstPointMade: false, firstPass: null } };
  }

  get diskId(): string {
    return this.session.spec.diskId;
  }

  get epoch(): number {
    return this.session.spec.epoch;
  }

  get currentSpec(): ReplicationSpec {
    return { ...this.session.spec };
  }

  get backlogBytes(): number {
    return this.session.backlogBytes;
  }

  get syncRunning(): boolean {
    return this.replicator.syncRunning;
  }

  get bytesSentTotal(): number {
    return this.session.bytesSent;
  }

  start(): void {
    const { log } = this.session.context;
    const { spec, journal } = this.session;
    log.info({ diskId: spec.diskId, epoch: spec.epoch, captureMode: spec.captureMode, captureId: journal.captureId }, 'replication session started');
    const crash = (what: string) => (error: unknown) => {
      log.fatal({ err: error, diskId: this.session.spec.diskId }, `${what} loop failed: this is a bug; exiting so the service manager restarts the daemon`);
      process.exit(exitCode.crash);
    };
    this.receiverDone = this.receiver.run().catch(crash('replication receiver'));
    this.replicatorDone = this.replicator.run().catch(crash('replication'));
  }

  /** Stops the loops and closes the journal; the record and the journal stay (a restart resumes). */
  async stop(): Promise<void> {
    if (this.session.stopped) return;
    this.session.stopped = true;
    this.session.stopping.abort();
    this.session.phase?.abort();
    this.session.sender?.stop();
    this.session.flushWaiters.rejectAll(new DrplaneError(ErrorCode.Aborted, `the replication of disk ${this.session.spec.diskId} was stopped`));
    await Promise.all([this.receiverDone, this.replicatorDone]);
    await this.session.releasing;
    await this.session.persisting.catch(() => undefined);
    await this.session.journal.close();
    this.session.touch();
  }

  /** Stops the session and forgets it: its record and its journal are deleted. */
  async remove(): Promise<void> {
    await this.stop();
    this.session.forgetCache();
    await this.session.journal.destroy();
    await fs.promises.rm(recordFile(this.session.context.recordsDir, this.session.spec.diskId), { force: true });
    this.session.context.cache.changed();
  }

  /** StartReplication again with the same epoch: the intervals and the tag may change; a failed session tries again. */
  async update(spec: ReplicationSpec): Promise<void> {
    const intervalChanged = spec.crashConsistentIntervalMs !== this.session.spec.crashConsistentIntervalMs;
    this.session.spec = { ...this.session.spec, crashConsistentIntervalMs: spec.crashConsistentIntervalMs, scanIntervalMs: spec.scanIntervalMs, tag: spec.tag };
    await this.session.persist();
    if (intervalChanged) this.session.sender?.wake();
    if (this.session.failedReason) {
      this.session.context.log.info({ diskId: this.session.spec.diskId, reason: this.session.failedReason }, 'StartReplication again: the failed session tries again');
      this.session.failedReason = '';
      this.session.phase?.abort();
    }
    this.session.touch();
  }

  /** ResyncReplication: a delta (or full) sync under the running capture, then the journal again. */
  async resync(full: boolean): Promise<void> {
    if (!this.session.journal.captureId) throw failedPrecondition(`disk ${this.session.spec.diskId} has no capture yet (agent ${this.session.spec.agentAddress} not reached): the first sync will run once it is`);
    const release = await this.session.pauseReplicator();
    try {
      if (this.session.spec.captureMode === 'CAPTURE_SCAN') {
        if (this.session.state.sync) return;
        this.session.failedReason = '';
        // The capture restarts; its first pass sends only the blocks that differ from the replica's hashes
        // (first-pass-filter.ts). Full: the master target rereads the replica for them instead of trusting its index.
        await this.session.scheduleSync(full ? 'SYNC_MODE_FULL' : '', 1, `the operator asked for a ${full ? 'full' : 'delta'} resync: the scan capture restarts`);
        this.session.stream?.abort();
        return;
      }
      if (this.session.state.sync && !full) return;
      this.session.failedReason = '';
      // Every record after the release point is still in the journal: replaying from there is safe after any sync.
      await this.session.scheduleSync(full ? 'SYNC_MODE_FULL' : 'SYNC_MODE_DELTA', this.session.journal.releasedSequence + 1, 'the operator asked for a resync');
    } finally {
      release();
    }
  }

  /** FlushReplication: see flush.ts. */
  flush(timeoutMs: number): Promise<RecoveryPoint__Output> {
    return flush(this.session, timeoutMs);
  }

  status(): ReplicationStatus__Output {
    return replicationStatus(this.session, this.replicator.syncStatus);
  }
}
