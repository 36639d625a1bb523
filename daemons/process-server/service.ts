// The process server's gRPC service: each handler hands its request to the
// syncs or the replication sessions, and GetStatus sums their figures.
import { unaryHandler } from '../../shared/grpc';
import type { HashPool } from '../../shared/hash-pool';
import type { Logger } from '../../shared/log';
import type { ProcessServerHandlers } from '../../generated/drplane/v1/ProcessServer';
import type { CacheSpace } from './cache';
import type { Replications } from './replications';
import type { Syncs } from './syncs';

export function processServerService({ replications, syncs, pool, cache, log }: { replications: Replications; syncs: Syncs; pool: HashPool; cache: CacheSpace; log: Logger }): ProcessServerHandlers {
  return {
    GetStatus: unaryHandler(async () => {
      const totals = replications.totals();
      const status = syncs.status(pool.threads);
      return { ...status, syncsRunning: (status.syncsRunning ?? 0) + totals.syncsRunning, bytesSent: Number(status.bytesSent ?? 0) + totals.bytesSent, replications: totals.replications, cacheBytes: totals.cacheBytes, cacheBytesMax: cache.bytesMax, backlogBytes: totals.backlogBytes, cacheDir: cache.dir };
    }, log),
    StartSync: unaryHandler(async (request) => syncs.start(request), log),
    GetSync: unaryHandler(async (request) => syncs.get(request.diskId), log),
    ListSyncs: unaryHandler(async () => ({ syncs: syncs.list() }), log),
    StopSync: unaryHandler(async (request) => syncs.stop(request.diskId), log),
    StartReplication: unaryHandler(async (request) => replications.start(request), log),
    GetReplication: unaryHandler(async (request) => replications.get(request.diskId), log),
    ListReplications: unaryHandler(async () => ({ replications: replications.list() }), log),
    StopReplication: unaryHandler(async (request) => replications.stop(request.diskId), log),
    FlushReplication: unaryHandler(async (request) => replications.flush(request.diskId, request.timeoutMs), log),
    ResyncReplication: unaryHandler(async (request) => replications.resync(request.diskId, request.full), log),
  };
}
