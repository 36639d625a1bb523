// The process server's configuration: the schema (validated at start-up; an error names the key),
// the flags that set its keys, the defaults and the usage text. Every key is
// documented in docs/configuration.md (test/unit/configuration-reference.test.ts keeps the two together).
import os from 'node:os';
import { z } from 'zod';
import { commonConfig, limitedInteger, configurationServerLink, usageText, type FlagSpec } from '../../shared/config';
import { batchBytesDefault, batchBytesMax, cacheBytesDefault, cacheBytesMax, cacheBytesMin, extentBytesMax, hashThreadsMax, memoryQueueBytesDefault, memoryQueueBytesMax } from '../../shared/limits';

/** A flag gives "true"/"false"; a config file gives a boolean. */
const booleanSetting = z.preprocess((value) => (value === 'true' ? true : value === 'false' ? false : value), z.boolean({ error: (issue) => `must be true or false, got ${JSON.stringify(issue.input) ?? 'nothing'}` }));

export const schema = commonConfig.extend({
  /** Worker threads that hash and compress extents, shared by every sync (default min(cores, 4)). */
  hashThreads: limitedInteger('hashThreads', 1, hashThreadsMax, 'threads').default(Math.max(1, Math.min(os.availableParallelism(), 4))),
  /** LZ4 where a sample says it pays. */
  compression: booleanSetting.default(true),
  /** Plain bytes per batch: lower means finer resume points and less to buffer on the master target. */
  batchBytesMax: limitedInteger('batchBytesMax', extentBytesMax, batchBytesMax, 'bytes').default(batchBytesDefault),
  /** Where the journals of replicated disks live (default: <dataDir>/cache). */
  cacheDir: z.string().min(1).optional(),
  /** The journals of every disk together (default 8 GiB, at most the cache file system's free space: checked when the cache is opened). */
  cacheBytesMax: limitedInteger('cacheBytesMax', cacheBytesMin, cacheBytesMax, 'bytes').optional(),
  /** Recent journal records also kept in memory, per disk. */
  memoryQueueBytesMax: limitedInteger('memoryQueueBytesMax', 0, memoryQueueBytesMax, 'bytes').default(memoryQueueBytesDefault),
  configurationServer: configurationServerLink.optional(),
});

export const flags: FlagSpec = {
  'hash-threads': { type: 'string', value: 'N', help: `worker threads for hashing and compression, 1 to ${hashThreadsMax} (default min(cores, 4))` },
  compression: { type: 'string', value: 'true|false', help: 'LZ4 where it pays (default true)' },
  'batch-bytes-max': { type: 'string', value: 'BYTES', help: `plain bytes per batch, ${extentBytesMax} to ${batchBytesMax} (default ${batchBytesDefault})` },
  'cache-dir': { type: 'string', value: 'DIR', help: 'journals of replicated disks (default DATA_DIR/cache)' },
  'cache-bytes-max': { type: 'string', value: 'BYTES', help: `all journals together, ${cacheBytesMin} to ${cacheBytesMax} (default ${cacheBytesDefault}, or less when the file system has less free)` },
  'memory-queue-bytes-max': { type: 'string', value: 'BYTES', help: `recent records kept in memory per disk, 0 to ${memoryQueueBytesMax} (default ${memoryQueueBytesDefault})` },
};

export const usage = usageText({
  synopsis: 'process-server [options]',
  description: `Drives full and delta syncs from agents to master targets, and continuous
replication sessions (change records journaled in the cache directory, sent
as batches that close recovery points).`,
  flags,
  identity: { name: 'default ps1', 'data-dir': 'default ./data/process-server', listen: 'default 127.0.0.1:7101' },
  registers: true,
});

export const defaults: Record<string, unknown> = { name: 'ps1', listen: '127.0.0.1:7101', dataDir: './data/process-server' };
