// One sync of one disk: from the agent's source disk to the master target's
// replica. The process server keeps no durable state for it: each attempt
// starts from what the master target says it holds (GetReplica: applied
// sequence, sync id and cursor), so a sync resumes after any reconnect or
// restart. Only the last batch of a sync closes a recovery point, and not
// even that one when the source changes while it is read (no_recovery_point:
// a replication session's sync under a running capture).
import { setTimeout as sleep } from 'node:timers/promises';
import { Backoff } from '../../shared/backoff';
import type * as grpc from '@grpc/grpc-js';
import { status as grpcStatus } from '@grpc/grpc-js';
import { unary } from '../../shared/grpc';
import { DrplaneError, ErrorCode, failedPrecondition, fromServiceError, isServiceError } from '../../shared/errors';
import { differingLeaves, type HashTreeSide } from '../../shared/hash-tree';
import type { HashPool } from '../../shared/hash-pool';
import { blockBytes, hashTreeParentsPerRequestMax, readRangesPerRequestMax } from '../../shared/limits';
import type { Logger } from '../../shared/log';
import type { AgentClient, MasterTargetClient } from '../../shared/proto';
import type { DiskData__Output } from '../../generated/drplane/v1/DiskData';
import type { HashTreeInfo__Output } from '../../generated/drplane/v1/HashTreeInfo';
import type { OpenHashTreeRequest } from '../../generated/drplane/v1/OpenHashTreeRequest';
import type { Replica__Output } from '../../generated/drplane/v1/Replica';
import { BatchStream } from './batch-stream';
import { ExtentPipeline } from './extent-pipeline';
import type { Peers } from './peers';
import { syncTransferMode, type ProcessServerMetrics } from './metrics';
import { coalesceBlocks, RangeCursor, type ByteRange } from './ranges';
import { countingSide, hasDataFrom } from './tree-compare';

/** Back-off between attempts while a peer is away, doubling from min to max. */
export const retryBackoffMsMin = 200;
export const retryBackoffMsMax = 2_000;
/** A sync whose peers stay away this long without progress (a plan made, data read, a batch acknowledged) fails. */
export const syncStallMsMax = 10 * 60_000;
/** Opening a source's hash tree (or a scan capture's baseline pass) reads the whole disk: allow 20 MB/s, and a minute more. */
export const hashTreeOpenTimeoutMs = (diskBytes: number) => 60_000 + Math.ceil(diskBytes / 20_000);
const closeHashTreeTimeoutMs = 5_000;

export type SyncMode = 'SYNC_MODE_FULL' | 'SYNC_MODE_DELTA';

/** Where a sync is. Spelled as on the wire, so the logs and errors that name it read as the status does. */
export type SyncState = 'SYNC_STATE_RUNNING' | 'SYNC_STATE_COMPLETED' | 'SYNC_STATE_FAILED' | 'SYNC_STATE_STOPPED';

/** A sync's figures, kept in memory only; sync-status.ts turns them into the SyncStatus message. */
export interface SyncStatus {
  diskId: string;
  syncId: string;
  mode: SyncMode;
  state: SyncState;
  /** Why it failed ('' unless FAILED). */
  error: string;
  diskBytes: number;
  bytesScanned: number;
  bytesChanged: number;
  bytesSent: number;
  hashBytesExchanged: number;
  zeroBytesSkipped: number;
  lastAckedSequence: number;
  batchesAcked: number;
  reconnects: number;
  recoveryPointId: string;
  startedTimeMs: number;
  updatedTimeMs: number;
  resumedFrom: number;
  noRecoveryPoint: boolean;
}

export interface SyncRequest {
  diskId: string;
  syncId: string;
  mode: SyncMode;
  epoch: number;
  agentAddress: string;
  sourcePath: string;
  masterTargetAddress: string;
  tag: string;
  /** The last batch makes no recovery point (the source changes while it is read). */
  noRecoveryPoint: boolean;
}

export interface SyncContext {
  pool: HashPool;
  peers: Peers;
  compression: boolean;
  batchBytesMax: number;
  log: Logger;
  metrics?: ProcessServerMetrics;
}

