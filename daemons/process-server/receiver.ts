// The receiver of a replication session: keeps the agent's capture streaming
// into the journal (change-stream.ts). A new capture id (agent restarted,
// capture overflowed) or a gap in the records starts a new journal and a delta
// sync. Scan mode never runs a sync under the capture (a pass is a sample, so
// replaying it after a newer sync read could regress a block): the receiver
// restarts the capture instead, with a scan baseline that makes its first pass
// the sync.
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { unary } from '../../shared/grpc';
import { DrplaneError, ErrorCode } from '../../shared/errors';
import { Backoff } from '../../shared/backoff';
import type { AgentClient } from '../../shared/proto';
import type { CaptureStatus__Output } from '../../generated/drplane/v1/CaptureStatus';
import type { ChangeBatch__Output } from '../../generated/drplane/v1/ChangeBatch';
import type { ScanBaseline__Output } from '../../generated/drplane/v1/ScanBaseline';
import { receiveChanges } from './change-stream';
import { FirstPassFilter } from './first-pass-filter';
import { Journal } from './journal';
import { putScanBaseline, replicaContent } from './scan-baseline';
import { journalDir, type Session } from './session';
import { hashTreeOpenTimeoutMs, retryBackoffMsMax, retryBackoffMsMin } from './sync';

export class Receiver {
  constructor(private readonly session: Session) {}

  /** Keeps the agent's capture streaming into the journal until the session stops; retries with back-off. */
  async run(): Promise<void> {
    const session = this.session;
    const { log } = session.context;
    const backoff = new Backoff({ initialMs: retryBackoffMsMin, maxMs: retryBackoffMsMax });
    while (!session.stopped) {
      session.stream = new AbortController();
      const signal = AbortSignal.any([session.stopping.signal, session.stream.signal]);
      let connected = false;
      try {
        if (session.journalRestart) {
          // Cleared first: the replicator waits while it is set, and resumes as soon as beginCapture lets go of it.
          const reason = session.journalRestart;
          session.journalRestart = '';
          if (session.spec.captureMode === 'CAPTURE_SCAN') await this.needScanRestart(reason);
          else await this.beginCapture(session.journal.captureId, session.journal.nextSequence, reason);
        }
        const agent = session.context.peers.agent(session.spec.agentAddress);
        const peer = `agent ${session.spec.agentAddress}`;
        const ask = <T>(call: Promise<T>) => session.ask(peer, call, signal);
        const { disks } = await ask(unary(agent, agent.describeDisks, { paths: [session.spec.sourcePath] }));
        const diskBytes = disks[0]?.diskBytes ?? 0;
        if (session.spec.captureMode === 'CAPTURE_SCAN') {
          session.captureMode = 'CAPTURE_SCAN';
          await this.followScanCapture(agent, diskBytes, signal);
        } else {
          const capture: CaptureStatus__Output = await ask(unary(agent, agent.startCapture, { path: session.spec.sourcePath, mode: session.spec.captureMode, scanIntervalMs: session.spec.scanIntervalMs }, { timeoutMs: hashTreeOpenTimeoutMs(diskBytes) }));
          session.captureMode = capture.mode === 'CAPTURE_MODE_UNSPECIFIED' ? session.spec.captureMode : capture.mode;
        }
        await receiveChanges({
          agent,
          peer,
          path: session.spec.sourcePath,
          diskBytes,
          journal: session.journal,
          cache: session.context.cache,
          signal,
          onConnected: () => {
            connected = true;
            backoff.reset();
            session.agentConnected = true;
            session.agentProblem = '';
            session.touch();
          },
          onNewCapture: async (captureId, firstSequence, reason) => {
            if (session.spec.captureMode !== 'CAPTURE_SCAN') return this.beginCapture(captureId, firstSequence, reason);
            // Nothing of this capture is journaled: the stream ends here and the receiver restarts the capture.
            await this.needScanRestart(reason);
            session.stream?.abort();
            throw new DrplaneError(ErrorCode.Aborted, `the scan capture of disk ${session.spec.diskId} restarts (${reason})`);
          },
          onBatch: (batch, lastSequence) => this.noteBatch(batch, lastSequence),
          onReceived: (bytes) => {
            session.received.add(bytes);
            session.context.metrics?.receivedBytes.inc({ disk_id: session.spec.diskId }, bytes);
          },
          onHeldBack: (reason) => {
            session.cacheProblem = reason;
            session.touch();
          },
        });
      } catch (error) {
        if (session.stopped) return;
        const message = error instanceof Error ? error.message : String(error);
        session.agentConnected = false;
        // Errors from the agent's calls already name it; others (the journal, the master target) get the prefix.
        const peer = `agent ${session.spec.agentAddress}`;
        session.agentProblem = `${message.startsWith(peer) ? message : `${peer}: ${message}`}; retrying (the journal keeps what arrived)`;
        session.cacheProblem = '';
        session.touch();
        log.warn({ diskId: session.spec.diskId, err: message }, 'change stream interrupted');
        if (session.journal.failure) await this.reopenJournal();
      }
      if (connected) backoff.reset();
      try {
        await sleep(backoff.nextDelayMs(), undefined, { signal: session.stopping.signal });
      } catch {
        return;
      }
    }
  }

