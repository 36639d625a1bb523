// One disk's continuous replication session (docs/continuous-replication.md):
//   - the receiver keeps the agent's capture streaming into the journal;
//   - the replicator brings the replica up to date with a sync under the
//     capture (no point at its end), notes consistentFrom, then sends the
//     journal as batches that close recovery points.
// A new capture id (agent restarted, capture overflowed) or a gap in the
// records starts a new journal and a delta sync. Scan mode never runs a sync
// under the capture (a pass is a sample, so replaying it after a newer sync
// read could regress a block): the session restarts the capture instead, with
// a scan baseline that makes its first pass the sync. Peers that go away make the
// session DEGRADED and it retries; only what needs the operator makes it
// FAILED. What must survive a restart (the spec, the capture, consistentFrom,
// a pending sync) is written to dataDir/replications/<disk>.json before it is
// relied on; the journal keeps the records.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Mutex } from 'async-mutex';
import { status as grpcStatus } from '@grpc/grpc-js';
import { unary } from '../../shared/grpc';
import { exitCode } from '../../shared/process';
import { deadlineExceeded, DrplaneError, ErrorCode, failedPrecondition, fromServiceError, isServiceError } from '../../shared/errors';
import { hashBytes } from '../../shared/hashing';
import { blockBytes } from '../../shared/limits';
import type { Logger } from '../../shared/log';
import type { CaptureMode__Output } from '../../generated/drplane/v1/CaptureMode';
import type { CaptureStatus__Output } from '../../generated/drplane/v1/CaptureStatus';
import type { ChangeBatch__Output } from '../../generated/drplane/v1/ChangeBatch';
import type { RecoveryPoint__Output } from '../../generated/drplane/v1/RecoveryPoint';
import type { Replica__Output } from '../../generated/drplane/v1/Replica';
import type { ScanBaseline__Output } from '../../generated/drplane/v1/ScanBaseline';
import type { AgentClient } from '../../shared/proto';
import type { ReplicationState__Output } from '../../generated/drplane/v1/ReplicationState';
import type { ReplicationStatus__Output } from '../../generated/drplane/v1/ReplicationStatus';
import type { CacheSpace } from './cache';
import { ChangeBatchSender, type ClosingPoint, type FirstPassSend, type SentBatch } from './change-batches';
import { FirstPassFilter } from './first-pass-filter';
import { receiveChanges } from './change-stream';
import { Journal, JournalCorruptError, type JournalOptions } from './journal';
import { writeFileDurably } from '../../shared/file-io';
import { abortable, hashTreeOpenTimeoutMs, retryBackoffMaxMs, retryBackoffMinMs, Sync, type SyncContext, type SyncMode, type SyncStatus } from './sync';
import { syncStatusMessage } from './sync-status';
import { Throughput } from './throughput';
import { Backoff } from '../../shared/backoff';
import { FlushWaiters, type FlushWaiter } from './flush-waiters';
import { putScanBaseline, replicaContent, type BaselineSession } from './scan-baseline';

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

/** How long a flush waits for the agent to say how far its capture got. */
const flushAgentAskTimeoutMs = 5_000;
/**
 * Scan passes one flush asks the agent for, one after the other, until one
 * makes a point. A quiesced source needs two at most (the first ships what
 * changed since the last scheduled pass, the second is quiet); a source that
 * keeps changing is left to the scheduled passes rather than scanned without pause.
 */
const flushScanPassesMax = 3;
/** How often a flush that asked for a pass looks whether its records are applied. */
const flushPollMs = 50;

/** A phase of the replicator was stopped on purpose (a new capture, a resync, the end of the session). */
const isStop = (error: unknown) => error instanceof DrplaneError && error.code === ErrorCode.Aborted;

export const recordFile = (recordsDir: string, diskId: string) => path.join(recordsDir, `${diskId}.json`);
export const journalDir = (cacheDir: string, diskId: string) => path.join(cacheDir, diskId);

export class Replication {
  private journal!: Journal;
  private readonly stopping = new AbortController();
  private stopped = false;
  private receiverDone: Promise<void> = Promise.resolve();
  private replicatorDone: Promise<void> = Promise.resolve();
  /** Held by a replicator phase; taken by whoever must replace the journal or the sync. */
  private readonly replicatorLock = new Mutex();
  private phase: AbortController | undefined;
  private sender: ChangeBatchSender | undefined;
  private sync: Sync | undefined;
  private lastSyncStatus: SyncStatus | null = null;
  private persisting: Promise<void> = Promise.resolve();
  private releasing: Promise<void> = Promise.resolve();
  private forgetCache: () => void = () => undefined;
  /** The receiver's current stream; stopped to restart the journal. */
  private stream: AbortController | undefined;
  /** Why the journal must start over at its end (it lost records it had acknowledged). */
  private journalRestart = '';

  // What the status shows.
  private agentConnected = false;
  private masterTargetConnected = false;
  private agentProblem = '';
  private masterTargetProblem = '';
  private cacheProblem = '';
  private failedReason = '';
  private appliedChangeSequence = 0;
  private latestPoint: RecoveryPoint__Output | undefined;
  private watermark = { timeMs: 0, sequence: 0 };
  private captureMode: CaptureMode__Output;
  private readonly received = new Throughput();
  private readonly applied = new Throughput();
  private batchesApplied = 0;
  private bytesApplied = 0;
  private bytesSent = 0;
  /** How far the agent's clock was ahead at the last batch, beyond sourceClockSkewMaxMs (0: within it). */
  private sourceClockAheadMs = 0;
  private recoveryPoints = 0;
  private updatedTimeMs = Date.now();
  private readonly flushWaiters: FlushWaiters;
  /** The capture whose first pass the agent filters against the replica's hashes (SCAN_BASELINE_REPLICA), for status. */
  private firstPassAtAgent = '';
  /** The first-pass filter of the capture in state.firstPass (its replica hashes live only in memory). */
  private firstPass: { captureId: string; filter: FirstPassFilter } | undefined;

  private constructor(
    private spec: ReplicationSpec,
    private state: SessionState,
    private readonly context: ReplicationContext,
  ) {
    this.captureMode = spec.captureMode;
    this.flushWaiters = new FlushWaiters(spec.diskId);
  }

