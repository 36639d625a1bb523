// Goal: a full sync makes the replica equal to the source and as thin as it;
// a delta sync after scattered changes (and a block written back to zero)
// sends about the changed bytes plus the hashes; a full resync over a replica
// that holds data clears what became zero. Agent, process server and master
// target run as real processes; each completed sync makes one recovery point.
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import t from 'tap';
import { createClient, unary } from '../../shared/grpc';
import { v1 } from '../../shared/proto';
import { batchesInFlightMax } from '../../shared/limits';
import type { StartSyncRequest } from '../../generated/drplane/v1/StartSyncRequest';
import { startDaemon, tempDir } from '../helpers/daemons';
import { waitForSync } from '../helpers/clients';
import { allocatedBytes, changeBlocks, createImage, sha256File } from '../helpers/disks';

const MiB = 1024 * 1024;
const diskBytes = 64 * MiB;
const blockBytes = 4096;
const seed = Number(process.env.DRPLANE_SEED ?? 20_240_601);

t.test('full sync, delta sync and full resync through the real daemons', async (t) => {
  t.comment(`seed ${seed}`);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const source = path.join(dir, 'source.img');
  const datastore = path.join(dir, 'datastore');
  const replica = path.join(datastore, 'vm1-disk0.img');
  createImage(source, diskBytes, seed);

  const [masterTarget, agent, processServer] = await Promise.all([
    startDaemon('master-target', { args: ['--name', 'mt1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt'), '--datastore-root', datastore] }),
    startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'agent'), '--disk', source] }),
    // Small batches: many of them, so the window of unacknowledged batches fills up.
    startDaemon('process-server', { args: ['--name', 'ps1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'ps'), '--batch-bytes-max', String(4 * MiB)] }),
  ]);
  const mt = createClient(v1.MasterTarget, masterTarget.address);
  const ps = createClient(v1.ProcessServer, processServer.address);
  t.teardown(async () => {
    mt.close();
    ps.close();
    await Promise.all([masterTarget.stop(), agent.stop(), processServer.stop()]);
  });

  await unary(mt, mt.createReplica, { diskId: 'vm1-disk0', path: replica, diskBytes, epoch: 1 });
  const sync = (syncId: string, mode: 'SYNC_MODE_FULL' | 'SYNC_MODE_DELTA', extra: Partial<StartSyncRequest> = {}) =>
    unary(ps, ps.startSync, { diskId: 'vm1-disk0', syncId, mode, epoch: 1, agentAddress: agent.address, sourcePath: source, masterTargetAddress: masterTarget.address, tag: syncId, ...extra });

  t.test('full sync: equal and thin', async (t) => {
    const started = await sync('full-1', 'SYNC_MODE_FULL');
    t.equal(started.syncId, 'full-1');
    const status = await waitForSync(ps, 'vm1-disk0');
    t.equal(status.state, 'SYNC_STATE_COMPLETED', status.error);
    t.equal(sha256File(replica), sha256File(source), 'the replica equals the source');
    t.equal(status.bytesChanged, diskBytes / 2, 'only the data regions were sent');
    t.equal(status.zeroBytesSkipped, diskBytes / 2, 'the zero regions were skipped');
    t.equal(status.bytesScanned, diskBytes);
    t.ok(allocatedBytes(replica) <= diskBytes / 2 + 4 * MiB, `the replica stays thin (${allocatedBytes(replica)} bytes allocated of ${diskBytes})`);
    t.equal(status.recoveryPointId, `vm1-disk0@${status.lastAckedSequence}`);
    t.ok(status.batchesAcked > batchesInFlightMax, `${status.batchesAcked} batches, more than the ${batchesInFlightMax} in flight`);
    const again = await sync('full-1', 'SYNC_MODE_FULL');
    t.equal(again.state, 'SYNC_STATE_COMPLETED', 'StartSync with the same id returns the completed sync');
    await t.rejects(unary(ps, ps.getSync, { diskId: 'vm1-disk9' }), { code: grpc.status.NOT_FOUND });
  });

  t.test('delta sync: sends about the changed bytes', async (t) => {
    let changedBytes = changeBlocks(source, 0.01, seed + 1);
    // A data block written back to zero must reach the replica too.
    const fd = fs.openSync(source, 'r+');
    fs.writeSync(fd, Buffer.alloc(blockBytes), 0, blockBytes, 3 * blockBytes);
    fs.closeSync(fd);
    changedBytes += blockBytes;
    await sync('delta-1', 'SYNC_MODE_DELTA');
    const status = await waitForSync(ps, 'vm1-disk0');
    t.equal(status.state, 'SYNC_STATE_COMPLETED', status.error);
    t.equal(sha256File(replica), sha256File(source), 'the replica equals the source again');
    t.ok(status.bytesChanged <= changedBytes, `${status.bytesChanged} plain bytes sent for ${changedBytes} changed`);
    t.ok(status.hashBytesExchanged > 0);
    t.ok(
      status.bytesSent <= 1.3 * changedBytes + status.hashBytesExchanged,
      `${status.bytesSent} bytes sent, ${status.hashBytesExchanged} hash bytes, for ${changedBytes} changed`,
    );
    const { recoveryPoints } = await unary(mt, mt.listRecoveryPoints, { diskId: 'vm1-disk0' });
    t.same(recoveryPoints.map((point) => [point.syncId, point.tag, point.kind]), [
      ['full-1', 'full-1', 'CRASH_CONSISTENT'],
      ['delta-1', 'delta-1', 'CRASH_CONSISTENT'],
    ]);
    t.equal(recoveryPoints[1].id, status.recoveryPointId);
  });

  t.test('a full resync over a replica that holds data clears blocks that became zero', async (t) => {
    const fd = fs.openSync(source, 'r+');
    fs.writeSync(fd, Buffer.alloc(8 * blockBytes), 0, 8 * blockBytes, MiB);
    fs.closeSync(fd);
    await sync('full-2', 'SYNC_MODE_FULL');
    const status = await waitForSync(ps, 'vm1-disk0');
    t.equal(status.state, 'SYNC_STATE_COMPLETED', status.error);
    t.equal(sha256File(replica), sha256File(source), 'the replica equals the source');
    const { recoveryPoints } = await unary(mt, mt.listRecoveryPoints, { diskId: 'vm1-disk0' });
    t.equal(recoveryPoints.length, 3);
  });

  t.test('refusals', async (t) => {
    await t.rejects(sync('', 'SYNC_MODE_FULL'), { code: grpc.status.INVALID_ARGUMENT, details: /sync_id/ });
    await t.rejects(sync('x', 'SYNC_MODE_UNSPECIFIED' as never), { code: grpc.status.INVALID_ARGUMENT, details: /mode/ });
    await t.rejects(sync('x', 'SYNC_MODE_FULL', { masterTargetAddress: 'nowhere' }), { code: grpc.status.INVALID_ARGUMENT, details: /master_target_address/ });
    // An old epoch is final: the disk belongs to another site.
    await sync('stale', 'SYNC_MODE_DELTA', { epoch: 7 });
    const stale = await waitForSync(ps, 'vm1-disk0');
    t.equal(stale.state, 'SYNC_STATE_FAILED');
    t.match(stale.error, /epoch/);
    t.equal(stale.reconnects, 0, 'not retried');
    // A source the agent may not read is final too.
    await sync('denied', 'SYNC_MODE_FULL', { sourcePath: '/etc/hostname' });
    const denied = await waitForSync(ps, 'vm1-disk0');
    t.equal(denied.state, 'SYNC_STATE_FAILED');
    t.match(denied.error, /\/etc\/hostname/);
  });
});
