// The agent's service: describes and reads the configured source disks, and
// builds their hash trees in the worker pool (workers read the disk themselves);
// captures their changes (write-through and scan) for process servers, with
// app-consistent points and group barriers (docs/continuous-replication.md);
// shuts disks down as a source for a planned failover (docs/failover.md).
import * as grpc from '@grpc/grpc-js';
import { unaryHandler } from '../../shared/grpc';
import { toServiceError, type DrplaneError } from '../../shared/errors';
import { checkHashTreeBytes, HashTree, hashTreeBytes } from '../../shared/hash-tree';
import { HashPool } from '../../shared/hash-pool';
import { blockBytes, changeStreamIdleMsMax, changeStreamsPerPeerMax, hashTreeFanout, readDiskCallsPerPeerMax, readDiskIdleMsMax, writeStreamBytesInFlightMax } from '../../shared/limits';
import { StreamGuard } from '../../shared/stream-guard';
import { openFlags } from '../../shared/open-beneath';
import { version } from '../../shared/daemon';
import type { Logger } from '../../shared/log';
import type { AgentHandlers } from '../../generated/drplane/v1/Agent';
import type { AgentStatus } from '../../generated/drplane/v1/AgentStatus';
import type { DescribeDisksResponse } from '../../generated/drplane/v1/DescribeDisksResponse';
import type { HashTreeInfo } from '../../generated/drplane/v1/HashTreeInfo';
import type { ReadDiskRequest__Output } from '../../generated/drplane/v1/ReadDiskRequest';
import type { DiskData } from '../../generated/drplane/v1/DiskData';
import type { ScanBaselineChunk__Output } from '../../generated/drplane/v1/ScanBaselineChunk';
import type { WriteRequest__Output } from '../../generated/drplane/v1/WriteRequest';
import type { WriteResponse } from '../../generated/drplane/v1/WriteResponse';
import { AppConsistentPoints } from './app-consistent';
import { Barriers } from './barrier';
import { Captures } from './captures';
import { serveChangeStream } from './change-stream';
import { SourceDisks } from './disks';
import { HashTrees } from './hash-trees';
import type { Hooks } from './hooks';
import type { BlockAccess } from './nbd-exports';
import { streamRanges, validateRanges } from './read-disk';
import { captureRefusal, type ShutDownDisks, SourceShutdown, writeRefusal } from './shutdown-source';
import { encodeWriteResponse, SourceWriters, type WriteResult } from './write-through';
import { PreEncoded } from '../../shared/wire';
import type { AgentMetrics } from './metrics';

export interface CaptureOptions {
  /** Held change records per capture (limit heldBytesMax, or lower from the configuration). */
  heldBytesMax: number;
  hooks: Hooks;
  /** The disks shut down as a source (ShutdownSource), as loaded from the data directory. */
  shutDown: ShutDownDisks;
  metrics?: AgentMetrics;
}

export class Agent {
  private readonly trees = new HashTrees();
  private bytesRead = 0;
  private readonly writers: SourceWriters;
  readonly captures: Captures;
  private readonly appPoints: AppConsistentPoints;
  private readonly barriers: Barriers;
  private readonly hooks: Hooks;
  private readonly shutDown: ShutDownDisks;
  private readonly sources: SourceShutdown;
  /** Ends each open WriteStream once its admitted writes are answered (at shutdown). */
  private readonly writeStreamEnders = new Set<() => void>();
  private readonly metrics: AgentMetrics | undefined;
  /** Streams a caller can hold: how many per peer, and how long one may stay idle (shared/stream-guard.ts). */
  private readonly readDiskCalls: StreamGuard;
  private readonly changeStreams: StreamGuard;

  constructor(
    private readonly name: string,
    readonly disks: SourceDisks,
    private readonly pool: HashPool,
    private readonly log: Logger,
    options: CaptureOptions,
  ) {
    this.hooks = options.hooks;
    this.shutDown = options.shutDown;
    this.metrics = options.metrics;
    const shutDownDisk = (diskPath: string) => this.shutDown.get(diskPath);
    this.writers = new SourceWriters(disks, (diskPath) => {
      const disk = shutDownDisk(diskPath);
      return disk && writeRefusal(disk);
    });
    this.captures = new Captures(disks, this.writers, pool, options.hooks, options.heldBytesMax, log, (diskPath) => {
      const disk = shutDownDisk(diskPath);
      return disk && captureRefusal(disk);
    });
    this.appPoints = new AppConsistentPoints(this.captures, options.hooks, log);
    this.barriers = new Barriers(this.captures, log);
    this.readDiskCalls = new StreamGuard({ method: 'ReadDisk', perPeerMax: readDiskCallsPerPeerMax, idleMsMax: readDiskIdleMsMax, log });
    this.changeStreams = new StreamGuard({ method: 'StreamChanges', perPeerMax: changeStreamsPerPeerMax, idleMsMax: changeStreamIdleMsMax, log });
    this.sources = new SourceShutdown({ disks, set: this.shutDown, hooks: options.hooks, writers: this.writers, captures: this.captures, trees: this.trees, log });
  }

