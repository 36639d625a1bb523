// FlushReplication of one session: a recovery point that covers what the
// source had when the flush was asked, or an error at its timeout. The waiters
// are kept in flush-waiters.ts and settled (Session.settleFlushes) as the
// replicator's batches are applied.
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { status as grpcStatus } from '@grpc/grpc-js';
import { unary } from '../../shared/grpc';
import { DrplaneError, ErrorCode, failedPrecondition, isServiceError } from '../../shared/errors';
import type { CaptureStatus__Output } from '../../generated/drplane/v1/CaptureStatus';
import type { RecoveryPoint__Output } from '../../generated/drplane/v1/RecoveryPoint';
import type { FlushWaiter } from './flush-waiters';
import type { Session } from './session';

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

/**
 * FlushReplication. Write-through: closes a point at the newest record the
 * agent has (or the journal, when the agent does not answer) and resolves
 * once it is applied. Scan: asks the agent for a pass that starts now and
 * resolves with the point that pass (or, when it found changes, the next
 * pass it asks for) made; so after the source stops changing the point
 * equals the source. See flushScan.
 */
export async function flush(session: Session, timeoutMs: number): Promise<RecoveryPoint__Output> {
  if (session.stopped) throw new DrplaneError(ErrorCode.Aborted, `the replication of disk ${session.spec.diskId} is stopped`);
  if (session.failedReason) throw failedPrecondition(`the replication of disk ${session.spec.diskId} failed: ${session.failedReason}`);
  if (session.spec.captureMode === 'CAPTURE_SCAN') return flushScan(session, timeoutMs);
  // Drain the agent too: a write it answered may still be on its way here. An agent that does not answer
  // (the source is down) holds nothing that can still arrive, so what the journal holds is the latest.
  const startedMs = Date.now();
  const agentNext = await agentNextSequence(session, Math.min(timeoutMs, flushAgentAskTimeoutMs));
  const remainingMs = Math.max(1, timeoutMs - (Date.now() - startedMs));
  const target = agentNext && agentNext.captureId === session.journal.captureId ? Math.max(session.journal.durableSequence, agentNext.nextSequence - 1) : session.journal.durableSequence;
  return waitForPoint(session, { captureId: session.journal.captureId, kind: 'covering', target }, remainingMs, (waiter) => {
    const need = Math.max(waiter.target, session.state.consistentFrom - 1);
    return `disk ${session.spec.diskId}: no point covering change record ${need} was applied within ${timeoutMs} ms (applied ${session.appliedChangeSequence}, ${session.state.sync ? 'a sync is running' : `backlog ${session.backlogBytes} bytes`}); flush again to keep waiting`;
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
function flushScan(session: Session, timeoutMs: number): Promise<RecoveryPoint__Output> {
  const deadline = Date.now() + timeoutMs;
  let asked = 0;
  const { waiter, promise } = waitForPoint(session, { captureId: session.journal.captureId, kind: 'covering', target: Number.POSITIVE_INFINITY }, timeoutMs, () => {
    const why = session.agentProblem || (asked < flushScanPassesMax ? '' : `the ${flushScanPassesMax} passes the flush asked for all found changes: is the source still changing? A point needs a quiet pass or a snapshot`);
    return `disk ${session.spec.diskId}: no scan pass that started after the flush made a recovery point within ${timeoutMs} ms (passes asked: ${asked}; applied ${session.appliedChangeSequence} of ${session.journal.durableSequence} received)${why ? `; ${why}` : ''}; flush again to keep waiting`;
  });
  const pending = () => session.flushWaiters.has(waiter) && !session.stopped;
  void (async () => {
    const agent = session.context.peers.agent(session.spec.agentAddress);
    const diskPath = path.resolve(session.spec.sourcePath);
    for (; asked < flushScanPassesMax && pending(); ) {
      const captureId = session.journal.captureId;
      const leftMs = deadline - Date.now();
      if (leftMs <= 0 || !captureId) return;
      let pass: CaptureStatus__Output | undefined;
      try {
        const { captures } = await unary(agent, agent.listCaptures, {}, { timeoutMs: Math.min(leftMs, flushAgentAskTimeoutMs) });
        const running = captures.find((capture) => capture.path === diskPath);
        // Joining answers after a pass that started after the call; it must not start a capture the session does not follow.
        if (running?.captureId === captureId && running.mode === 'CAPTURE_SCAN') {
          pass = await unary(agent, agent.startCapture, { path: session.spec.sourcePath, mode: 'CAPTURE_SCAN', scanIntervalMs: session.spec.scanIntervalMs }, { timeoutMs: Math.max(1, deadline - Date.now()) });
        }
      } catch (error) {
        if (!pending()) return;
        if (asked === 0 && isServiceError(error) && (error.code === grpcStatus.UNAVAILABLE || error.code === grpcStatus.DEADLINE_EXCEEDED)) {
          // The source cannot be asked for a pass: what arrived is the latest there is.
          waiter.kind = 'newest';
          waiter.target = session.journal.durableSequence;
          session.settleFlushes();
        }
        session.context.log.info({ diskId: session.spec.diskId, err: (error as Error).message }, 'flush: the agent ran no scan pass; scheduled passes or the received records serve the flush');
        return;
      }
      asked++;
      if (!pending()) return;
      if (pass?.captureId !== captureId || session.journal.captureId !== captureId) {
        // The agent has another capture (or none): the session restarts it, and when it resets the journal it
        // points every waiter at the new capture's first point. Until then this one waits for "the next capture".
        if (waiter.target === Number.POSITIVE_INFINITY && waiter.captureId === captureId && session.journal.captureId === captureId) waiter.captureId = '';
        return;
      }
      const passEnd = pass.nextSequence - 1;
      if (waiter.target === Number.POSITIVE_INFINITY) waiter.target = passEnd;
      session.settleFlushes();
      session.sender?.wake();
      // Wait until the pass's records are applied: a marker among them has made the point by then.
      while (pending() && Date.now() < deadline && session.journal.captureId === captureId && session.appliedChangeSequence < passEnd) await sleep(flushPollMs);
    }
  })().catch((error: unknown) => session.context.log.warn({ diskId: session.spec.diskId, err: (error as Error).message }, 'flush: asking for a scan pass failed'));
  return promise;
}

/** Registers a flush waiter, settled by the points applied (settleFlushes) or rejected after timeoutMs. */
function waitForPoint(session: Session, fields: Pick<FlushWaiter, 'captureId' | 'kind' | 'target'>, timeoutMs: number, timeoutMessage: (waiter: FlushWaiter) => string): { waiter: FlushWaiter; promise: Promise<RecoveryPoint__Output> } {
  const waiting = session.flushWaiters.add(fields, timeoutMs, timeoutMessage);
  session.settleFlushes();
  session.sender?.wake();
  return waiting;
}

/** The agent's capture of this disk: its id and the sequence its next record gets; undefined when the agent does not answer. */
async function agentNextSequence(session: Session, timeoutMs: number): Promise<{ captureId: string; nextSequence: number } | undefined> {
  try {
    const agent = session.context.peers.agent(session.spec.agentAddress);
    const { captures } = await unary(agent, agent.listCaptures, {}, { timeoutMs });
    const capture = captures.find((candidate) => candidate.path === path.resolve(session.spec.sourcePath));
    return capture ? { captureId: capture.captureId, nextSequence: capture.nextSequence } : undefined;
  } catch {
    return undefined;
  }
}