  private noteBatch(batch: ChangeBatch__Output, lastSequence: number): void {
    const session = this.session;
    if (batch.mode !== 'CAPTURE_MODE_UNSPECIFIED') session.captureMode = batch.mode;
    if (batch.watermarkTimeMs > 0) session.watermark = { timeMs: batch.watermarkTimeMs, sequence: lastSequence };
    session.touch();
  }

  /** The agent streams a capture the journal does not continue: a new journal, and a sync before any point. */
  private async beginCapture(captureId: string, firstSequence: number, reason: string): Promise<void> {
    const session = this.session;
    const release = await session.pauseReplicator();
    try {
      const previous = session.journal.captureId;
      await session.journal.reset(captureId, firstSequence);
      session.watermark = { timeMs: 0, sequence: 0 };
      session.appliedChangeSequence = firstSequence - 1;
      await session.scheduleSync('', firstSequence, previous ? `new capture or missing records (${reason})` : 'first capture', captureId);
      // A flush waiting for records of the old capture is served by the first point after the sync.
      session.flushWaiters.followCapture(captureId);
    } finally {
      release();
    }
  }

  /** Scan: the journal cannot continue the agent's capture; the receiver restarts it (followScanCapture). */
  private async needScanRestart(reason: string): Promise<void> {
    const session = this.session;
    const release = await session.pauseReplicator();
    try {
      if (!session.state.sync) await session.scheduleSync('', 1, `new capture or missing records (${reason}): the scan capture restarts`);
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
    const session = this.session;
    const peer = `agent ${session.spec.agentAddress}`;
    const ask = <T>(call: Promise<T>) => session.ask(peer, call, signal);
    const diskPath = path.resolve(session.spec.sourcePath);
    const current = async () => (await ask(unary(agent, agent.listCaptures, {}))).captures.find((capture) => capture.path === diskPath);
    const startRequest = { path: session.spec.sourcePath, mode: session.spec.captureMode, scanIntervalMs: session.spec.scanIntervalMs };
    if (!session.state.sync) {
      let reason = 'first capture';
      if (session.journal.captureId) {
        const running = await current();
        if (running?.captureId === session.journal.captureId) {
          // Joins the running capture (scan_baseline is ignored) to pass on the scan interval; not awaited: it answers after the first pass.
          unary(agent, agent.startCapture, startRequest, { timeoutMs: hashTreeOpenTimeoutMs(diskBytes) }).catch(() => undefined);
          return;
        }
        reason = running ? `the agent's capture is ${running.captureId}, the journal's ${session.journal.captureId}` : 'the agent has no capture of the disk';
      }
      await this.needScanRestart(reason);
    }
    // What the replica holds decides the first pass's baseline: zeros (its hash tree's root is 0) make EMPTY
    // exact; anything else (seeded at reprotect, adopted, applied to before) is UNKNOWN, whose first pass ships
    // every block, and the sender drops those the replica already holds (first-pass-filter.ts).
    const replica = await session.replica(signal);
    const rescan = (replica.seeded && replica.appliedSequence === 0) || session.state.sync?.mode === 'SYNC_MODE_FULL';
    const content = await replicaContent(session.baselineSession(), replica, rescan, signal);
    await ask(unary(agent, agent.stopCapture, { path: session.spec.sourcePath }, { timeoutMs: 5_000 }));
    // The agent compares its first pass with the replica's hashes itself, so only the blocks that differ cross either
    // hop; an agent without PutScanBaseline ships every block and the sender filters them (first-pass-filter.ts).
    const atAgent = content.hashes ? await putScanBaseline(session.baselineSession(), agent, content.hashes, ask) : false;
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
    const release = await session.pauseReplicator();
    try {
      await session.journal.reset(fresh.captureId, 1);
      session.watermark = { timeMs: 0, sequence: 0 };
      session.appliedChangeSequence = 0;
      session.firstPass = replicaHashes ? { captureId: fresh.captureId, filter: new FirstPassFilter(replicaHashes, session.context.pool) } : undefined;
      session.firstPassAtAgent = atAgent ? fresh.captureId : '';
      const firstPass = replicaHashes ? { captureId: fresh.captureId, endSequence: 0 } : null;
      session.state = { ...session.state, captureId: fresh.captureId, consistentFrom: 1, replayFrom: 1, sync: null, firstPass };
      await session.persist();
      // A flush waiting for records of the old capture is served by the first point of the new one (its first pass started after the flush).
      session.flushWaiters.followCapture(fresh.captureId);
      session.context.log.info({ diskId: session.spec.diskId, captureId: fresh.captureId, scanBaseline, replicaSeeded: replica.seeded, replicaRescanned: rescan }, 'scan capture restarted: its first pass is the sync');
      session.touch();
    } finally {
      release();
    }
  }

  /** Reopens a journal whose write failed: opening cuts what was half written. */
  private async reopenJournal(): Promise<void> {
    const session = this.session;
    const release = await session.pauseReplicator();
    try {
      await session.journal.close().catch(() => undefined);
      session.journal = await Journal.open(journalDir(session.context.cache.dir, session.spec.diskId), { ...session.context.journal, log: session.context.log });
      session.context.log.warn({ diskId: session.spec.diskId, durableSequence: session.journal.durableSequence }, 'journal reopened after a failed write');
    } finally {
      release();
    }
  }
}