/** What an attempt reads from the agent and how it treats zero blocks. */
interface ReadPlan {
  ranges: ByteRange[];
  /** The agent leaves out all-zero pieces. */
  skipZero: boolean;
  /** The pool keeps zero blocks in the extents. */
  keepZero: boolean;
}

type TreeClient = grpc.Client & Pick<AgentClient, 'openHashTree' | 'getHashes' | 'closeHashTree'>;

interface OpenedTree {
  info: HashTreeInfo__Output;
  side: HashTreeSide;
  close(): Promise<void>;
}

/** Waits for a call unless the sync (or session) is stopped first; the call's own outcome is then ignored. */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal, what = 'the sync'): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new DrplaneError(ErrorCode.Aborted, `${what} was stopped`));
    if (signal.aborted) onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => (signal.removeEventListener('abort', onAbort), resolve(value)),
      (error: unknown) => (signal.removeEventListener('abort', onAbort), reject(error)),
    );
  });
}

export class Sync {
  private readonly state: SyncStatus;
  private readonly abort = new AbortController();
  private done: Promise<void> = Promise.resolve();
  /** Why the sync failed, with its code (a session retries what may be retried). */
  private failedWith: DrplaneError | undefined;
  /** The last time the sync got further: started, planned, read data, or had a batch acknowledged. */
  private progressTimeMs = Date.now();
  private readonly agentPeer: string;
  private readonly masterTargetPeer: string;

  constructor(
    readonly request: SyncRequest,
    private readonly context: SyncContext,
  ) {
    const now = Date.now();
    this.state = {
      diskId: request.diskId,
      syncId: request.syncId,
      mode: request.mode,
      state: 'SYNC_STATE_RUNNING',
      error: '',
      diskBytes: 0,
      bytesScanned: 0,
      bytesChanged: 0,
      bytesSent: 0,
      hashBytesExchanged: 0,
      zeroBytesSkipped: 0,
      lastAckedSequence: 0,
      batchesAcked: 0,
      reconnects: 0,
      recoveryPointId: '',
      startedTimeMs: now,
      updatedTimeMs: now,
      resumedFrom: 0,
      noRecoveryPoint: request.noRecoveryPoint,
    };
    this.agentPeer = `agent ${request.agentAddress}`;
    this.masterTargetPeer = `master target ${request.masterTargetAddress}`;
  }

  get status(): SyncStatus {
    return { ...this.state };
  }

  get running(): boolean {
    return this.state.state === 'SYNC_STATE_RUNNING';
  }

  /** Resolves when the sync has completed, failed or stopped. */
  get finished(): Promise<void> {
    return this.done;
  }

  get failure(): DrplaneError | undefined {
    return this.failedWith;
  }

  start(): void {
    this.context.log.info({ diskId: this.request.diskId, syncId: this.request.syncId, mode: this.request.mode }, 'sync started');
    this.done = this.run().catch((error: unknown) => {
      this.context.log.error({ err: error, diskId: this.request.diskId }, 'sync loop failed: this is a bug');
      this.failedWith = new DrplaneError(ErrorCode.Internal, `internal error: ${(error as Error).message}`);
      this.end('SYNC_STATE_FAILED', this.failedWith.message);
    });
  }

  /** Stops the sync (it stays resumable on the master target) and waits until nothing more is sent. */
  async stop(): Promise<void> {
    if (this.running) {
      this.end('SYNC_STATE_STOPPED');
      this.abort.abort();
    }
    await this.done;
  }

  private touch(): void {
    this.state.updatedTimeMs = Date.now();
  }

  private end(state: SyncState, error = ''): void {
    if (!this.running) return;
    this.state.state = state;
    this.state.error = error;
    this.touch();
  }

