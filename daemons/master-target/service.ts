// gRPC handlers of drplane.v1.MasterTarget: decode the request, call the domain, encode the answer.
import type * as grpc from '@grpc/grpc-js';
import { unaryHandler } from '../../shared/grpc';
import { toServiceError, limitExceeded, invalidArgument } from '../../shared/errors';
import { batchStreamIdleMsMax, batchStreamsPerPeerMax, hashTreeFanout, hashTreeParentsPerRequestMax } from '../../shared/limits';
import { StreamGuard } from '../../shared/stream-guard';
import { version } from '../../shared/daemon';
import type { Logger } from '../../shared/log';
import type { MasterTargetHandlers } from '../../generated/drplane/v1/MasterTarget';
import type { BatchAck } from '../../generated/drplane/v1/BatchAck';
import type { BatchFrame__Output } from '../../generated/drplane/v1/BatchFrame';
import type { Replica } from '../../generated/drplane/v1/Replica';
import type { Replicas } from './replicas';
import { masterTargetStoppingMessage, type BatchApplier } from './apply';
import type { RecoveryPoints } from './recovery-points';
import { toProtoPoint } from './recovery-points';
import type { ReplicaRecord } from './retention-store';
import type { Retention } from './retention';
import type { Retirement } from './retirement';
import type { MachineDisks } from './machine-disks';
import type { StartHook } from './start-hook';
import { volumeSpace, type RetentionVolume } from './retention-volume';
import { MasterTargetMetrics } from './metrics';

function toProtoReplica(record: ReplicaRecord, points: RecoveryPoints): Replica {
  // A retired replica holds no point, even while an interrupted retirement still has keys to delete.
  const oldest = record.retired ? undefined : points.oldest(record.diskId);
  const newest = record.retired ? undefined : points.newest(record.diskId);
  return {
    diskId: record.diskId,
    path: record.path,
    diskBytes: record.diskBytes,
    epoch: record.epoch,
    appliedSequence: record.appliedSequence,
    syncId: record.syncId,
    syncCursor: record.syncCursor,
    syncComplete: record.syncComplete,
    recoveryPointCount: record.recoveryPointCount,
    latestRecoveryPointId: record.latestRecoveryPointId,
    createdTimeMs: record.createdTimeMs,
    captureId: record.captureId,
    appliedChangeSequence: record.appliedChangeSequence,
    retentionWindowMs: record.retentionWindowMs,
    oldestRecoveryPointId: oldest?.id ?? '',
    latestRecoveryPointTimeMs: newest?.sourceTimeMs ?? 0,
    oldestRecoveryPointTimeMs: oldest?.sourceTimeMs ?? 0,
    beforeImageBytes: record.beforeImageBytes,
    retired: record.retired,
    seeded: record.seeded,
    dataSequence: record.dataSequence,
  };
}

/** Frames received and not yet taken by the applier; past it the call is paused (HTTP/2 flow control holds the sender). */
const framesBufferedMax = 2;

/**
 * The call's frames, in order, as an async iterable that never destroys the
 * call. Node's own stream iterator destroys a stream that emits 'error' while
 * it iterates, and a destroyed grpc-js call never sends its status: a refusal
 * emitted while frames were still unread (a duplicate found with batches
 * queued behind it) left the sender waiting forever.
 */
function framesOf(call: grpc.ServerDuplexStream<BatchFrame__Output, BatchAck>): AsyncIterable<BatchFrame__Output> {
  return {
    [Symbol.asyncIterator]() {
      const queue: BatchFrame__Output[] = [];
      let ended = false;
      let wake: (() => void) | undefined;
      const notify = () => {
        wake?.();
        wake = undefined;
      };
      const onData = (frame: BatchFrame__Output) => {
        queue.push(frame);
        if (queue.length >= framesBufferedMax) call.pause();
        notify();
      };
      const onEnd = () => {
        ended = true;
        notify();
      };
      call.on('data', onData);
      for (const event of ['end', 'error', 'close']) call.on(event, onEnd);
      const detach = () => {
        call.off('data', onData);
        for (const event of ['end', 'error', 'close']) call.off(event, onEnd);
      };
      return {
        async next(): Promise<IteratorResult<BatchFrame__Output>> {
          for (;;) {
            const frame = queue.shift();
            if (frame) {
              if (queue.length < framesBufferedMax && !ended) call.resume();
              return { value: frame, done: false };
            }
            if (ended) {
              detach();
              return { value: undefined, done: true };
            }
            await new Promise<void>((resolve) => (wake = resolve));
          }
        },
        async return(): Promise<IteratorResult<BatchFrame__Output>> {
          detach();
          return { value: undefined, done: true };
        },
      };
    },
  };
}

