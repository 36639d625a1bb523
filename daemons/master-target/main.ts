// master-target: owns replica disks and the retention store. Wiring only.
import path from 'node:path';
import { z } from 'zod';
import { runDaemon } from '../../shared/daemon';
import { commonConfig, configurationServerLink } from '../../shared/config';
import {
  checkConfiguredLimit,
  disksPerMasterTargetMax,
  pruneIntervalDefaultMs,
  pruneIntervalMaxMs,
  pruneIntervalMinMs,
  pruneKeysPerTransactionMax,
  retentionFreeBytesMin,
  retentionFreeBytesMinConfiguredMax,
  startHookTimeoutDefaultMs,
  startHookTimeoutMaxMs,
  startHookTimeoutMinMs,
} from '../../shared/limits';
import { HashPool } from '../../shared/hash-pool';
import { v1 } from '../../shared/proto';
import { Datastores } from './datastore';
import { RetentionStore } from './retention-store';
import { installDirectory, prepareRetentionVolume } from './retention-volume';
import { Retention } from './retention';
import { Replicas } from './replicas';
import { BatchApplier } from './apply';
import { RecoveryPoints } from './recovery-points';
import { Retirement } from './retirement';
import { MachineDisks } from './machine-disks';
import { StartHook } from './start-hook';
import { masterTargetService } from './service';

const schema = commonConfig.extend({
  /** Directories where replica disks and materialised points may be written. */
  datastoreRoots: z.array(z.string().min(1)).min(1, 'at least one datastore root is needed'),
  /** Directory of the retention store (LMDB), on a volume of its own; default <dataDir>/retention (on the data volume). */
  retentionDir: z.string().min(1).optional(),
  /** Free space the retention volume must have at start-up. */
  retentionFreeBytesMin: z.number().int().default(retentionFreeBytesMin),
  /** A process server's cache directory on this host: the retention volume must not share its file system. */
  processServerCacheDir: z.string().min(1).optional(),
  pruneIntervalMs: z.number().int().default(pruneIntervalDefaultMs),
  pruneKeysPerTransaction: z.number().int().default(pruneKeysPerTransactionMax),
  disksMax: z.number().int().default(disksPerMasterTargetMax),
  hashThreads: z.number().int().min(1).max(16).optional(),
  configurationServer: configurationServerLink.optional(),
  /** StartMachine runs this shell command (/bin/sh -c) for a failed-over machine; only ever from this configuration. */
  startHook: z.string().min(1).optional(),
  hookTimeoutMs: z.coerce.number().int().default(startHookTimeoutDefaultMs),
});

const usage = `Usage: master-target [--config FILE] [--name NAME] [--listen HOST:PORT] [--data-dir DIR]
                     [--datastore-root DIR ...] [--retention-dir DIR] [--process-server-cache-dir DIR]
                     [--start-hook COMMAND] [--hook-timeout-ms MS]
                     [--configuration-server HOST:PORT --passphrase-file FILE]
Owns replica disks under its datastore roots, applies batches atomically, keeps
recovery points for each replica's retention window and prunes older ones.

  --start-hook COMMAND   StartMachine runs it with /bin/sh -c to start a failed-over
                         machine, with DRPLANE_MACHINE, DRPLANE_DISKS (space-separated
                         paths), DRPLANE_EPOCH and DRPLANE_POINTS in its environment;
                         without it StartMachine answers hook_ran=false (the operator
                         starts the machine). Config key: startHook
  --hook-timeout-ms MS   the start hook is killed after this long, ${startHookTimeoutMinMs} to ${startHookTimeoutMaxMs}
                         (default ${startHookTimeoutDefaultMs}); a caller's deadline must be longer.
                         Config key: hookTimeoutMs
`;

void runDaemon({
  name: 'master-target',
  registerAs: 'MASTER_TARGET',
  schema,
  usage,
  flags: {
    'datastore-root': { type: 'string', multiple: true, key: 'datastoreRoots' },
    'retention-dir': { type: 'string' },
    'process-server-cache-dir': { type: 'string' },
    'start-hook': { type: 'string' },
    'hook-timeout-ms': { type: 'string' },
  },
  defaults: { name: 'mt1', listen: '127.0.0.1:7102', dataDir: './data/master-target' },
  async create({ config, dataDir, log }) {
    const disksMax = checkConfiguredLimit('disksMax', config.disksMax, disksPerMasterTargetMax);
    const pruneIntervalMs = checkConfiguredLimit('pruneIntervalMs', config.pruneIntervalMs, pruneIntervalMaxMs, pruneIntervalMinMs);
    const pruneKeysPerTransaction = checkConfiguredLimit('pruneKeysPerTransaction', config.pruneKeysPerTransaction, pruneKeysPerTransactionMax);
    const freeBytesMin = checkConfiguredLimit('retentionFreeBytesMin', config.retentionFreeBytesMin, retentionFreeBytesMinConfiguredMax, 0);
    const hookTimeoutMs = checkConfiguredLimit('hookTimeoutMs', config.hookTimeoutMs, startHookTimeoutMaxMs, startHookTimeoutMinMs);
    // Before anything is created: a volume that does not qualify stops the daemon here.
    const volume = prepareRetentionVolume({ retentionDir: config.retentionDir, dataDir, installDir: installDirectory(), processServerCacheDir: config.processServerCacheDir, freeBytesMin });
    if (!volume.explicit) log.warn({ retentionDir: volume.dir }, 'retentionDir is not set: the retention store shares the data volume (set retentionDir to a volume of its own)');
    const roots = config.datastoreRoots.map((root) => path.resolve(root));
    const store = new RetentionStore(volume.dir);
    const migrated = await store.migrate();
    if (migrated) log.info({ replicas: migrated }, 'counted the before-image bytes of replicas from an older store');
    const pool = new HashPool(config.hashThreads);
    // The master target's own data may lie under a datastore root; no disk operation ever touches it.
    const datastores = new Datastores(roots, [volume.dir, dataDir]);
    const replicas = new Replicas(store, datastores, pool, log, disksMax, config.name);
    const applier = new BatchApplier(replicas, log);
    const rolledBack = await applier.rollbackUnfinished();
    if (rolledBack) log.warn({ rolledBack }, 'start-up recovery rolled back half-applied batches');
    const retention = new Retention(replicas, log, { pruneIntervalMs, pruneKeysPerTransaction });
    const retirement = new Retirement(replicas, retention, log, pruneKeysPerTransaction);
    const retirementsFinished = await retirement.finishInterrupted();
    if (retirementsFinished) log.warn({ retirementsFinished }, 'start-up recovery finished interrupted retirements');
    await replicas.removeSeedLeftovers();
    const points = new RecoveryPoints(replicas, retention);
    const machineDisks = new MachineDisks(replicas, points, log);
    const startHook = new StartHook(config.startHook, hookTimeoutMs, datastores, log);
    if (startHook.configured) log.info({ hookTimeoutMs }, 'start hook configured');
    const implementation = masterTargetService({ name: config.name, replicas, applier, points, retention, retirement, machineDisks, startHook, volume, log });
    return {
      services: [{ definition: v1.MasterTarget.service, implementation: implementation as never, name: 'drplane.v1.MasterTarget' }],
      started() {
        retention.start();
      },
      async stop() {
        startHook.stop();
        await retention.stop();
        await replicas.close();
        await pool.close();
        await store.close();
      },
    };
  },
});