  private async run(): Promise<void> {
    const { log } = this.context;
    const { diskId, syncId } = this.request;
    const backoff = new Backoff({ initialMs: retryBackoffMsMin, maxMs: retryBackoffMsMax });
    for (;;) {
      const batchesBefore = this.state.batchesAcked;
      try {
        await this.attempt();
        return;
      } catch (error) {
        if (this.abort.signal.aborted) {
          log.info({ diskId, syncId }, 'sync stopped');
          return;
        }
        if (!(error instanceof DrplaneError)) throw error;
        if (this.state.batchesAcked > batchesBefore) backoff.reset();
        const stalledMs = Date.now() - this.progressTimeMs;
        if (!error.retryable || stalledMs >= syncStallMsMax) {
          const message = error.retryable ? `${error.message} (no progress for ${Math.round(stalledMs / 1000)} s; giving up)` : error.message;
          log.error({ diskId, syncId, code: error.code, err: message }, 'sync failed');
          this.failedWith = new DrplaneError(error.code, message);
          this.end('SYNC_STATE_FAILED', message);
          return;
        }
        this.state.reconnects++;
        this.touch();
        const delayMs = backoff.nextDelayMs();
        log.warn({ diskId, syncId, err: error.message, retryInMs: delayMs }, 'sync interrupted; resuming from the state of the replica');
        try {
          await sleep(delayMs, undefined, { signal: this.abort.signal });
        } catch {
          return;
        }
      }
    }
  }

  /** Runs `action` when the sync is stopped (at once if it already is); returns the undo. */
  private onStop(action: () => void): () => void {
    if (this.abort.signal.aborted) action();
    else this.abort.signal.addEventListener('abort', action, { once: true });
    return () => this.abort.signal.removeEventListener('abort', action);
  }

  /** One call to a peer: its failure becomes a DrplaneError naming the peer; a stop ends the wait. */
  private async ask<T>(peer: string, call: Promise<T>): Promise<T> {
    try {
      return await abortable(call, this.abort.signal);
    } catch (error) {
      throw isServiceError(error) ? fromServiceError(error, peer) : error;
    }
  }

  private async attempt(): Promise<void> {
    const { diskId, syncId, epoch, sourcePath, mode, tag } = this.request;
    const agent = this.context.peers.agent(this.request.agentAddress);
    const masterTarget = this.context.peers.masterTarget(this.request.masterTargetAddress);

    const replica = await this.ask(this.masterTargetPeer, unary(masterTarget, masterTarget.getReplica, { diskId }));
    if (replica.epoch !== epoch) {
      throw new DrplaneError(ErrorCode.StaleEpoch, `replica ${diskId} on ${this.masterTargetPeer} is at epoch ${replica.epoch}, this sync was started with epoch ${epoch}: start it again with the disk's current epoch`);
    }
    this.state.lastAckedSequence = replica.appliedSequence;
    this.state.diskBytes = replica.diskBytes;
    if (replica.syncId === syncId && replica.syncComplete) {
      this.complete(this.request.noRecoveryPoint ? '' : replica.latestRecoveryPointId);
      return;
    }
    const { disks } = await this.ask(this.agentPeer, unary(agent, agent.describeDisks, { paths: [sourcePath] }));
    const diskBytes = disks[0]?.diskBytes;
    if (diskBytes !== replica.diskBytes) {
      throw failedPrecondition(`source disk ${sourcePath} has ${diskBytes} bytes but replica ${diskId} has ${replica.diskBytes}: a replica must have the size of its source`);
    }

    const resuming = replica.syncId === syncId;
    const plan = mode === 'SYNC_MODE_FULL' ? await this.planFull(masterTarget, replica, resuming) : await this.planDelta(agent, masterTarget, replica);
    this.progressTimeMs = Date.now();

    const figureLabels = { disk_id: diskId, mode: syncTransferMode(mode) };
    const batches = new BatchStream(masterTarget, {
      diskId,
      epoch,
      firstSequence: replica.appliedSequence + 1,
      syncId,
      batchBytesMax: this.context.batchBytesMax,
      peer: this.masterTargetPeer,
      onSent: (extent) => {
        this.state.bytesChanged += extent.length;
        this.state.bytesSent += extent.data.byteLength;
        this.context.metrics?.sentBytes.inc(figureLabels, extent.data.byteLength);
        this.context.metrics?.sentPlainBytes.inc(figureLabels, extent.length);
        this.touch();
      },
      onAck: (ack, batches) => {
        this.state.lastAckedSequence = ack.sequence;
        this.state.batchesAcked += batches;
        this.context.metrics?.batchesAcknowledged.inc(figureLabels, batches);
        this.progressTimeMs = Date.now();
        this.touch();
      },
    });
    const forget = this.onStop(() => batches.cancel());
    try {
      const pipeline = new ExtentPipeline(this.context.pool, this.context.compression, plan.keepZero, batches, (bytes) => (this.state.zeroBytesSkipped += bytes));
      for (let first = 0; first < plan.ranges.length; first += readRangesPerRequestMax) {
        await this.readRanges(agent, plan.ranges.slice(first, first + readRangesPerRequestMax), plan.skipZero, pipeline);
      }
      // The source is quiescent (or a snapshot) during a sync: the point is the state it had when reading ended.
      const sourceTimeMs = Date.now();
      await pipeline.flush();
      this.state.bytesScanned = diskBytes;
      const ack = await batches.finish(diskBytes, { recoveryPointKind: this.request.noRecoveryPoint ? 'RECOVERY_POINT_KIND_UNSPECIFIED' : 'CRASH_CONSISTENT', sourceTimeMs, tag });
      this.complete(ack.recoveryPointId);
    } finally {
      forget();
      batches.cancel();
    }
  }