  /** Opens (or creates) the session's journal and record; call start() to run it. */
  static async open(record: ReplicationRecord, context: ReplicationContext): Promise<Replication> {
    const session = new Replication(record.spec, record.state, context);
    session.journal = await Journal.open(journalDir(context.cache.dir, record.spec.diskId), { ...context.journal, log: context.log });
    session.forgetCache = context.cache.add(session);
    session.reconcile();
    session.appliedChangeSequence = session.journal.releasedSequence;
    await session.persist();
    return session;
  }

  static fresh(spec: ReplicationSpec): ReplicationRecord {
    return { spec, state: { startedTimeMs: Date.now(), captureId: '', consistentFrom: 0, replayFrom: 0, sync: null, syncsStarted: 0, firstPointMade: false, firstPass: null } };
  }

  get diskId(): string {
    return this.spec.diskId;
  }

  get epoch(): number {
    return this.spec.epoch;
  }

  get currentSpec(): ReplicationSpec {
    return { ...this.spec };
  }

  /** Journal bytes in the cache directory (the cache measures every session by it). */
  get diskBytes(): number {
    return this.journal.diskBytes;
  }

  get backlogBytes(): number {
    return this.journal.dataBytesAfter(this.appliedChangeSequence);
  }

  get syncRunning(): boolean {
    return this.sync?.running ?? false;
  }

  get bytesSentTotal(): number {
    return this.bytesSent;
  }

  start(): void {
    const { log } = this.context;
    log.info({ diskId: this.spec.diskId, epoch: this.spec.epoch, captureMode: this.spec.captureMode, captureId: this.journal.captureId }, 'replication session started');
    const crash = (what: string) => (error: unknown) => {
      log.fatal({ err: error, diskId: this.spec.diskId }, `${what} loop failed: this is a bug; exiting so the service manager restarts the daemon`);
      process.exit(exitCode.crash);
    };
    this.receiverDone = this.receive().catch(crash('replication receiver'));
    this.replicatorDone = this.replicate().catch(crash('replication'));
  }