  /** The disks, their writers and write-through captures, for the NBD server (nbd-exports.ts). */
  blockAccess(): BlockAccess {
    return {
      disks: this.disks,
      writers: this.writers,
      captureOf: (diskPath) => this.captures.writeThrough(diskPath),
      isShutDown: (diskPath) => this.shutDown.get(diskPath) !== undefined,
    };
  }

  async describeDisks(paths: readonly string[]): Promise<DescribeDisksResponse> {
    const wanted = paths.length ? paths : this.disks.paths;
    return { disks: await Promise.all(wanted.map((diskPath) => this.disks.describe(diskPath))) };
  }

  async openHashTree(diskPath: string): Promise<HashTreeInfo> {
    const disk = await this.disks.describe(diskPath);
    // Checked before the disk is read: the leaves (8 bytes per block) are allocated whole.
    const treeBytes = hashTreeBytes(Math.ceil(disk.diskBytes / blockBytes));
    checkHashTreeBytes(treeBytes, disk.diskBytes, `disk ${disk.path}`);
    this.trees.makeRoom(treeBytes);
    const leaves = await this.disks.withOpenPath(disk.path, (openPath) => this.pool.hashFile(openPath, 0, disk.diskBytes));
    this.bytesRead += disk.diskBytes;
    this.metrics?.readBytes.inc({ disk_path: disk.path, purpose: 'hash_tree' }, disk.diskBytes);
    const open = this.trees.add(disk.path, disk.diskBytes, new HashTree(leaves, hashTreeFanout), treeBytes);
    this.log.info({ disk: disk.path, treeId: open.treeId, diskBytes: disk.diskBytes }, 'hash tree opened');
    return {
      treeId: open.treeId,
      diskBytes: disk.diskBytes,
      leafCount: open.tree.leafCount,
      height: open.tree.height,
      fanout: open.tree.fanout,
      rootHash: open.tree.root,
      bytesRead: disk.diskBytes,
    };
  }

  async readDisk(call: grpc.ServerWritableStream<ReadDiskRequest__Output, DiskData>): Promise<void> {
    const { path: requested, ranges, skipZero, packSmallPieces } = call.request;
    const disk = await this.disks.describe(requested);
    validateRanges(ranges, disk.diskBytes, disk.path);
    await streamRanges(
      call,
      disk.path,
      ranges,
      { skipZero, packSmallPieces },
      (bytes) => {
        this.bytesRead += bytes;
        this.metrics?.readBytes.inc({ disk_path: disk.path, purpose: 'sync' }, bytes);
      },
      () => this.disks.open(disk.path, openFlags.read),
    );
  }

  status(): AgentStatus {
    return {
      name: this.name,
      version,
      diskPaths: [...this.disks.paths],
      bytesRead: this.bytesRead,
      openHashTrees: this.trees.size,
      captures: this.captures.list(),
      hooks: this.hooks.names,
      shutDownPaths: this.shutDown.paths,
      diskRoots: [...this.disks.roots],
    };
  }

  /**
   * Checks a write and queues it on its disk; resolves once it is queued
   * (wrapped, so the write's own promise is not awaited here). Callers that
   * call in order are queued in order.
   */
  private async admitWrite(request: WriteRequest__Output): Promise<{ result: Promise<WriteResult> }> {
    const writer = await this.writers.get(request.path);
    return { result: writer.write(request.offset, request.data, request.sync, () => this.captures.writeThrough(writer.disk.path)) };
  }

