// master-target: owns replica disks and the retention store. Wiring only.
import path from 'node:path';
import { runDaemon } from '../../shared/daemon';
import { HashPool } from '../../shared/hash-pool';
import { v1 } from '../../shared/proto';
import { Datastores } from './datastore';
import { ownRetentionMapSize } from './retention-map';
import { RetentionStore, storeFileName } from './retention-store';
import { holdAgainstPrunes } from './prune-lock';
import { installDirectory, prepareRetentionVolume } from './retention-volume';
import { Retention } from './retention';
import { Replicas } from './replicas';
import { BatchApplier } from './apply';
import { RecoveryPoints } from './recovery-points';
import { Retirement } from './retirement';
import { MachineDisks } from './machine-disks';
import { StartHook } from './start-hook';
import { masterTargetService } from './service';
import { MasterTargetMetrics } from './metrics';
import { defaults, flags, schema, usage } from './config';
import { masterTargetRoles } from './roles';

void runDaemon({
  name: 'master-target',
  registerAs: 'MASTER_TARGET',
  schema,
  usage,
  flags,
  defaults,
  async create({ config, dataDir, log, metrics }) {
    // Every configured limit was checked by the schema (config.ts).
    const { disksMax, pruneIntervalMs, pruneKeysPerTransaction, hookTimeoutMs } = config;
    const freeBytesMin = config.retentionFreeBytesMin;
    // Before anything is created: a volume that does not qualify stops the daemon here.
    const volume = prepareRetentionVolume({ retentionDir: config.retentionDir, dataDir, installDir: installDirectory(), processServerCacheDir: config.processServerCacheDir, freeBytesMin });
    if (!volume.explicit) log.warn({ retentionDir: volume.dir }, 'retentionDir is not set: the retention store shares the data volume (set retentionDir to a volume of its own)');
    const roots = config.datastoreRoots.map((root) => path.resolve(root));
    const pool = new HashPool(config.hashThreads);
    const map = ownRetentionMapSize(pool.threads);
    if (map.limitBytes !== undefined) {
      log.warn({ limitBytes: map.limitBytes, roomBytes: map.roomBytes, mapBytes: map.bytes, neededBytes: map.neededBytes }, 'the address space is limited (RLIMIT_AS): the retention store maps less than it would, and maps again as it outgrows that (each old mapping stays resident); remove LimitAS= or ulimit -v where you can');
      if (map.limitBytes < map.neededBytes!) {
        log.error({ limitBytes: map.limitBytes, neededBytes: map.neededBytes }, 'the address-space limit is below what the master target needs (its hashing threads reserve about 10 GiB each, and its heap must grow): hashing requests will fail, and V8 aborts the daemon when it cannot grow its heap');
      }
    }
    // Before the store opens: a drctl prune-retention at work on it stops the daemon here (prune-lock.ts).
    const pruneGuard = holdAgainstPrunes(path.join(volume.dir, storeFileName), log);
    const store = new RetentionStore(volume.dir, map.bytes);
    const migrated = await store.migrate();
    if (migrated) log.info({ replicas: migrated }, 'counted the before-image bytes of replicas from an older store');
    // The master target's own data may lie under a datastore root; no disk operation ever touches it.
    const datastores = new Datastores(roots, [volume.dir, dataDir]);
    const replicas = new Replicas(store, datastores, pool, log, disksMax, config.name);
    const figures = new MasterTargetMetrics(metrics.registry);
    const applier = new BatchApplier(replicas, log, figures);
    const rolledBack = await applier.rollbackUnfinished();
    if (rolledBack) log.warn({ rolledBack }, 'start-up recovery rolled back half-applied batches');
    const retention = new Retention(replicas, log, { pruneIntervalMs, pruneKeysPerTransaction });
    const retirement = new Retirement(replicas, retention, log, pruneKeysPerTransaction);
    const retirementsFinished = await retirement.finishInterrupted();
    if (retirementsFinished) log.warn({ retirementsFinished }, 'start-up recovery finished interrupted retirements');
    await replicas.removeSeedLeftovers();
    // Before the server's graceful shutdown, which would otherwise wait for the batch streams to end. Installed
    // only now: during start-up recovery SIGTERM keeps its default (exit at once; recovery runs again next time).
    for (const signal of ['SIGTERM', 'SIGINT'] as const) process.once(signal, () => void applier.stopStreams());
    const points = new RecoveryPoints(replicas, retention);
    const machineDisks = new MachineDisks(replicas, points, log);
    const startHook = new StartHook(config.startHook, hookTimeoutMs, datastores, log);
    if (startHook.configured) log.info({ hookTimeoutMs }, 'start hook configured');
    figures.watch({ replicas, points, retention, volume });
    const implementation = masterTargetService({ name: config.name, replicas, applier, points, retention, retirement, machineDisks, startHook, volume, log, metrics: figures });
    return {
      services: [{ definition: v1.MasterTarget.service, implementation: implementation as never, name: 'drplane.v1.MasterTarget', roles: masterTargetRoles }],
      started() {
        retention.start();
      },
      async stop() {
        // No batch may still be applying when the replicas' files close.
        await applier.stopStreams();
        startHook.stop();
        await retention.stop();
        await replicas.close();
        await pool.close();
        await store.close();
        pruneGuard.close();
      },
    };
  },
});