  /** Stops the loops and closes the journal; the record and the journal stay (a restart resumes). */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.stopping.abort();
    this.phase?.abort();
    this.sender?.stop();
    this.flushWaiters.rejectAll(new DrplaneError(ErrorCode.Aborted, `the replication of disk ${this.spec.diskId} was stopped`));
    await Promise.all([this.receiverDone, this.replicatorDone]);
    await this.releasing;
    await this.persisting.catch(() => undefined);
    await this.journal.close();
    this.touch();
  }

  /** Stops the session and forgets it: its record and its journal are deleted. */
  async remove(): Promise<void> {
    await this.stop();
    this.forgetCache();
    await this.journal.destroy();
    await fs.promises.rm(recordFile(this.context.recordsDir, this.spec.diskId), { force: true });
    this.context.cache.changed();
  }

  /** StartReplication again with the same epoch: the intervals and the tag may change; a failed session tries again. */
  async update(spec: ReplicationSpec): Promise<void> {
    const intervalChanged = spec.crashConsistentIntervalMs !== this.spec.crashConsistentIntervalMs;
    this.spec = { ...this.spec, crashConsistentIntervalMs: spec.crashConsistentIntervalMs, scanIntervalMs: spec.scanIntervalMs, tag: spec.tag };
    await this.persist();
    if (intervalChanged) this.sender?.wake();
    if (this.failedReason) {
      this.context.log.info({ diskId: this.spec.diskId, reason: this.failedReason }, 'StartReplication again: the failed session tries again');
      this.failedReason = '';
      this.phase?.abort();
    }
    this.touch();
  }

  /** ResyncReplication: a delta (or full) sync under the running capture, then the journal again. */
  async resync(full: boolean): Promise<void> {
    if (!this.journal.captureId) throw failedPrecondition(`disk ${this.spec.diskId} has no capture yet (agent ${this.spec.agentAddress} not reached): the first sync will run once it is`);
    const release = await this.pauseReplicator();
    try {
      if (this.spec.captureMode === 'CAPTURE_SCAN') {
        if (this.state.sync) return;
        this.failedReason = '';
        // The capture restarts; its first pass sends only the blocks that differ from the replica's hashes
        // (first-pass-filter.ts). Full: the master target rereads the replica for them instead of trusting its index.
        await this.scheduleSync(full ? 'SYNC_MODE_FULL' : '', 1, `the operator asked for a ${full ? 'full' : 'delta'} resync: the scan capture restarts`);
        this.stream?.abort();
        return;
      }
      if (this.state.sync && !full) return;
      this.failedReason = '';
      // Every record after the release point is still in the journal: replaying from there is safe after any sync.
      await this.scheduleSync(full ? 'SYNC_MODE_FULL' : 'SYNC_MODE_DELTA', this.journal.releasedSequence + 1, 'the operator asked for a resync');
    } finally {
      release();
    }
  }

  /**
   * FlushReplication. Write-through: closes a point at the newest record the
   * agent has (or the journal, when the agent does not answer) and resolves
   * once it is applied. Scan: asks the agent for a pass that starts now and
   * resolves with the point that pass (or, when it found changes, the next
   * pass it asks for) made; so after the source stops changing the point
   * equals the source. See flushScan.
   */
  async flush(timeoutMs: number): Promise<RecoveryPoint__Output> {
    if (this.stopped) throw new DrplaneError(ErrorCode.Aborted, `the replication of disk ${this.spec.diskId} is stopped`);
    if (this.failedReason) throw failedPrecondition(`the replication of disk ${this.spec.diskId} failed: ${this.failedReason}`);
    if (this.spec.captureMode === 'CAPTURE_SCAN') return this.flushScan(timeoutMs);
    // Drain the agent too: a write it answered may still be on its way here. An agent that does not answer
    // (the source is down) holds nothing that can still arrive, so what the journal holds is the latest.
    const startedMs = Date.now();
    const agentNext = await this.agentNextSequence(Math.min(timeoutMs, flushAgentAskTimeoutMs));
    const remainingMs = Math.max(1, timeoutMs - (Date.now() - startedMs));
    const target = agentNext && agentNext.captureId === this.journal.captureId ? Math.max(this.journal.durableSequence, agentNext.nextSequence - 1) : this.journal.durableSequence;
    return this.waitForPoint({ captureId: this.journal.captureId, kind: 'covering', target }, remainingMs, (waiter) => {
      const need = Math.max(waiter.target, this.state.consistentFrom - 1);
      return `disk ${this.spec.diskId}: no point covering change record ${need} was applied within ${timeoutMs} ms (applied ${this.appliedChangeSequence}, ${this.state.sync ? 'a sync is running' : `backlog ${this.backlogBytes} bytes`}); flush again to keep waiting`;
    }).promise;
  }

  /**
   * Scan: the point of a pass that started after the request. The agent runs
   * one when a process server joins its running capture (StartCapture answers
   * after it, with the sequence its next record gets), so the flush asks for
   * one, waits until that pass's records are applied, and asks again while no
   * point has come (a pass that found changes has no marker; the next one on a
   * quiet source does), at most flushScanPassesMax times; scheduled passes go
   * on meanwhile. When the agent has another capture (or none), the session
   * restarts it and the first point of the new capture serves (its first pass
   * started after the request). When the agent does not answer at all, no
   * pass can be had: the flush resolves, like write-through, with the newest
   * point once everything received is applied.
   */
  private flushScan(timeoutMs: number): Promise<RecoveryPoint__Output> {
    const deadline = Date.now() + timeoutMs;
    let asked = 0;
    const { waiter, promise } = this.waitForPoint({ captureId: this.journal.captureId, kind: 'covering', target: Number.POSITIVE_INFINITY }, timeoutMs, () => {
      const why = this.agentProblem || (asked < flushScanPassesMax ? '' : `the ${flushScanPassesMax} passes the flush asked for all found changes: is the source still changing? A point needs a quiet pass or a snapshot`);
      return `disk ${this.spec.diskId}: no scan pass that started after the flush made a recovery point within ${timeoutMs} ms (passes asked: ${asked}; applied ${this.appliedChangeSequence} of ${this.journal.durableSequence} received)${why ? `; ${why}` : ''}; flush again to keep waiting`;
    });
    const pending = () => this.flushWaiters.has(waiter) && !this.stopped;
    void (async () => {
      const agent = this.context.peers.agent(this.spec.agentAddress);
      const diskPath = path.resolve(this.spec.sourcePath);
      for (; asked < flushScanPassesMax && pending(); ) {
        const captureId = this.journal.captureId;
        const leftMs = deadline - Date.now();
        if (leftMs <= 0 || !captureId) return;
        let pass: CaptureStatus__Output | undefined;
        try {
          const { captures } = await unary(agent, agent.listCaptures, {}, { timeoutMs: Math.min(leftMs, flushAgentAskTimeoutMs) });
          const running = captures.find((capture) => capture.path === diskPath);
          // Joining answers after a pass that started after the call; it must not start a capture the session does not follow.
          if (running?.captureId === captureId && running.mode === 'CAPTURE_SCAN') {
            pass = await unary(agent, agent.startCapture, { path: this.spec.sourcePath, mode: 'CAPTURE_SCAN', scanIntervalMs: this.spec.scanIntervalMs }, { timeoutMs: Math.max(1, deadline - Date.now()) });
          }
        } catch (error) {
          if (!pending()) return;
          if (asked === 0 && isServiceError(error) && (error.code === grpcStatus.UNAVAILABLE || error.code === grpcStatus.DEADLINE_EXCEEDED)) {
            // The source cannot be asked for a pass: what arrived is the latest there is.
            waiter.kind = 'newest';
            waiter.target = this.journal.durableSequence;
            this.settleFlushes();
          }
          this.context.log.info({ diskId: this.spec.diskId, err: (error as Error).message }, 'flush: the agent ran no scan pass; scheduled passes or the received records serve the flush');
          return;
        }
        asked++;
        if (!pending()) return;
        if (pass?.captureId !== captureId || this.journal.captureId !== captureId) {
          // The agent has another capture (or none): the session restarts it, and when it resets the journal it
          // points every waiter at the new capture's first point. Until then this one waits for "the next capture".
          if (waiter.target === Number.POSITIVE_INFINITY && waiter.captureId === captureId && this.journal.captureId === captureId) waiter.captureId = '';
          return;
        }
        const passEnd = pass.nextSequence - 1;
        if (waiter.target === Number.POSITIVE_INFINITY) waiter.target = passEnd;
        this.settleFlushes();
        this.sender?.wake();
        // Wait until the pass's records are applied: a marker among them has made the point by then.
        while (pending() && Date.now() < deadline && this.journal.captureId === captureId && this.appliedChangeSequence < passEnd) await sleep(flushPollMs);
      }
    })().catch((error: unknown) => this.context.log.warn({ diskId: this.spec.diskId, err: (error as Error).message }, 'flush: asking for a scan pass failed'));
    return promise;
  }

  /** Registers a flush waiter, settled by the points applied (settleFlushes) or rejected after timeoutMs. */
  private waitForPoint(fields: Pick<FlushWaiter, 'captureId' | 'kind' | 'target'>, timeoutMs: number, timeoutMessage: (waiter: FlushWaiter) => string): { waiter: FlushWaiter; promise: Promise<RecoveryPoint__Output> } {
    const waiting = this.flushWaiters.add(fields, timeoutMs, timeoutMessage);
    this.settleFlushes();
    this.sender?.wake();
    return waiting;
  }

  /** The agent's capture of this disk: its id and the sequence its next record gets; undefined when the agent does not answer. */
  private async agentNextSequence(timeoutMs: number): Promise<{ captureId: string; nextSequence: number } | undefined> {
    try {
      const agent = this.context.peers.agent(this.spec.agentAddress);
      const { captures } = await unary(agent, agent.listCaptures, {}, { timeoutMs });
      const capture = captures.find((candidate) => candidate.path === path.resolve(this.spec.sourcePath));
      return capture ? { captureId: capture.captureId, nextSequence: capture.nextSequence } : undefined;
    } catch {
      return undefined;
    }
  }

  status(): ReplicationStatus__Output {
    const now = Date.now();
    const backlogBytes = this.backlogBytes;
    const applyRate = this.applied.perSecond();
    const reasons = [this.agentProblem, this.masterTargetProblem, this.cacheProblem].filter(Boolean);
    let state: ReplicationState__Output;
    if (this.stopped) state = 'REPLICATION_STOPPED';
    else if (this.failedReason) state = 'REPLICATION_FAILED';
    else if (reasons.length > 0) state = 'REPLICATION_DEGRADED';
    // Until its sync has ended, a capture (or one the journal has just moved to) makes no points.
    else if (this.state.sync || this.state.consistentFrom === 0 || this.state.captureId !== this.journal.captureId) state = 'REPLICATION_SYNCING';
    // Scan: a new capture's first pass is the sync; it is over once a marker of the capture made a point.
    else if (this.spec.captureMode === 'CAPTURE_SCAN' && this.latestPoint?.captureId !== this.journal.captureId) state = 'REPLICATION_SYNCING';
    else state = 'REPLICATION_REPLICATING';
    let reason = this.failedReason || reasons.join('; ');
    if (!reason && state === 'REPLICATION_SYNCING') {
      if (this.spec.captureMode === 'CAPTURE_SCAN') {
        reason = this.state.sync || !this.journal.captureId ? `the scan capture on agent ${this.spec.agentAddress} (re)starts; its first pass is the sync` : `scan capture ${this.journal.captureId} ships its first pass; points follow its first quiet or snapshot pass`;
        if (!this.state.sync && this.state.firstPass?.captureId === this.journal.captureId) reason += '; only the blocks that differ from the replica go to the master target';
        else if (!this.state.sync && this.firstPassAtAgent === this.journal.captureId) reason += '; only the blocks that differ from the replica are read and shipped';
      }
      else reason = this.journal.captureId ? `${this.state.sync?.mode || 'a'} sync runs under capture ${this.journal.captureId}; points follow it` : `waiting for the capture on agent ${this.spec.agentAddress}`;
    }
    const latestTime = this.latestPoint?.sourceTimeMs ?? 0;
    return {
      diskId: this.spec.diskId,
      epoch: this.spec.epoch,
      state,
      stateReason: reason,
      captureMode: this.captureMode,
      captureId: this.journal.captureId,
      sync: this.sync ? syncStatusMessage(this.sync.status) : this.lastSyncStatus && syncStatusMessage(this.lastSyncStatus),
      receivedSequence: this.journal.durableSequence,
      appliedSequence: this.appliedChangeSequence,
      backlogBytes,
      cacheBytes: this.journal.diskBytes,
      memoryBytes: this.journal.memoryBytes,
      applyBytesPerSecond: applyRate,
      receiveBytesPerSecond: this.received.perSecond(),
      etaMs: backlogBytes === 0 ? 0 : applyRate > 0 ? Math.ceil((backlogBytes / applyRate) * 1000) : -1,
      latestRecoveryPointId: this.latestPoint?.id ?? '',
      latestRecoveryPointTimeMs: latestTime,
      // Without any point yet, the whole life of the session is at risk.
      rpoMs: Math.max(0, now - (latestTime || this.state.startedTimeMs)),
      agentConnected: this.agentConnected,
      masterTargetConnected: this.masterTargetConnected,
      resyncs: Math.max(0, this.state.syncsStarted - 1),
      batchesApplied: this.batchesApplied,
      bytesApplied: this.bytesApplied,
      bytesSent: this.bytesSent,
      recoveryPoints: this.recoveryPoints,
      startedTimeMs: this.state.startedTimeMs,
      updatedTimeMs: this.updatedTimeMs,
      crashConsistentIntervalMs: this.spec.crashConsistentIntervalMs,
      sourceClockAheadMs: this.sourceClockAheadMs,
    };
  }

  // --- The receiver: agent -> journal -----------------------------------------------------------

  private async receive(): Promise<void> {
    const { log } = this.context;
    const backoff = new Backoff({ initialMs: retryBackoffMinMs, maxMs: retryBackoffMaxMs });
    while (!this.stopped) {
      this.stream = new AbortController();
      const signal = AbortSignal.any([this.stopping.signal, this.stream.signal]);
      let connected = false;
      try {
        if (this.journalRestart) {
          // Cleared first: the replicator waits while it is set, and resumes as soon as beginCapture lets go of it.
          const reason = this.journalRestart;
          this.journalRestart = '';
          if (this.spec.captureMode === 'CAPTURE_SCAN') await this.needScanRestart(reason);
          else await this.beginCapture(this.journal.captureId, this.journal.nextSequence, reason);
        }
        const agent = this.context.peers.agent(this.spec.agentAddress);
        const peer = `agent ${this.spec.agentAddress}`;
        const ask = <T>(call: Promise<T>) => this.ask(peer, call, signal);
        const { disks } = await ask(unary(agent, agent.describeDisks, { paths: [this.spec.sourcePath] }));
        const diskBytes = disks[0]?.diskBytes ?? 0;
        if (this.spec.captureMode === 'CAPTURE_SCAN') {
          this.captureMode = 'CAPTURE_SCAN';
          await this.followScanCapture(agent, diskBytes, signal);
        } else {
          const capture: CaptureStatus__Output = await ask(unary(agent, agent.startCapture, { path: this.spec.sourcePath, mode: this.spec.captureMode, scanIntervalMs: this.spec.scanIntervalMs }, { timeoutMs: hashTreeOpenTimeoutMs(diskBytes) }));
          this.captureMode = capture.mode === 'CAPTURE_MODE_UNSPECIFIED' ? this.spec.captureMode : capture.mode;
        }
        await receiveChanges({
          agent,
          peer,
          path: this.spec.sourcePath,
          diskBytes,
          journal: this.journal,
          cache: this.context.cache,
          signal,
          onConnected: () => {
            connected = true;
            backoff.reset();
            this.agentConnected = true;
            this.agentProblem = '';
            this.touch();
          },
          onNewCapture: async (captureId, firstSequence, reason) => {
            if (this.spec.captureMode !== 'CAPTURE_SCAN') return this.beginCapture(captureId, firstSequence, reason);
            // Nothing of this capture is journaled: the stream ends here and the receiver restarts the capture.
            await this.needScanRestart(reason);
            this.stream?.abort();
            throw new DrplaneError(ErrorCode.Aborted, `the scan capture of disk ${this.spec.diskId} restarts (${reason})`);
          },
          onBatch: (batch, lastSequence) => this.noteBatch(batch, lastSequence),
          onReceived: (bytes) => {
            this.received.add(bytes);
            this.context.metrics?.receivedBytes.inc({ disk_id: this.spec.diskId }, bytes);
          },
          onHeldBack: (reason) => {
            this.cacheProblem = reason;
            this.touch();
          },
        });
      } catch (error) {
        if (this.stopped) return;
        const message = error instanceof Error ? error.message : String(error);
        this.agentConnected = false;
        // Errors from the agent's calls already name it; others (the journal, the master target) get the prefix.
        const peer = `agent ${this.spec.agentAddress}`;
        this.agentProblem = `${message.startsWith(peer) ? message : `${peer}: ${message}`}; retrying (the journal keeps what arrived)`;
        this.cacheProblem = '';
        this.touch();
        log.warn({ diskId: this.spec.diskId, err: message }, 'change stream interrupted');
        if (this.journal.failure) await this.reopenJournal();
      }
      if (connected) backoff.reset();
      try {
        await sleep(backoff.nextDelayMs(), undefined, { signal: this.stopping.signal });
      } catch {
        return;
      }
    }
  }

  private noteBatch(batch: ChangeBatch__Output, lastSequence: number): void {
    if (batch.mode !== 'CAPTURE_MODE_UNSPECIFIED') this.captureMode = batch.mode;
    if (batch.watermarkTimeMs > 0) this.watermark = { timeMs: batch.watermarkTimeMs, sequence: lastSequence };
    this.touch();
  }

  /** The agent streams a capture the journal does not continue: a new journal, and a sync before any point. */
  private async beginCapture(captureId: string, firstSequence: number, reason: string): Promise<void> {
    const release = await this.pauseReplicator();
    try {
      const previous = this.journal.captureId;
      await this.journal.reset(captureId, firstSequence);
      this.watermark = { timeMs: 0, sequence: 0 };
      this.appliedChangeSequence = firstSequence - 1;
      await this.scheduleSync('', firstSequence, previous ? `new capture or missing records (${reason})` : 'first capture', captureId);
      // A flush waiting for records of the old capture is served by the first point after the sync.
      this.flushWaiters.followCapture(captureId);
    } finally {
      release();
    }
  }

  /** Scan: the journal cannot continue the agent's capture; the receiver restarts it (followScanCapture). */
  private async needScanRestart(reason: string): Promise<void> {
    const release = await this.pauseReplicator();
    try {
      if (!this.state.sync) await this.scheduleSync('', 1, `new capture or missing records (${reason}): the scan capture restarts`);
    } finally {
      release();
    }
  }

  /**
   * Scan: a capture is its own sync. Keeps streaming the capture the journal
   * continues, or (first capture, agent restarted, overflow, missing records,
   * resync) stops the agent's capture and starts a new one whose first pass
   * compares the source with what the replica holds: zeros for a replica never
   * applied to, else unknown. Every marker of the new capture may close a point.
   */
  private async followScanCapture(agent: AgentClient, diskBytes: number, signal: AbortSignal): Promise<void> {
    const peer = `agent ${this.spec.agentAddress}`;
    const ask = <T>(call: Promise<T>) => this.ask(peer, call, signal);
    const diskPath = path.resolve(this.spec.sourcePath);
    const current = async () => (await ask(unary(agent, agent.listCaptures, {}))).captures.find((capture) => capture.path === diskPath);
    const startRequest = { path: this.spec.sourcePath, mode: this.spec.captureMode, scanIntervalMs: this.spec.scanIntervalMs };
    if (!this.state.sync) {
      let reason = 'first capture';
      if (this.journal.captureId) {
        const running = await current();
        if (running?.captureId === this.journal.captureId) {
          // Joins the running capture (scan_baseline is ignored) to pass on the scan interval; not awaited: it answers after the first pass.
          unary(agent, agent.startCapture, startRequest, { timeoutMs: hashTreeOpenTimeoutMs(diskBytes) }).catch(() => undefined);
          return;
        }
        reason = running ? `the agent's capture is ${running.captureId}, the journal's ${this.journal.captureId}` : 'the agent has no capture of the disk';
      }
      await this.needScanRestart(reason);
    }
    // What the replica holds decides the first pass's baseline: zeros (its hash tree's root is 0) make EMPTY
    // exact; anything else (seeded at reprotect, adopted, applied to before) is UNKNOWN, whose first pass ships
    // every block, and the sender drops those the replica already holds (first-pass-filter.ts).
    const replica = await this.replica(signal);
    const rescan = (replica.seeded && replica.appliedSequence === 0) || this.state.sync?.mode === 'SYNC_MODE_FULL';
    const content = await replicaContent(this.baselineSession(), replica, rescan, signal);
    await ask(unary(agent, agent.stopCapture, { path: this.spec.sourcePath }, { timeoutMs: 5_000 }));
    // The agent compares its first pass with the replica's hashes itself, so only the blocks that differ cross either
    // hop; an agent without PutScanBaseline ships every block and the sender filters them (first-pass-filter.ts).
    const atAgent = content.hashes ? await putScanBaseline(this.baselineSession(), agent, content.hashes, ask) : false;
    const scanBaseline: ScanBaseline__Output = atAgent ? 'SCAN_BASELINE_REPLICA' : content.scanBaseline;
    const replicaHashes = atAgent ? undefined : content.hashes;
    const starting = ask(unary(agent, agent.startCapture, { ...startRequest, scanBaseline }, { timeoutMs: hashTreeOpenTimeoutMs(diskBytes) }));
    starting.catch(() => undefined);
    // StartCapture answers after the first pass, which may hold more than the agent's bound: the capture's id
    // comes from ListCaptures, so its records stream (and are acknowledged) while the first pass runs.
    let fresh: CaptureStatus__Output | undefined;
    while (!fresh) {
      fresh = await Promise.race([starting, sleep(50, undefined, { signal }).then(() => undefined)]);
      fresh ??= await current();
    }
    if (fresh.overflows > 0 || fresh.mode !== 'CAPTURE_SCAN') throw new DrplaneError(ErrorCode.Unavailable, `the new scan capture ${fresh.captureId} of ${diskPath} overflowed or changed mode during its first pass; it restarts`);
    const release = await this.pauseReplicator();
    try {
      await this.journal.reset(fresh.captureId, 1);
      this.watermark = { timeMs: 0, sequence: 0 };
      this.appliedChangeSequence = 0;
      this.firstPass = replicaHashes ? { captureId: fresh.captureId, filter: new FirstPassFilter(replicaHashes, this.context.pool) } : undefined;
      this.firstPassAtAgent = atAgent ? fresh.captureId : '';
      const firstPass = replicaHashes ? { captureId: fresh.captureId, endSequence: 0 } : null;
      this.state = { ...this.state, captureId: fresh.captureId, consistentFrom: 1, replayFrom: 1, sync: null, firstPass };
      await this.persist();
      // A flush waiting for records of the old capture is served by the first point of the new one (its first pass started after the flush).
      this.flushWaiters.followCapture(fresh.captureId);
      this.context.log.info({ diskId: this.spec.diskId, captureId: fresh.captureId, scanBaseline, replicaSeeded: replica.seeded, replicaRescanned: rescan }, 'scan capture restarted: its first pass is the sync');
      this.touch();
    } finally {
      release();
    }
  }

  /** Reopens a journal whose write failed: opening cuts what was half written. */
  private async reopenJournal(): Promise<void> {
    const release = await this.pauseReplicator();
    try {
      await this.journal.close().catch(() => undefined);
      this.journal = await Journal.open(journalDir(this.context.cache.dir, this.spec.diskId), { ...this.context.journal, log: this.context.log });
      this.context.log.warn({ diskId: this.spec.diskId, durableSequence: this.journal.durableSequence }, 'journal reopened after a failed write');
    } finally {
      release();
    }
  }

  // --- The replicator: sync, then journal -> master target ---------------------------------------

  /** Stops the replicator's current phase and holds it until the returned release is called. */
  private async pauseReplicator(): Promise<() => void> {
    this.phase?.abort();
    this.sender?.stop();
    return this.replicatorLock.acquire();
  }

  private async replicate(): Promise<void> {
    const { log } = this.context;
    const backoff = new Backoff({ initialMs: retryBackoffMinMs, maxMs: retryBackoffMaxMs });
    while (!this.stopped) {
      const release = await this.replicatorLock.acquire();
      const phase = (this.phase = new AbortController());
      const stop = () => phase.abort();
      this.stopping.signal.addEventListener('abort', stop, { once: true });
      try {
        if (this.stopped) return;
        if (this.failedReason || !this.journal.captureId || this.journalRestart) {
          // Failed: wait for the operator (StartReplication, ResyncReplication). No capture yet, or a journal to restart: wait for the receiver.
          await sleep(60_000, undefined, { signal: phase.signal }).catch(() => undefined);
          continue;
        }
        if (this.state.sync && this.spec.captureMode === 'CAPTURE_SCAN') {
          // Scan never syncs under the capture: the receiver restarts the capture, then resets the journal (which wakes this).
          await sleep(60_000, undefined, { signal: phase.signal }).catch(() => undefined);
          continue;
        }
        const appliedBefore = this.batchesApplied;
        if (this.state.sync) await this.runSync(phase.signal);
        else await this.sendJournal(phase.signal);
        if (this.batchesApplied > appliedBefore) backoff.reset();
      } catch (error) {
        if (phase.signal.aborted || this.stopped) continue;
        if (error instanceof JournalCorruptError) {
          log.error({ diskId: this.spec.diskId, err: error.message }, 'journal record unreadable: starting a new journal and a delta sync');
          // The receiver restarts it: only it knows that nothing is being appended.
          this.journalRestart = `journal record unreadable (${error.message})`;
          this.stream?.abort();
          continue;
        }
        const drplaneError = error instanceof DrplaneError ? error : new DrplaneError(ErrorCode.Internal, (error as Error).message);
        if (!drplaneError.retryable) {
          this.failedReason = `${drplaneError.message}; fix it, then call StartReplication again (or ResyncReplication)`;
          log.error({ diskId: this.spec.diskId, code: drplaneError.code, err: drplaneError.message }, 'replication failed');
          this.touch();
          continue;
        }
        const delayMs = backoff.nextDelayMs();
        log.warn({ diskId: this.spec.diskId, err: drplaneError.message, retryInMs: delayMs }, 'replication interrupted; retrying');
        await sleep(delayMs, undefined, { signal: phase.signal }).catch(() => undefined);
      } finally {
        this.stopping.signal.removeEventListener('abort', stop);
        this.phase = undefined;
        release();
      }
    }
  }

  /** Records that a sync must run before points; persisted before anything relies on it. */
  private async scheduleSync(mode: SyncMode | '', replayFrom: number, reason: string, captureId = this.journal.captureId): Promise<void> {
    const syncsStarted = this.state.syncsStarted + 1;
    const syncId = `r${this.spec.epoch}-${syncsStarted}-${captureId.slice(0, 24)}`;
    this.state = { ...this.state, captureId, consistentFrom: 0, replayFrom, sync: { syncId, mode }, syncsStarted };
    await this.persist();
    this.context.log.info({ diskId: this.spec.diskId, captureId, syncId, mode: mode || 'by the replica', replayFrom, reason }, syncsStarted > 1 ? 'resync scheduled' : 'first sync scheduled');
    this.touch();
  }

  /** Runs (or resumes) the pending sync; at its end notes consistentFrom. */
  private async runSync(signal: AbortSignal): Promise<void> {
    const pending = this.state.sync!;
    const replica = await this.replica(signal);
    if (!pending.mode) {
      // The first sync may be named by StartReplication; otherwise a replica that never held data gets everything.
      const first = this.state.syncsStarted <= 1;
      // A seeded replica (a copy of the machine's old disk, made at reprotect) holds data although nothing was applied.
      pending.mode = first && this.spec.initialSync ? this.spec.initialSync : replica.appliedSequence === 0 && !replica.syncComplete && !replica.seeded ? 'SYNC_MODE_FULL' : 'SYNC_MODE_DELTA';
      await this.persist();
    }
    const sync = new Sync(
      {
        diskId: this.spec.diskId,
        syncId: pending.syncId,
        mode: pending.mode,
        epoch: this.spec.epoch,
        agentAddress: this.spec.agentAddress,
        sourcePath: this.spec.sourcePath,
        masterTargetAddress: this.spec.masterTargetAddress,
        tag: this.spec.tag,
        noRecoveryPoint: true,
      },
      this.context,
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
      this.touch();
    }
    if (signal.aborted) return;
    const status = this.lastSyncStatus!;
    if (status.state !== 'SYNC_STATE_COMPLETED') throw sync.failure ?? new DrplaneError(ErrorCode.Unavailable, status.error || `the sync ended ${status.state}`);
    this.masterTargetConnected = true;
    this.masterTargetProblem = '';
    // Every write the sync could have read has a record before the agent's next_sequence now.
    const agent = this.context.peers.agent(this.spec.agentAddress);
    const capture = await this.ask(`agent ${this.spec.agentAddress}`, unary(agent, agent.startCapture, { path: this.spec.sourcePath, mode: this.spec.captureMode, scanIntervalMs: this.spec.scanIntervalMs }, { timeoutMs: hashTreeOpenTimeoutMs(status.diskBytes) }), signal);
    if (capture.captureId !== this.journal.captureId) throw new DrplaneError(ErrorCode.Unavailable, `the agent's capture changed to ${capture.captureId} during the sync; the session resyncs under it`);
    this.state = { ...this.state, consistentFrom: capture.nextSequence, replayFrom: this.state.replayFrom, sync: null };
    await this.persist();
    this.context.log.info({ diskId: this.spec.diskId, syncId: pending.syncId, mode: pending.mode, consistentFrom: capture.nextSequence, bytesChanged: status.bytesChanged }, 'sync under the capture completed');
    this.touch();
  }

  /** GetReplica on the master target, fenced by epoch; tracks whether the master target is reachable. */
  private async replica(signal: AbortSignal): Promise<Replica__Output> {
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

  private masterTargetAway(message: string): void {
    this.masterTargetConnected = false;
    this.masterTargetProblem = `${message}; journaling continues and the session retries`;
    this.touch();
  }

  /** Sends the journal until the phase is stopped or the master target fails. */
  private async sendJournal(signal: AbortSignal): Promise<void> {
    const journal = this.journal;
    const replica = await this.replica(signal);
    await this.learnLatestPoint(replica, signal);
    const sameCapture = replica.captureId !== '' && replica.captureId === journal.captureId;
    const start = sameCapture ? Math.max(replica.appliedChangeSequence + 1, this.state.replayFrom) : this.state.replayFrom;
    if (start < journal.firstRetainedSequence && start <= journal.durableSequence) {
      // The replica needs records the journal no longer has (e.g. the master target's store was restored from an older copy).
      const reason = `the replica needs record ${start}, the journal starts at ${journal.firstRetainedSequence}`;
      if (this.spec.captureMode === 'CAPTURE_SCAN') {
        await this.scheduleSync('', 1, `${reason}: the scan capture restarts`);
        this.stream?.abort();
        return;
      }
      await this.scheduleSync('SYNC_MODE_DELTA', journal.nextSequence, reason);
      return;
    }
    this.appliedChangeSequence = Math.max(this.appliedChangeSequence, start - 1);
    if (start - 1 > journal.releasedSequence) this.release(journal, start - 1);
    this.settleFlushes();
    const firstPass = await this.firstPassSend(journal, start, replica, signal);
    const masterTarget = this.context.peers.masterTarget(this.spec.masterTargetAddress);
    const sender = new ChangeBatchSender({
      diskId: this.spec.diskId,
      epoch: this.spec.epoch,
      captureId: journal.captureId,
      journal,
      masterTarget,
      peer: `master target ${this.spec.masterTargetAddress}`,
      firstBatchSequence: replica.appliedSequence + 1,
      startSequence: start,
      consistentFrom: this.state.consistentFrom,
      everyBoundaryConsistent: () => this.captureMode === 'CAPTURE_WRITE_THROUGH',
      crashConsistentIntervalMs: () => this.spec.crashConsistentIntervalMs,
      watermark: () => this.watermark,
      flushTarget: () => this.flushTarget(),
      tagFor: (point) => (!this.state.firstPointMade && point.kind === 'CRASH_CONSISTENT' ? this.spec.tag : ''),
      batchBytesMax: this.context.batchBytesMax,
      pool: this.context.pool,
      compression: this.context.compression,
      onSent: (extent) => {
        this.bytesSent += extent.data.byteLength;
        this.context.metrics?.sentBytes.inc({ disk_id: this.spec.diskId, mode: 'continuous' }, extent.data.byteLength);
        this.context.metrics?.sentPlainBytes.inc({ disk_id: this.spec.diskId, mode: 'continuous' }, extent.length);
      },
      onApplied: (batch, ack) => this.batchApplied(journal, batch, ack.recoveryPointId),
      onSourceClockAhead: (aheadMs) => {
        if (aheadMs > 0 && this.sourceClockAheadMs === 0) this.context.log.warn({ diskId: this.spec.diskId, aheadMs }, "the agent's clock is ahead of this process server's: its points are dated with this clock");
        this.sourceClockAheadMs = aheadMs;
      },
      firstPass,
    });
    this.sender = sender;
    const onAbort = () => sender.stop();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      await sender.run();
    } catch (error) {
      if (error instanceof DrplaneError && error.code === ErrorCode.Unavailable) this.masterTargetAway(error.message);
      throw error;
    } finally {
      signal.removeEventListener('abort', onAbort);
      this.sender = undefined;
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
    const persisted = this.state.firstPass;
    if (!persisted || persisted.captureId !== journal.captureId || (persisted.endSequence !== 0 && start > persisted.endSequence)) return undefined;
    const captureId = persisted.captureId;
    if (this.firstPass?.captureId !== captureId) {
      const content = await replicaContent(this.baselineSession(), replica, false, signal);
      // All zeros (nothing applied yet, or only zeros): every hash is 0.
      const hashes = content.hashes ?? (content.scanBaseline === 'SCAN_BASELINE_EMPTY' ? Buffer.alloc((replica.diskBytes / blockBytes) * hashBytes) : undefined);
      this.firstPass = { captureId, filter: new FirstPassFilter(hashes, this.context.pool) };
    }
    // The sender's own copy of the end: it must never read 0 again once the pass ended (0 would mean "filter").
    let endSequence = persisted.endSequence;
    return {
      filter: this.firstPass.filter,
      diskBytes: replica.diskBytes,
      endSequence: () => endSequence,
      passEnded: async (sequence) => {
        endSequence = sequence;
        if (this.state.firstPass?.captureId !== captureId) return;
        this.state = { ...this.state, firstPass: { captureId, endSequence: sequence } };
        await this.persist();
      },
    };
  }

  /** The first pass's last record is applied: its filter (and the replica hashes it holds) is done. */
  private firstPassApplied(journal: Journal, changeSequence: number): void {
    const persisted = this.state.firstPass;
    if (!persisted || persisted.captureId !== journal.captureId || persisted.endSequence === 0 || changeSequence < persisted.endSequence) return;
    const figures = this.firstPass?.captureId === persisted.captureId ? this.firstPass.filter.figures : undefined;
    this.firstPass?.filter.release();
    this.firstPass = undefined;
    this.state = { ...this.state, firstPass: null };
    this.persist().catch((error: unknown) => this.context.log.warn({ diskId: this.spec.diskId, err: (error as Error).message }, 'cannot write the session record'));
    this.context.log.info({ diskId: this.spec.diskId, captureId: persisted.captureId, endSequence: persisted.endSequence, ...figures }, 'first scan pass applied: only the blocks that differed from the replica were sent');
  }

  /** The newest point on the replica, so status and flush know it after a restart. */
  private async learnLatestPoint(replica: Replica__Output, signal: AbortSignal): Promise<void> {
    if (!replica.latestRecoveryPointId || this.latestPoint?.id === replica.latestRecoveryPointId) return;
    const masterTarget = this.context.peers.masterTarget(this.spec.masterTargetAddress);
    try {
      this.latestPoint = await this.ask('master target', unary(masterTarget, masterTarget.selectRecoveryPoint, { diskId: this.spec.diskId, selector: 'BY_ID', pointId: replica.latestRecoveryPointId }, { timeoutMs: 5_000 }), signal);
    } catch (error) {
      if (isStop(error)) throw error;
      // An older master target without SelectRecoveryPoint: what the replica says is enough for the status.
      const sequence = Number(replica.latestRecoveryPointId.split('@').pop());
      this.latestPoint = { id: replica.latestRecoveryPointId, diskId: this.spec.diskId, sequence, kind: 'CRASH_CONSISTENT', sourceTimeMs: replica.latestRecoveryPointTimeMs, appliedTimeMs: 0, tag: '', syncId: '', captureId: replica.captureId, changeSequence: replica.appliedChangeSequence };
    }
  }

  private batchApplied(journal: Journal, batch: SentBatch, pointId: string): void {
    this.appliedChangeSequence = batch.changeSequence;
    this.firstPassApplied(journal, batch.changeSequence);
    this.batchesApplied++;
    this.bytesApplied += batch.plainBytes;
    this.context.metrics?.batchesAcknowledged.inc({ disk_id: this.spec.diskId, mode: 'continuous' });
    this.applied.add(batch.plainBytes);
    if (batch.point && pointId) this.pointApplied(journal.captureId, batch, batch.point, pointId);
    this.release(journal, batch.changeSequence);
    this.settleFlushes();
    this.touch();
  }

  private pointApplied(captureId: string, batch: SentBatch, point: ClosingPoint, pointId: string): void {
    this.latestPoint = {
      id: pointId,
      diskId: this.spec.diskId,
      sequence: batch.sequence,
      kind: point.kind,
      sourceTimeMs: point.sourceTimeMs,
      appliedTimeMs: Date.now(),
      tag: point.tag,
      syncId: '',
      captureId,
      changeSequence: batch.changeSequence,
    };
    this.recoveryPoints++;
    if (!this.state.firstPointMade) {
      this.state = { ...this.state, firstPointMade: true };
      this.persist().catch((error: unknown) => this.context.log.warn({ diskId: this.spec.diskId, err: (error as Error).message }, 'cannot write the session record'));
    }
  }

  /** Deletes applied segments, in order, and only of the journal they belong to. */
  private release(journal: Journal, sequence: number): void {
    const captureId = journal.captureId;
    this.releasing = this.releasing
      .then(async () => {
        if (journal === this.journal && journal.captureId === captureId) await journal.release(sequence);
        this.context.cache.changed();
      })
      .catch((error: unknown) => this.context.log.warn({ diskId: this.spec.diskId, err: (error as Error).message }, 'journal release failed; retried at the next one'));
  }

  // --- Flush ------------------------------------------------------------------------------------

  /** The record a waiting flush needs a point at (-1: none waits). */
  private flushTarget(): number {
    return this.flushWaiters.target(this.state.consistentFrom);
  }

  private settleFlushes(): void {
    this.flushWaiters.settle({ syncRunning: Boolean(this.state.sync), captureId: this.journal.captureId, latestPoint: this.latestPoint, consistentFrom: this.state.consistentFrom, appliedChangeSequence: this.appliedChangeSequence });
  }

  // --- Helpers ------------------------------------------------------------------------------------

  /** What scan-baseline.ts needs of the session. */
  private baselineSession(): BaselineSession {
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
  private async ask<T>(peer: string, call: Promise<T>, signal: AbortSignal): Promise<T> {
    try {
      return await abortable(call, signal, 'the replication session');
    } catch (error) {
      throw isServiceError(error) ? fromServiceError(error, peer) : error;
    }
  }

  private touch(): void {
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
  private persist(): Promise<void> {
    const record: ReplicationRecord = { spec: this.spec, state: this.state };
    const file = recordFile(this.context.recordsDir, this.spec.diskId);
    // One failed write must not fail every later one.
    this.persisting = this.persisting.catch(() => undefined).then(() => writeFileDurably(file, JSON.stringify(record, null, 2)));
    return this.persisting;
  }
}
