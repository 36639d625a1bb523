// gRPC handlers of drplane.v1.MasterTarget: decode the request, call the domain, encode the answer.
import type * as grpc from '@grpc/grpc-js';
import { unaryHandler, unimplemented } from '../../shared/grpc';
import { toServiceError, limitExceeded, invalidArgument } from '../../shared/errors';
import { hashTreeFanout, hashTreeParentsPerRequestMax } from '../../shared/limits';
import { version } from '../../shared/daemon';
import type { Logger } from '../../shared/log';
import type { MasterTargetHandlers } from '../../generated/drplane/v1/MasterTarget';
import type { BatchAck } from '../../generated/drplane/v1/BatchAck';
import type { BatchFrame__Output } from '../../generated/drplane/v1/BatchFrame';
import type { Replica } from '../../generated/drplane/v1/Replica';
import type { Replicas } from './replicas';
import type { BatchApplier } from './apply';
import type { RecoveryPoints } from './recovery-points';
import { toProtoPoint } from './recovery-points';
import type { ReplicaRecord } from './retention-store';

function toProtoReplica(record: ReplicaRecord): Replica {
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
  };
}

export function masterTargetService(parts: { name: string; replicas: Replicas; applier: BatchApplier; points: RecoveryPoints; log: Logger }): MasterTargetHandlers {
  const { name, replicas, applier, points, log } = parts;
  return {
    ...(unimplemented(['ConfigureReplica', 'SelectRecoveryPoint']) as unknown as Pick<MasterTargetHandlers, 'ConfigureReplica' | 'SelectRecoveryPoint'>),
    GetStatus: unaryHandler(async () => ({
      name,
      version,
      datastoreRoots: replicas.datastores.roots,
      replicaCount: replicas.count(),
      replicaCountMax: replicas.disksMax,
      batchesApplied: applier.batchesApplied,
      bytesApplied: applier.bytesApplied,
      retentionStoreBytes: replicas.store.bytesUsed(),
    }), log),
    CreateReplica: unaryHandler(async (request) => toProtoReplica(await replicas.create(request)), log),
    GetReplica: unaryHandler(async (request) => toProtoReplica(replicas.get(request.diskId)), log),
    ListReplicas: unaryHandler(async () => ({ replicas: replicas.list().map(toProtoReplica) }), log),
    SetEpoch: unaryHandler(async (request) => toProtoReplica(await replicas.setEpoch(request.diskId, request.epoch)), log),
    ApplyBatches: (call: grpc.ServerDuplexStream<BatchFrame__Output, BatchAck>) => {
      let ended = false;
      // After the stream has ended (refused), acks of batches that were still applying go nowhere.
      const ack = (message: BatchAck) =>
        new Promise<void>((resolve) => {
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
        log.warn({ err: (error as Error).message, code: status.code }, 'batch stream refused');
        call.emit('error', status);
      };
      // destroyOnReturn: false, or a refused frame would destroy the call before its status is sent.
      void applier.consume(call.iterator({ destroyOnReturn: false }) as AsyncIterable<BatchFrame__Output>, ack, fail).then(() => {
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
    MaterialiseRecoveryPoint: unaryHandler(async (request) => {
      const result = await points.materialise(request.recoveryPointId, request.path);
      log.info({ pointId: request.recoveryPointId, path: result.path, beforeImageBytes: result.beforeImageBytes }, 'recovery point materialised');
      return { path: result.path, recoveryPoint: toProtoPoint(result.point), diskBytes: result.diskBytes, beforeImageBytes: result.beforeImageBytes, durationMs: result.durationMs };
    }, log),
  };
}
