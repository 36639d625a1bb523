// The process server: drives full and delta syncs from agents to master
// targets, and continuous replication sessions (agent change records journaled
// in the cache directory, sent as batches that close recovery points).
// Wiring only; the gRPC handlers are in service.ts, the domain in syncs.ts,
// sync.ts, replications.ts, replication.ts, journal.ts and change-batches.ts.
import path from 'node:path';
import { runDaemon } from '../../shared/daemon';
import { HashPool } from '../../shared/hash-pool';
import { journalSegmentBytesMax, units } from '../../shared/limits';
import { v1 } from '../../shared/proto';
import { CacheSpace, prepareCacheDir } from './cache';
import { ProcessServerMetrics } from './metrics';
import { Peers } from './peers';
import { Replications } from './replications';
import { Syncs } from './syncs';
import { defaults, flags, schema, usage } from './config';
import { processServerRoles } from './roles';
import { processServerService } from './service';

void runDaemon({
  name: 'process-server',
  registerAs: 'PROCESS_SERVER',
  schema,
  usage,
  flags,
  defaults,
  async create({ config, dataDir, log, metrics }) {
    // Every configured limit was checked by the schema (config.ts).
    const configuredBatchBytesMax = config.batchBytesMax;
    const memoryBytesMax = config.memoryQueueBytesMax;
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
    const implementation = processServerService({ replications, syncs, pool, cache, log });
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
