// Goal: a new replica file, a materialised file and the directories made for
// them are durable entries: after each is created the master target fsyncs
// the directory that holds the new entry. A power cut cannot be run here, so
// the test checks what it can honestly see: with the failpoint
// `directory.synced=log` every directory fsync is logged, and each directory
// that gained an entry (the new file's, and the parent of each new directory)
// is synced after the call that made it.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { tempDir } from '../helpers/daemons';
import { makeExtent, sendFrames, startMasterTarget, unary } from '../helpers/clients';

const diskBytes = 1024 * 1024;

t.test('new replica files, materialised files and new directories are followed by an fsync of their directory', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { mt, client, datastore } = await startMasterTarget(t, dir, { DRPLANE_FAILPOINTS: 'directory.synced=log' });
  const synced = () => new Set(mt.logs.filter((line) => line.msg === 'failpoint' && line.failpoint === 'directory.synced').map((line) => String(line.detail)));

  const replica = path.join(datastore, 'vm1', 'disks', 'd0.img');
  await unary(client, client.createReplica, { diskId: 'd0', path: replica, diskBytes, epoch: 1 });
  const afterCreate = synced();
  for (const directory of [datastore, path.join(datastore, 'vm1'), path.join(datastore, 'vm1', 'disks')]) {
    t.ok(afterCreate.has(directory), `CreateReplica: ${path.relative(dir, directory)} (it gained an entry) was fsynced`);
  }

  const applied = await sendFrames(client, [{ diskId: 'd0', epoch: 1, sequence: 1, extents: [await makeExtent(0, Buffer.alloc(8192, 5))], last: true, recoveryPointKind: 'CRASH_CONSISTENT' }]);
  t.error(applied.error);
  const restored = path.join(datastore, 'restore', 'vm1', 'point.img');
  await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@1', path: restored });
  const afterMaterialise = synced();
  for (const directory of [datastore, path.join(datastore, 'restore'), path.join(datastore, 'restore', 'vm1')]) {
    t.ok(afterMaterialise.has(directory), `MaterialiseRecoveryPoint: ${path.relative(dir, directory)} (it gained an entry) was fsynced`);
  }
});
