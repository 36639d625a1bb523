// What the parts of one replication session share (replication.ts wires
// them: receiver.ts, replicator.ts, flush.ts, replication-status.ts): the
// spec, the state that must survive a restart and its record, the journal, the
// figures the status shows, the flushes waiting for a point, and the lock a
// replicator phase holds. What must survive a restart (the spec, the capture,
// consistentFrom, a pending sync) is written to dataDir/replications/<disk>.json
// before it is relied on; the journal keeps the records.
import path from 'node:path';
import { Mutex } from 'async-mutex';
import { unary } from '../../shared/grpc';
import { DrplaneError, ErrorCode, fromServiceError, isServiceError } from '../../shared/errors';
import { writeFileDurably } from '../../shared/file-io';
import type { CaptureMode__Output } from '../../generated/drplane/v1/CaptureMode';
import type { RecoveryPoint__Output } from '../../generated/drplane/v1/RecoveryPoint';
import type { Replica__Output } from '../../generated/drplane/v1/Replica';
import type { CacheSpace } from './cache';
import type { ChangeBatchSender } from './change-batches';
import type { FirstPassFilter } from './first-pass-filter';
import { Journal, type JournalOptions } from './journal';
import { abortable, type SyncContext, type SyncMode } from './sync';
import { Throughput } from './throughput';
import { FlushWaiters } from './flush-waiters';
import type { BaselineSession } from './scan-baseline';

/** What StartReplication asked for (validated). */
export interface ReplicationSpec {
  diskId: string;
  epoch: number;
  agentAddress: string;
  sourcePath: string;
  masterTargetAddress: string;
  captureMode: 'CAPTURE_WRITE_THROUGH' | 'CAPTURE_SCAN';
  scanIntervalMs: number;
  crashConsistentIntervalMs: number;
  /** '' : FULL for a replica that never held data, DELTA otherwise (a seeded replica holds data). */
  initialSync: SyncMode | '';
  tag: string;
}

/** What a session must remember across restarts, beside its spec and its journal. */
export interface SessionState {
  startedTimeMs: number;
  /** The capture the journal belongs to, as far as consistentFrom and the sync below are concerned. */
  captureId: string;
  /** The agent's next_sequence at the end of the last sync under the capture; 0 while a sync is due. */
  consistentFrom: number;
  /** After a sync, the sender replays from here unless the replica already holds later records of the capture. */
  replayFrom: number;
  /** The sync to run (or running) before points; its id makes it resumable. Scan: the capture must be restarted. */
  sync: { syncId: string; mode: SyncMode | '' } | null;
  syncsStarted: number;
  /** The first point takes StartReplication's tag. */
  firstPointMade: boolean;
  /**
   * Scan against a replica that holds data: the capture whose first pass the
   * sender filters, and that pass's last record once the sender has met it
   * (0: not yet, so every record so far is in it). Persisted before that
   * record can be applied, so a restarted sender never filters a later pass.
   */
  firstPass?: { captureId: string; endSequence: number } | null;
}

export interface ReplicationRecord {
  spec: ReplicationSpec;
  state: SessionState;
}

export interface ReplicationContext extends SyncContext {
  cache: CacheSpace;
  journal: Omit<JournalOptions, 'log'>;
  /** Where session records are kept: dataDir/replications. */
  recordsDir: string;
}

/** A phase of the replicator was stopped on purpose (a new capture, a resync, the end of the session). */
export const isStop = (error: unknown) => error instanceof DrplaneError && error.code === ErrorCode.Aborted;

export const recordFile = (recordsDir: string, diskId: string) => path.join(recordsDir, `${diskId}.json`);
export const journalDir = (cacheDir: string, diskId: string) => path.join(cacheDir, diskId);

