// The process server: drives full and delta syncs from agents to master
// targets. Wiring only; the domain is in syncs.ts, sync.ts and batch-stream.ts.
import os from 'node:os';
import { z } from 'zod';
import { runDaemon } from '../../shared/daemon';
import { commonConfig, configurationServerLink } from '../../shared/config';
import { unaryHandler, unimplemented } from '../../shared/grpc';
import { HashPool } from '../../shared/hash-pool';
import { batchBytesMax, checkConfiguredLimit, extentBytesMax } from '../../shared/limits';
import { v1 } from '../../shared/proto';
import type { ProcessServerHandlers } from '../../generated/drplane/v1/ProcessServer';
import { Peers } from './peers';
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
  --configuration-server HOST:PORT  register with it (needs --passphrase or --passphrase-file)
  --config FILE               JSON with the same keys (hashThreads, compression, ...)
`;

void runDaemon({
  name: 'process-server',
  registerAs: 'PROCESS_SERVER',
  schema,
  usage,
  flags: { 'hash-threads': { type: 'string' }, compression: { type: 'string' }, 'batch-bytes-max': { type: 'string' } },
  defaults: { name: 'ps1', listen: '127.0.0.1:7101', dataDir: './data/process-server' },
  async create({ config, log }) {
    const configuredBatchBytesMax = checkConfiguredLimit('batchBytesMax', config.batchBytesMax, batchBytesMax, extentBytesMax);
    const pool = new HashPool(config.hashThreads);
    const peers = new Peers();
    const syncs = new Syncs(config.name, { pool, peers, compression: config.compression, batchBytesMax: configuredBatchBytesMax, log });
    const implementation: ProcessServerHandlers = {
      ...(unimplemented(['StartReplication', 'GetReplication', 'ListReplications', 'StopReplication', 'FlushReplication', 'ResyncReplication']) as unknown as Pick<ProcessServerHandlers, 'StartReplication' | 'GetReplication' | 'ListReplications' | 'StopReplication' | 'FlushReplication' | 'ResyncReplication'>),
      GetStatus: unaryHandler(async () => syncs.status(pool.threads), log),
      StartSync: unaryHandler(async (request) => syncs.start(request), log),
      GetSync: unaryHandler(async (request) => syncs.get(request.diskId), log),
      ListSyncs: unaryHandler(async () => ({ syncs: syncs.list() }), log),
      StopSync: unaryHandler(async (request) => syncs.stop(request.diskId), log),
    };
    return {
      services: [{ definition: v1.ProcessServer.service, implementation, name: 'drplane.v1.ProcessServer' }],
      started() {
        log.info({ hashThreads: pool.threads, compression: config.compression, batchBytesMax: configuredBatchBytesMax }, 'ready to sync');
      },
      async stop() {
        await syncs.stopAll();
        peers.close();
        await pool.close();
      },
    };
  },
});
