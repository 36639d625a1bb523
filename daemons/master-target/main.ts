// master-target: owns replica disks and the retention store. Wiring only.
import path from 'node:path';
import { z } from 'zod';
import { runDaemon } from '../../shared/daemon';
import { commonConfig, configurationServerLink } from '../../shared/config';
import { disksPerMasterTargetMax, checkConfiguredLimit } from '../../shared/limits';
import { HashPool } from '../../shared/hash-pool';
import { v1 } from '../../shared/proto';
import { Datastores } from './datastore';
import { RetentionStore } from './retention-store';
import { Replicas } from './replicas';
import { BatchApplier } from './apply';
import { RecoveryPoints } from './recovery-points';
import { masterTargetService } from './service';

const schema = commonConfig.extend({
  /** Directories where replica disks and materialised points may be written. */
  datastoreRoots: z.array(z.string().min(1)).min(1, 'at least one datastore root is needed'),
  /** Directory of the retention store (LMDB); default <dataDir>/retention. */
  retentionDir: z.string().optional(),
  disksMax: z.number().int().default(disksPerMasterTargetMax),
  hashThreads: z.number().int().min(1).max(16).optional(),
  configurationServer: configurationServerLink.optional(),
});

const usage = `Usage: master-target [--config FILE] [--name NAME] [--listen HOST:PORT] [--data-dir DIR]
                     [--datastore-root DIR ...] [--configuration-server HOST:PORT --passphrase-file FILE]
Owns replica disks under its datastore roots, applies batches atomically and keeps recovery points.
`;

void runDaemon({
  name: 'master-target',
  registerAs: 'MASTER_TARGET',
  schema,
  usage,
  flags: { 'datastore-root': { type: 'string', multiple: true, key: 'datastoreRoots' }, 'retention-dir': { type: 'string' } },
  defaults: { name: 'mt1', listen: '127.0.0.1:7102', dataDir: './data/master-target' },
  async create({ config, dataDir, log }) {
    const roots = config.datastoreRoots.map((root) => path.resolve(root));
    const disksMax = checkConfiguredLimit('disksMax', config.disksMax, disksPerMasterTargetMax);
    const store = new RetentionStore(path.resolve(config.retentionDir ?? path.join(dataDir, 'retention')));
    const pool = new HashPool(config.hashThreads);
    const replicas = new Replicas(store, new Datastores(roots), pool, log, disksMax);
    const applier = new BatchApplier(replicas, log);
    const rolledBack = await applier.rollbackUnfinished();
    if (rolledBack) log.warn({ rolledBack }, 'start-up recovery rolled back half-applied batches');
    const points = new RecoveryPoints(replicas);
    return {
      services: [{ definition: v1.MasterTarget.service, implementation: masterTargetService({ name: config.name, replicas, applier, points, log }) as never, name: 'drplane.v1.MasterTarget' }],
      async stop() {
        await replicas.close();
        await pool.close();
        await store.close();
      },
    };
  },
});
