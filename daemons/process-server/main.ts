// The process server: drives full and delta syncs from agents to master
// targets, and continuous replication sessions (agent change records journaled
// in the cache directory, sent as batches that close recovery points).
// Wiring only; the domain is in syncs.ts, sync.ts, replications.ts,
// replication.ts, journal.ts and change-batches.ts.
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { runDaemon } from '../../shared/daemon';
import { commonConfig, configurationServerLink } from '../../shared/config';
import { unaryHandler } from '../../shared/grpc';
import { HashPool } from '../../shared/hash-pool';
import { batchBytesMax, checkConfiguredLimit, extentBytesMax, journalSegmentBytesMax, memoryQueueBytesDefault, memoryQueueBytesMax, units } from '../../shared/limits';
import { v1 } from '../../shared/proto';
import type { ProcessServerHandlers } from '../../generated/drplane/v1/ProcessServer';
import { CacheSpace, prepareCacheDir } from './cache';
import { Peers } from './peers';
import { Replications } from './replications';
import { Syncs } from './syncs';

/** A flag gives "true"/"false"; a config file gives a boolean. */
const booleanSetting = z.preprocess((value) => (value === 'true' ? true : value === 'false' ? false : value), z.boolean({ error: 'must be true or false' }));

const schema = commonConfig.extend({
  /** Worker threads that hash and compress extents, shared by every sync. */
  hashThreads: z.coerce.number().int().min(1).max(64).default(Math.max(1, Math.min(os.availableParallelism(), 4))),
  /** LZ4 where a sample says it pays. */
  compression: booleanSetting.default(true),
  /** Plain bytes per batch: lower means finer resume points and less to buffer on the master target. */
  batchBytesMax: z.coerce.number().default(batchBytesMax),
  /** Where the journals of replicated disks live (default: <dataDir>/cache). */
  cacheDir: z.string().min(1).optional(),
  /** The journals of every disk together (default 8 GiB, at most the cache file system's free space). */
  cacheBytesMax: z.coerce.number().optional(),
  /** Recent journal records also kept in memory, per disk. */
  memoryQueueBytesMax: z.coerce.number().default(memoryQueueBytesDefault),
  configurationServer: configurationServerLink.optional(),
});

const usage = `Usage: process-server [options]
  --name NAME                 default ps1
  --data-dir DIR              default ./data/process-server
  --listen HOST:PORT          default 127.0.0.1:7101
  --advertise HOST:PORT       address peers use (default: listen)
  --hash-threads N            worker threads for hashing and compression (default min(cores, 4))
  --compression true|false    LZ4 where it pays (default true)
  --batch-bytes-max BYTES     plain bytes per batch, ${extentBytesMax} to ${batchBytesMax} (default ${batchBytesMax})
  --cache-dir DIR             journals of replicated disks (default DATA_DIR/cache)
  --cache-bytes-max BYTES     all journals together (default 8 GiB, or less when the file system has less free)
  --memory-queue-bytes-max BYTES  recent records kept in memory per disk, 0 to ${memoryQueueBytesMax} (default ${memoryQueueBytesDefault})
  --configuration-server HOST:PORT  register with it (needs --passphrase or --passphrase-file)
  --config FILE               JSON with the same keys (hashThreads, compression, cacheDir, ...)
`;

void runDaemon({
  name: 'process-server',
  registerAs: 'PROCESS_SERVER',
  schema,
  usage,
  flags: {
    'hash-threads': { type: 'string' },
    compression: { type: 'string' },
    'batch-bytes-max': { type: 'string' },
    'cache-dir': { type: 'string' },
    'cache-bytes-max': { type: 'string' },
    'memory-queue-bytes-max': { type: 'string' },
  },
  defaults: { name: 'ps1', listen: '127.0.0.1:7101', dataDir: './data/process-server' },
  async create({ config, dataDir, log }) {
    const configuredBatchBytesMax = checkConfiguredLimit('batchBytesMax', config.batchBytesMax, batchBytesMax, extentBytesMax);
    const memoryBytesMax = checkConfiguredLimit('memoryQueueBytesMax', config.memoryQueueBytesMax, memoryQueueBytesMax, 0);
    const cacheDir = prepareCacheDir(config.cacheDir ?? path.join(dataDir, 'cache'), config.cacheBytesMax);
    const cache = new CacheSpace(cacheDir.dir, cacheDir.bytesMax);
    // Segments small beside the cache, so applied ones can be deleted while the cache fills.
    const segmentBytes = Math.max(units.MiB * 4, Math.min(journalSegmentBytesMax, Math.floor(cacheDir.bytesMax / 8)));
    const pool = new HashPool(config.hashThreads);
    const peers = new Peers();
    const context = { pool, peers, compression: config.compression, batchBytesMax: configuredBatchBytesMax, log };
    const syncs = new Syncs(config.name, context);
    const replications = new Replications({ ...context, cache, journal: { segmentBytes, memoryBytesMax }, recordsDir: path.join(dataDir, 'replications') });
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
      services: [{ definition: v1.ProcessServer.service, implementation, name: 'drplane.v1.ProcessServer' }],
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
