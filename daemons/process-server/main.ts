// The process server: drives full and delta syncs from agents to master
// targets, and continuous replication sessions (agent change records journaled
// in the cache directory, sent as batches that close recovery points).
// Wiring only; the domain is in syncs.ts, sync.ts, replications.ts,
// replication.ts, journal.ts and change-batches.ts.
import path from 'node:path';
import { runDaemon } from '../../shared/daemon';
import { unaryHandler } from '../../shared/grpc';
import { HashPool } from '../../shared/hash-pool';
import { batchBytesMax, checkConfiguredLimit, extentBytesMax, journalSegmentBytesMax, memoryQueueBytesMax, units } from '../../shared/limits';
import { v1 } from '../../shared/proto';
import type { ProcessServerHandlers } from '../../generated/drplane/v1/ProcessServer';
import { CacheSpace, prepareCacheDir } from './cache';
import { ProcessServerMetrics } from './metrics';
import { Peers } from './peers';
import { Replications } from './replications';
import { Syncs } from './syncs';
import { defaults, flags, schema, usage } from './config';
import { processServerRoles } from './roles';

void runDaemon({
  name: 'process-server',
  registerAs: 'PROCESS_SERVER',
  schema,
  usage,
  flags,
  defaults,
  async create({ config, dataDir, log, metrics }) {
    const configuredBatchBytesMax = checkConfiguredLimit('batchBytesMax', config.batchBytesMax, batchBytesMax, extentBytesMax);
    const memoryBytesMax = checkConfiguredLimit('memoryQueueBytesMax', config.memoryQueueBytesMax, memoryQueueBytesMax, 0);
    const cacheDir = prepareCacheDir(config.cacheDir ?? path.join(dataDir, 'cache'), config.cacheBytesMax);
    const cache = new CacheSpace(cacheDir.dir, cacheDir.bytesMax);
    // Segments small beside the cache, so applied ones can be deleted while the cache fills.
    const segmentBytes = Math.max(units.MiB * 4, Math.min(journalSegmentBytesMax, Math.floor(cacheDir.bytesMax / 8)));
    const pool = new HashPool(config.hashThreads);
    const peers = new Peers();
    const figures = new ProcessServerMetrics(metrics.registry);
    const context = { pool, peers, compression: config.compression, batchBytesMax: configuredBatchBytesMax, log, metrics: figures };
    const syncs = new Syncs(config.name, context);
    const replications = new Replications({ ...context, cache, journal: { segmentBytes, memoryBytesMax }, recordsDir: path.join(dataDir, 'replications') });
    figures.watch({ replications, syncs, cache });
    await replications.load();
    const implementation: ProcessServerHandlers = {
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
    return {
      services: [{ definition: v1.ProcessServer.service, implementation, name: 'drplane.v1.ProcessServer', roles: processServerRoles }],
      started() {
        log.info({ hashThreads: pool.threads, compression: config.compression, batchBytesMax: configuredBatchBytesMax, cacheDir: cache.dir, cacheBytesMax: cache.bytesMax, memoryQueueBytesMax: memoryBytesMax, segmentBytes }, 'ready to sync and replicate');
      },
      async stop() {
        await replications.stopAll();
        await syncs.stopAll();
        peers.close();
        await pool.close();
      },
    };
  },
});