export function masterTargetService(parts: {
  name: string;
  replicas: Replicas;
  applier: BatchApplier;
  points: RecoveryPoints;
  retention: Retention;
  retirement: Retirement;
  machineDisks: MachineDisks;
  startHook: StartHook;
  volume: RetentionVolume;
  log: Logger;
  metrics?: MasterTargetMetrics;
}): MasterTargetHandlers {
  const { name, replicas, applier, points, retention, retirement, machineDisks, startHook, volume, log } = parts;
  const batchStreams = new StreamGuard({ method: 'ApplyBatches', perPeerMax: batchStreamsPerPeerMax, idleMsMax: batchStreamIdleMsMax, log });
  const describe = (record: ReplicaRecord) => toProtoReplica(record, points);
  return {
    GetStatus: unaryHandler(async () => {
      // Retired replicas do not count: they hold no disk, no point and no file.
      const records = replicas.list().filter((record) => !record.retired);
      const oldestTimes = records.map((record) => points.oldest(record.diskId)?.sourceTimeMs ?? 0).filter((time) => time > 0);
      const space = volumeSpace(volume.dir);
      return {
        name,
        version,
        datastoreRoots: replicas.datastores.roots,
        replicaCount: records.length,
        replicaCountMax: replicas.disksMax,
        batchesApplied: applier.batchesApplied,
        bytesApplied: applier.bytesApplied,
        retentionStoreBytes: replicas.store.bytesUsed(),
        retentionDir: volume.dir,
        retentionCapacityBytes: space.capacityBytes,
        retentionFreeBytes: space.freeBytes,
        oldestRecoveryPointTimeMs: oldestTimes.length ? Math.min(...oldestTimes) : 0,
        recoveryPointCount: records.reduce((sum, record) => sum + record.recoveryPointCount, 0),
        recoveryPointsPruned: retention.recoveryPointsPruned,
        beforeImageBytesPruned: retention.beforeImageBytesPruned,
        // A daemon whose volume failed its checks does not start, so a running one always qualified.
        retentionVolumeQualified: true,
        retentionVolumeProblem: '',
      };
    }, log),
    CreateReplica: unaryHandler(async (request) => {
      // A retired disk created again starts clean: a retirement a crash interrupted is finished first.
      await retirement.finishIfInterrupted(request.diskId);
      return describe(await replicas.create(request));
    }, log),
    GetReplica: unaryHandler(async (request) => describe(replicas.get(request.diskId)), log),
    ListReplicas: unaryHandler(async () => ({ replicas: replicas.list().map(describe) }), log),
    SetEpoch: unaryHandler(async (request) => describe(await replicas.setEpoch(request.diskId, request.epoch)), log),
    ConfigureReplica: unaryHandler(async (request) => describe(await replicas.configure(request.diskId, request.retentionWindowMs)), log),
    SelectRecoveryPoint: unaryHandler(async (request) => toProtoPoint(points.select(request)), log),
    RetireReplica: unaryHandler(async (request) => describe(await retirement.retire(request.diskId, request.epoch)), log),
    DeleteDisk: unaryHandler(async (request) => {
      await machineDisks.delete(request.path);
      return {};
    }, log),
    StartMachine: unaryHandler(async (request) => startHook.start(request), log),
    ApplyBatches: (call: grpc.ServerDuplexStream<BatchFrame__Output, BatchAck>) => {
      let ended = false;
      let admitted;
      try {
        // An idle stream ends like a refused one: the batch it was receiving is dropped whole, nothing of it written.
        admitted = batchStreams.admit(call, (error) => fail(error));
      } catch (error) {
        call.emit('error', toServiceError(error));
        return;
      }
      const stream = admitted;
      // After the stream has ended (refused), acks of batches that were still applying go nowhere.
      const ack = (message: BatchAck) =>
        new Promise<void>((resolve) => {
          stream.touch();
          if (ended || call.destroyed || call.writableEnded) resolve();
          else if (call.write(message)) resolve();
          else {
            call.once('drain', resolve);
            call.once('close', resolve);
          }
        });
      const fail = (error: unknown) => {
        if (ended) return;
        ended = true;
        const status = toServiceError(error);
        if ((error as Error).message === masterTargetStoppingMessage) log.info('batch stream ended: the master target is stopping');
        else {
          log.warn({ err: (error as Error).message, code: status.code }, 'batch stream refused');
          parts.metrics?.batchesRefused.inc({ code: MasterTargetMetrics.statusName(status.code) });
        }
        call.emit('error', status);
      };
      void applier.consume(framesOf(call), ack, fail).then(() => {
        stream.release();
        if (ended) return;
        ended = true;
        call.end();
      });
    },
    OpenHashTree: unaryHandler(async (request) => {
      const { treeId, tree, record, bytesRead } = await replicas.openHashTree(request.diskId, request.rescan);
      return { treeId, diskBytes: record.diskBytes, leafCount: tree.leafCount, height: tree.height, fanout: hashTreeFanout, rootHash: tree.root, bytesRead };
    }, log),
    GetHashes: unaryHandler(async (request) => {
      if (request.parents.length > hashTreeParentsPerRequestMax) throw limitExceeded(`GetHashes asks for ${request.parents.length} parents, at most ${hashTreeParentsPerRequestMax}`);
      if (!request.treeId) throw invalidArgument('tree_id is empty');
      return { hashes: replicas.tree(request.treeId).children(request.level, request.parents.map(Number)) };
    }, log),
    CloseHashTree: unaryHandler(async (request) => {
      replicas.closeTree(request.treeId);
      return {};
    }, log),
    ListRecoveryPoints: unaryHandler(async (request) => ({ recoveryPoints: points.list(request.diskId).map(toProtoPoint) }), log),
    GetMaterialiseProgress: unaryHandler(async (request) => points.materialiseProgress(request.path), log),
    MaterialiseRecoveryPoint: unaryHandler(async (request) => {
      const result = await points.materialise(request.recoveryPointId, request.path, request.replaceExisting);
      log.info({ pointId: request.recoveryPointId, path: result.path, replaced: request.replaceExisting, beforeImageBytes: result.beforeImageBytes }, 'recovery point materialised');
      return { path: result.path, recoveryPoint: toProtoPoint(result.point), diskBytes: result.diskBytes, beforeImageBytes: result.beforeImageBytes, durationMs: result.durationMs };
    }, log),
  };
}