/** One disk's session as its parts see it; each part changes only the fields its job owns (see where they are set). */
export class Session {
  journal!: Journal;
  readonly stopping = new AbortController();
  stopped = false;
  /** Held by a replicator phase; taken by whoever must replace the journal or the sync. */
  readonly replicatorLock = new Mutex();
  phase: AbortController | undefined;
  sender: ChangeBatchSender | undefined;
  persisting: Promise<void> = Promise.resolve();
  releasing: Promise<void> = Promise.resolve();
  forgetCache: () => void = () => undefined;
  /** The receiver's current stream; stopped to restart the journal. */
  stream: AbortController | undefined;
  /** Why the journal must start over at its end (it lost records it had acknowledged). */
  journalRestart = '';

  // What the status shows.
  agentConnected = false;
  masterTargetConnected = false;
  agentProblem = '';
  masterTargetProblem = '';
  cacheProblem = '';
  failedReason = '';
  appliedChangeSequence = 0;
  latestPoint: RecoveryPoint__Output | undefined;
  watermark = { timeMs: 0, sequence: 0 };
  captureMode: CaptureMode__Output;
  readonly received = new Throughput();
  readonly applied = new Throughput();
  batchesApplied = 0;
  bytesApplied = 0;
  bytesSent = 0;
  /** How far the agent's clock was ahead at the last batch, beyond sourceClockSkewMsMax (0: within it). */
  sourceClockAheadMs = 0;
  recoveryPoints = 0;
  updatedTimeMs = Date.now();
  readonly flushWaiters: FlushWaiters;
  /** The capture whose first pass the agent filters against the replica's hashes (SCAN_BASELINE_REPLICA), for status. */
  firstPassAtAgent = '';
  /** The first-pass filter of the capture in state.firstPass (its replica hashes live only in memory). */
  firstPass: { captureId: string; filter: FirstPassFilter } | undefined;

  private constructor(
    public spec: ReplicationSpec,
    public state: SessionState,
    readonly context: ReplicationContext,
  ) {
    this.captureMode = spec.captureMode;
    this.flushWaiters = new FlushWaiters(spec.diskId);
  }

  /** Opens (or creates) the session's journal and writes its record; the cache measures its journal from now on. */
  static async open(record: ReplicationRecord, context: ReplicationContext): Promise<Session> {
    const session = new Session(record.spec, record.state, context);
    session.journal = await Journal.open(journalDir(context.cache.dir, record.spec.diskId), { ...context.journal, log: context.log });
    session.forgetCache = context.cache.add(session);
    session.reconcile();
    session.appliedChangeSequence = session.journal.releasedSequence;
    await session.persist();
    return session;
  }

  /** Journal bytes in the cache directory (the cache measures every session by it). */
  get diskBytes(): number {
    return this.journal.diskBytes;
  }

  get backlogBytes(): number {
    return this.journal.dataBytesAfter(this.appliedChangeSequence);
  }

  /** Stops the replicator's current phase and holds it until the returned release is called. */
  async pauseReplicator(): Promise<() => void> {
    this.phase?.abort();
    this.sender?.stop();
    return this.replicatorLock.acquire();
  }

  /** Records that a sync must run before points; persisted before anything relies on it. */
  async scheduleSync(mode: SyncMode | '', replayFrom: number, reason: string, captureId = this.journal.captureId): Promise<void> {
    const syncsStarted = this.state.syncsStarted + 1;
    const syncId = `r${this.spec.epoch}-${syncsStarted}-${captureId.slice(0, 24)}`;
    this.state = { ...this.state, captureId, consistentFrom: 0, replayFrom, sync: { syncId, mode }, syncsStarted };
    await this.persist();
    this.context.log.info({ diskId: this.spec.diskId, captureId, syncId, mode: mode || 'by the replica', replayFrom, reason }, syncsStarted > 1 ? 'resync scheduled' : 'first sync scheduled');
    this.touch();
  }