  private complete(recoveryPointId: string): void {
    this.state.recoveryPointId = recoveryPointId;
    this.end('SYNC_STATE_COMPLETED');
    const { diskId, syncId } = this.request;
    const { bytesScanned, bytesChanged, bytesSent, hashBytesExchanged, zeroBytesSkipped, batchesAcked, reconnects } = this.state;
    this.context.log.info({ diskId, syncId, recoveryPointId, bytesScanned, bytesChanged, bytesSent, hashBytesExchanged, zeroBytesSkipped, batchesAcked, reconnects }, 'sync completed');
  }

  /** FULL: read from the cursor on; zero pieces are skipped where the replica holds zeros already. */
  private async planFull(masterTarget: MasterTargetClient, replica: Replica__Output, resuming: boolean): Promise<ReadPlan> {
    const { diskBytes } = replica;
    const start = resuming ? replica.syncCursor : 0;
    if (start % blockBytes !== 0 || start > diskBytes) {
      throw new DrplaneError(ErrorCode.Internal, `${this.masterTargetPeer} reports sync cursor ${start} for replica ${replica.diskId} of ${diskBytes} bytes`);
    }
    if (start > 0) this.state.resumedFrom = start;
    this.state.bytesScanned = start;
    if (start === diskBytes) return { ranges: [], skipZero: true, keepZero: false };
    // A new replica is all zeros, so leaving zero pieces out keeps it thin; a replica that
    // holds data past the cursor (a full resync) must get the zero blocks too, or old data would stay.
    const target = await this.openTree(masterTarget, this.masterTargetPeer, { diskId: replica.diskId }, diskBytes);
    let replicaHasData: boolean;
    try {
      replicaHasData = await hasDataFrom(target.side, target.info.leafCount, target.info.rootHash, start / blockBytes, target.info.fanout);
    } finally {
      await target.close();
    }
    if (replicaHasData) this.context.log.info({ diskId: replica.diskId, from: start }, 'the replica holds data past the cursor: zero blocks are sent too');
    return { ranges: [{ offset: start, length: diskBytes - start }], skipZero: !replicaHasData, keepZero: replicaHasData };
  }

