// A machine's disks at this site that are not replicas: what a failover
// materialises (MaterialiseRecoveryPoint with replace_existing), and what a
// test failover's cleanup deletes again (DeleteDisk).
import fs from 'node:fs';
import path from 'node:path';
import { failedPrecondition, invalidArgument, notFound } from '../../shared/errors';
import { failpoint } from '../../shared/failpoints';
import type { Logger } from '../../shared/log';
import { checkPathText } from './datastore';
import { syncDirectory } from '../../shared/file-io';
import type { Replicas } from './replicas';
import type { RecoveryPoints } from './recovery-points';

export class MachineDisks {
  constructor(
    private readonly replicas: Replicas,
    private readonly points: RecoveryPoints,
    private readonly log: Logger,
  ) {}

  /**
   * DeleteDisk: removes a regular file under a datastore root that is no
   * replica's file (a retired replica's, once its retirement finished, is no
   * longer one) and is not being materialised; the directory is fsynced.
   */
  async delete(requestedPath: string): Promise<void> {
    checkPathText(requestedPath, 'path');
    const target = this.replicas.datastores.resolveEntry(requestedPath);
    const stat = target && (await fs.promises.lstat(target).catch(() => undefined));
    if (!target || !stat) throw notFound(`${requestedPath} does not exist on ${this.replicas.name}`);
    if (!stat.isFile()) throw invalidArgument(`${target} is not a regular file: DeleteDisk removes only a disk image file`);
    const owner = this.replicas.replicaAt(target);
    if (owner) throw failedPrecondition(`${target} is the replica file of disk ${owner.diskId}: a replica is removed only by retiring it (RetireReplica)`);
    if (this.points.isMaterialising(target)) throw failedPrecondition(`${target} is being materialised now: delete it once the materialisation has finished`);
    await fs.promises.rm(target);
    await syncDirectory(path.dirname(target));
    await failpoint('delete-disk.removed');
    this.log.info({ path: target, bytes: stat.size }, 'disk deleted');
  }
}