  /** GetReplica on the master target, fenced by epoch; tracks whether the master target is reachable. */
  async replica(signal: AbortSignal): Promise<Replica__Output> {
    const masterTarget = this.context.peers.masterTarget(this.spec.masterTargetAddress);
    const peer = `master target ${this.spec.masterTargetAddress}`;
    let replica: Replica__Output;
    try {
      replica = await this.ask(peer, unary(masterTarget, masterTarget.getReplica, { diskId: this.spec.diskId }), signal);
    } catch (error) {
      if (error instanceof DrplaneError && error.code === ErrorCode.Unavailable) this.masterTargetAway(error.message);
      throw error;
    }
    this.masterTargetConnected = true;
    this.masterTargetProblem = '';
    if (replica.epoch !== this.spec.epoch) {
      throw new DrplaneError(ErrorCode.StaleEpoch, `replica ${this.spec.diskId} on ${peer} is at epoch ${replica.epoch}, this session has epoch ${this.spec.epoch}: start replication again with the disk's current epoch`);
    }
    return replica;
  }

  masterTargetAway(message: string): void {
    this.masterTargetConnected = false;
    this.masterTargetProblem = `${message}; journaling continues and the session retries`;
    this.touch();
  }

  /** Deletes applied segments, in order, and only of the journal they belong to. */
  release(journal: Journal, sequence: number): void {
    const captureId = journal.captureId;
    this.releasing = this.releasing
      .then(async () => {
        if (journal === this.journal && journal.captureId === captureId) await journal.release(sequence);
        this.context.cache.changed();
      })
      .catch((error: unknown) => this.context.log.warn({ diskId: this.spec.diskId, err: (error as Error).message }, 'journal release failed; retried at the next one'));
  }

  /** The record a waiting flush needs a point at (-1: none waits). */
  flushTarget(): number {
    return this.flushWaiters.target(this.state.consistentFrom);
  }

  settleFlushes(): void {
    this.flushWaiters.settle({ syncRunning: Boolean(this.state.sync), captureId: this.journal.captureId, latestPoint: this.latestPoint, consistentFrom: this.state.consistentFrom, appliedChangeSequence: this.appliedChangeSequence });
  }

  /** What scan-baseline.ts needs of the session. */
  baselineSession(): BaselineSession {
    return {
      diskId: this.spec.diskId,
      sourcePath: this.spec.sourcePath,
      masterTarget: this.context.peers.masterTarget(this.spec.masterTargetAddress),
      masterTargetPeer: `master target ${this.spec.masterTargetAddress}`,
      log: this.context.log,
      ask: (peer, call, signal) => this.ask(peer, call, signal),
      replica: (signal) => this.replica(signal),
    };
  }

  /** One call to a peer: its failure becomes a DrplaneError naming the peer; a stop ends the wait. */
  async ask<T>(peer: string, call: Promise<T>, signal: AbortSignal): Promise<T> {
    try {
      return await abortable(call, signal, 'the replication session');
    } catch (error) {
      throw isServiceError(error) ? fromServiceError(error, peer) : error;
    }
  }

  touch(): void {
    this.updatedTimeMs = Date.now();
  }

  /** A crash between a journal reset and its record leaves them disagreeing: the journal wins, and a sync runs. */
  private reconcile(): void {
    const captureId = this.journal.captureId;
    if (!captureId || captureId === this.state.captureId) return;
    this.context.log.warn({ diskId: this.spec.diskId, journal: captureId, record: this.state.captureId }, 'the journal moved to another capture before the session record did: a sync runs');
    const syncsStarted = this.state.syncsStarted + 1;
    this.state = { ...this.state, captureId, consistentFrom: 0, replayFrom: this.journal.firstSequence, sync: { syncId: `r${this.spec.epoch}-${syncsStarted}-${captureId.slice(0, 24)}`, mode: '' }, syncsStarted };
  }

  /** Writes the session record (write, fsync, rename): a SIGKILL leaves the old or the new one. */
  persist(): Promise<void> {
    const record: ReplicationRecord = { spec: this.spec, state: this.state };
    const file = recordFile(this.context.recordsDir, this.spec.diskId);
    // One failed write must not fail every later one.
    this.persisting = this.persisting.catch(() => undefined).then(() => writeFileDurably(file, JSON.stringify(record, null, 2)));
    return this.persisting;
  }
}
