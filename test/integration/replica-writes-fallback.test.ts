// Goal: where direct (O_DIRECT) replica writes are refused, the replica still
// gets every byte through the page cache: a file system that refuses to open
// the replica with O_DIRECT, and a direct write refused in the middle of a
// sync (a device with stricter alignment), each injected with a failpoint
// (tmpfs takes O_DIRECT since Linux 6.6, so no file system at hand refuses it).
// A full sync and a delta sync make the replica equal to the source, and the
// point after the delta materialises exactly. Prints its seed.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { createClient, unary } from '../../shared/grpc';
import { v1 } from '../../shared/proto';
import { startDaemon, tempDir } from '../helpers/daemons';
import { waitForSync } from '../helpers/clients';
import { changeBlocks, createImage, sha256File } from '../helpers/disks';

const MiB = 1024 * 1024;
const diskBytes = 16 * MiB;
const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);

const cases = [
  { name: 'the file system refuses O_DIRECT', failpoints: 'direct-writes.open=error:EINVAL', logged: 'refuses O_DIRECT' },
  { name: 'a direct write is refused in the middle of the sync', failpoints: 'direct-writes.write=error:EINVAL@3', logged: 'a direct write was refused' },
];

for (const { name, failpoints, logged } of cases) {
  t.test(`${name}: the page cache takes the writes, every byte arrives`, async (t) => {
    t.comment(`seed ${seed}`);
    const dir = tempDir();
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const source = path.join(dir, 'source.img');
    const datastore = path.join(dir, 'ds');
    const replica = path.join(datastore, 'vm1-disk0.img');
    createImage(source, diskBytes, seed, MiB);
    const [masterTarget, agent, processServer] = await Promise.all([
      startDaemon('master-target', { env: { DRPLANE_FAILPOINTS: failpoints }, args: ['--name', 'mt1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt'), '--datastore-root', datastore] }),
      startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'agent'), '--disk', source] }),
      startDaemon('process-server', { args: ['--name', 'ps1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'ps'), '--batch-bytes-max', String(2 * MiB)] }),
    ]);
    const mt = createClient(v1.MasterTarget, masterTarget.address);
    const ps = createClient(v1.ProcessServer, processServer.address);
    t.teardown(async () => {
      mt.close();
      ps.close();
      await Promise.all([masterTarget.stop(), agent.stop(), processServer.stop()]);
    });
    await unary(mt, mt.createReplica, { diskId: 'vm1-disk0', path: replica, diskBytes, epoch: 1 });
    const sync = async (syncId: string, mode: 'SYNC_MODE_FULL' | 'SYNC_MODE_DELTA') => {
      await unary(ps, ps.startSync, { diskId: 'vm1-disk0', syncId, mode, epoch: 1, agentAddress: agent.address, sourcePath: source, masterTargetAddress: masterTarget.address, tag: syncId });
      return waitForSync(ps, 'vm1-disk0');
    };

    const full = await sync('full-1', 'SYNC_MODE_FULL');
    t.equal(full.state, 'SYNC_STATE_COMPLETED', full.error);
    t.equal(full.reconnects, 0, 'the sync did not have to start over');
    t.equal(sha256File(replica), sha256File(source), 'after the full sync the replica equals the source');
    t.ok(masterTarget.logs.some((line) => String(line.msg).includes(logged)), `the master target said so ("${logged}")`);

    changeBlocks(source, 0.05, seed + 1);
    const delta = await sync('delta-1', 'SYNC_MODE_DELTA');
    t.equal(delta.state, 'SYNC_STATE_COMPLETED', delta.error);
    t.equal(sha256File(replica), sha256File(source), 'after the delta the replica equals the source');
    const restored = await unary(mt, mt.materialiseRecoveryPoint, { recoveryPointId: delta.recoveryPointId, path: path.join(datastore, 'restore', 'delta.img') });
    t.equal(sha256File(restored.path), sha256File(source), 'the point after the delta materialises exactly');
  });
}