  /**
   * DELTA: compare hash trees and read only the blocks that differ, zero
   * blocks included. A seeded replica that nothing was applied to yet (a copy
   * of the machine's old disk made at reprotect) is read by the master target
   * (rescan) rather than described by its index.
   */
  private async planDelta(agent: AgentClient, masterTarget: MasterTargetClient, replica: Replica__Output): Promise<ReadPlan> {
    const { diskId, sourcePath } = this.request;
    const { diskBytes } = replica;
    const rescan = replica.seeded && replica.appliedSequence === 0;
    const opened = await Promise.allSettled([
      this.openTree(agent, this.agentPeer, { diskId, path: sourcePath }, diskBytes),
      this.openTree(masterTarget, this.masterTargetPeer, { diskId, rescan }, diskBytes),
    ]);
    try {
      const [source, target] = opened.map((result) => {
        if (result.status === 'rejected') throw result.reason;
        return result.value;
      });
      this.state.bytesScanned = diskBytes;
      const leafCount = diskBytes / blockBytes;
      for (const [tree, peer] of [[source, this.agentPeer], [target, this.masterTargetPeer]] as const) {
        if (tree.info.leafCount !== leafCount || tree.info.fanout !== source.info.fanout) {
          throw failedPrecondition(`${peer} opened a hash tree of ${tree.info.leafCount} blocks with fanout ${tree.info.fanout}; expected ${leafCount} blocks with fanout ${source.info.fanout}`);
        }
      }
      if (source.info.rootHash.equals(target.info.rootHash)) return { ranges: [], skipZero: false, keepZero: true };
      const blocks = await differingLeaves(leafCount, source.side, target.side, hashTreeParentsPerRequestMax, source.info.fanout);
      this.context.log.info({ diskId, differingBlocks: blocks.length, hashBytes: this.state.hashBytesExchanged }, 'hash trees compared');
      return { ranges: coalesceBlocks(blocks), skipZero: false, keepZero: true };
    } finally {
      await Promise.all(opened.map((result) => (result.status === 'fulfilled' ? result.value.close() : undefined)));
    }
  }

  /** Opens a hash tree on a peer; every hash received counts in hash_bytes_exchanged. */
  private async openTree(client: TreeClient, peer: string, request: OpenHashTreeRequest, diskBytes: number): Promise<OpenedTree> {
    const info = await this.ask(peer, unary(client, client.openHashTree, request, { timeoutMs: hashTreeOpenTimeoutMs(diskBytes) }));
    this.state.hashBytesExchanged += info.rootHash.length;
    const getHashes = async (level: number, parents: number[]): Promise<Buffer> => {
      try {
        return (await this.ask(peer, unary(client, client.getHashes, { treeId: info.treeId, level, parents }))).hashes;
      } catch (error) {
        // The peer restarted or evicted the tree for a newer one: open it again on the next attempt.
        if (error instanceof DrplaneError && error.code === ErrorCode.NotFound) throw new DrplaneError(ErrorCode.Unavailable, `${error.message}; comparing again`);
        throw error;
      }
    };
    return {
      info,
      side: countingSide({ getHashes }, (bytes) => (this.state.hashBytesExchanged += bytes)),
      close: () => unary(client, client.closeHashTree, { treeId: info.treeId }, { timeoutMs: closeHashTreeTimeoutMs }).then(
        () => undefined,
        () => undefined,
      ),
    };
  }

  /** Streams ranges from the agent into the pipeline, checking each piece against the request. */
  private async readRanges(agent: AgentClient, ranges: ByteRange[], skipZero: boolean, pipeline: ExtentPipeline): Promise<void> {
    const cursor = new RangeCursor(ranges, skipZero, this.agentPeer);
    const stream = agent.readDisk({ path: this.request.sourcePath, ranges, skipZero, packSmallPieces: true });
    // grpc-js emits a late 'error' (after we stopped iterating) straight on the stream: without a listener it would crash the daemon.
    stream.on('error', () => undefined);
    // With skipZero, a stream cut short would read as "the rest is zero": only an OK status proves it complete.
    const ended = new Promise<grpc.StatusObject>((resolve) => stream.once('status', resolve));
    const forget = this.onStop(() => stream.cancel());
    try {
      for await (const message of stream as AsyncIterable<DiskData__Output>) {
        // Small pieces may come packed several to a message; an older agent sends each in a message of its own.
        for (const piece of message.extents.length > 0 ? message.extents : [message]) {
          this.state.zeroBytesSkipped += cursor.accept(piece.offset, piece.data.length);
          if (this.request.mode === 'SYNC_MODE_FULL') this.state.bytesScanned = piece.offset + piece.data.length;
          await pipeline.add(piece);
        }
        this.progressTimeMs = Date.now();
        this.touch();
      }
      const status = await ended;
      if (status.code !== grpcStatus.OK) throw Object.assign(new Error(status.details), status);
      this.state.zeroBytesSkipped += cursor.finish();
    } catch (error) {
      throw isServiceError(error) ? fromServiceError(error, this.agentPeer) : error;
    } finally {
      forget();
      stream.cancel();
    }
  }
}