  /**
   * WriteStream: one response per request, in order. A refused request ends
   * the stream (after the answers of the requests before it) and no request
   * after it is written. Accepted and unanswered bytes are bounded: past the
   * bound the stream is paused.
   */
  private writeStream(call: grpc.ServerDuplexStream<WriteRequest__Output, WriteResponse>): void {
    let refusing = false;
    let ended = false;
    let bytesInFlight = 0;
    let paused = false;
    // Admission and answers are two chains: a write is admitted in arrival order, answered in the same order.
    let admitted: Promise<void> = Promise.resolve();
    let answered: Promise<void> = Promise.resolve();
    const refuse = (error: unknown) => {
      if (ended) return;
      ended = true;
      const status = toServiceError(error);
      if (status.code === grpc.status.INTERNAL) this.log.error({ err: error }, 'WriteStream failed');
      if (!call.cancelled) call.emit('error', status);
    };
    call.on('data', (request: WriteRequest__Output) => {
      const bytes = request.data.length;
      bytesInFlight += bytes;
      if (!paused && bytesInFlight >= writeStreamBytesInFlightMax) {
        paused = true;
        call.pause();
      }
      const done = () => {
        bytesInFlight -= bytes;
        if (paused && bytesInFlight < writeStreamBytesInFlightMax) {
          paused = false;
          call.resume();
        }
      };
      admitted = admitted.then(async () => {
        if (refusing || ended) return done();
        let result: Promise<WriteResult>;
        try {
          ({ result } = await this.admitWrite(request));
        } catch (error) {
          refusing = true;
          done();
          answered = answered.then(() => refuse(error));
          return;
        }
        answered = answered.then(async () => {
          try {
            const response = await result;
            if (!ended) call.write(new PreEncoded(encodeWriteResponse(response)) as unknown as WriteResponse);
          } catch (error) {
            refusing = true;
            refuse(error);
          } finally {
            done();
          }
        });
      });
    });
    const finish = () => {
      refusing = true;
      this.writeStreamEnders.delete(finish);
      void admitted
        .then(() => answered)
        .then(() => {
          if (!ended && !call.cancelled) {
            ended = true;
            call.end();
          }
        });
    };
    this.writeStreamEnders.add(finish);
    call.on('end', finish);
    call.on('cancelled', () => {
      ended = true;
      this.writeStreamEnders.delete(finish);
    });
  }

  /**
   * SIGTERM: long-lived streams would keep the server's graceful shutdown
   * waiting, so barriers let go, captures stop (their streams end with
   * UNAVAILABLE) and write streams end after the writes they admitted.
   */
  shutdown(): void {
    this.barriers.releaseAll();
    this.captures.stopAll();
    for (const finish of [...this.writeStreamEnders]) finish();
  }

  /** Closes the source disks once their queued writes are done (after shutdown()). */
  async close(): Promise<void> {
    this.shutdown();
    await this.writers.closeAll();
  }

  handlers(): AgentHandlers {
    return {
      GetStatus: unaryHandler(async () => this.status(), this.log),
      DescribeDisks: unaryHandler(async (request) => this.describeDisks(request.paths), this.log),
      OpenHashTree: unaryHandler(async (request) => this.openHashTree(request.path), this.log),
      GetHashes: unaryHandler(async (request) => ({ hashes: this.trees.children(request.treeId, request.level, request.parents) }), this.log),
      CloseHashTree: unaryHandler(async (request) => (this.trees.close(request.treeId), {}), this.log),
      ReadDisk: (call) => {
        let ended = false;
        const end = (error?: unknown) => {
          if (ended) return;
          ended = true;
          if (error === undefined) return void call.end();
          const status = toServiceError(error);
          if (status.code === grpc.status.INTERNAL) this.log.error({ err: error, disk: call.request.path }, 'ReadDisk failed');
          call.emit('error', status);
        };
        try {
          // Idle: the caller took nothing; the call is ended and, once grpc-js reports it closed, the read loop stops.
          // Its place is freed by the guard once the caller has taken every piece ('finish') or the call closed.
          this.readDiskCalls.admit(call, end);
        } catch (error) {
          return end(error);
        }
        this.readDisk(call).then(
          () => end(),
          (error: unknown) => end(error),
        );
      },
      StartCapture: unaryHandler(async (request) => this.captures.start(request), this.log),
      StopCapture: unaryHandler(async (request) => this.captures.stop(request.path), this.log),
      PutScanBaseline: (call, callback) => {
        this.captures.putScanBaseline(call as AsyncIterable<ScanBaselineChunk__Output>).then(
          (result) => callback(null, result),
          (error: unknown) => callback(toServiceError(error) as grpc.ServiceError),
        );
      },
      ListCaptures: unaryHandler(async () => ({ captures: this.captures.list() }), this.log),
      StreamChanges: (call) => {
        let endIdle: ((error: DrplaneError) => void) | undefined;
        try {
          // Idle: the stream ends with the status and frees its capture for the next one; its records stay held.
          const admitted = this.changeStreams.admit(call, (error) => endIdle?.(error));
          call.once('close', () => admitted.release());
        } catch (error) {
          call.emit('error', toServiceError(error));
          return;
        }
        endIdle = serveChangeStream(call, (diskPath) => this.captures.get(diskPath), this.log);
      },
      Write: unaryHandler(async (request) => (await this.admitWrite(request)).result, this.log),
      WriteStream: (call) => this.writeStream(call),
      TakeAppConsistentPoint: unaryHandler(async (request) => this.appPoints.take(request.paths, request.tag), this.log),
      PrepareBarrier: unaryHandler(async (request) => this.barriers.prepare(request.barrierId, request.paths, request.holdMs), this.log),
      ReleaseBarrier: unaryHandler(async (request) => this.barriers.release(request.barrierId), this.log),
      ShutdownSource: unaryHandler(async (request) => this.sources.shutdown(request), this.log),
      ReleaseSource: unaryHandler(async (request) => (await this.sources.release(request.paths), {}), this.log),
    };
  }
}
