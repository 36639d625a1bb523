// Goal: a sync survives its peers going away. The master target is killed
// while applying a batch and the agent while streaming; each comes back on the
// same address, and the process server reconnects, resumes from the master
// target's applied sequence and cursor, and completes with the replica equal
// to the source. A stopped sync started again with the same id resumes too.
// Kills come from named failpoints, so they land at the same place every run.
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { masterTargetClient, processServerClient, unary, waitForSync } from '../helpers/clients';
import { createImage, sha256File } from '../helpers/disks';

const MiB = 1024 * 1024;
const seed = Number(process.env.DRPLANE_SEED ?? 777);

/** A port free now, so a daemon can come back on the same address. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

t.test('syncs resume after the master target or the agent is killed', async (t) => {
  t.comment(`seed ${seed}`);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const datastore = path.join(dir, 'datastore');
  // 128 MiB with 64 MiB of data: two full batches of 32 MiB and a final one.
  const sources = ['disk0', 'disk1', 'disk2'].map((name, index) => {
    const source = path.join(dir, `${name}.img`);
    createImage(source, 128 * MiB, seed + index);
    return source;
  });
  const mtAddress = `127.0.0.1:${await freePort()}`;
  const agentAddress = `127.0.0.1:${await freePort()}`;
  const startMasterTarget = (failpoints = '') =>
    startDaemon('master-target', { env: { DRPLANE_FAILPOINTS: failpoints }, args: ['--name', 'mt1', '--listen', mtAddress, '--data-dir', path.join(dir, 'mt'), '--datastore-root', datastore] });
  const startAgent = (failpoints = '') =>
    startDaemon('agent', { env: { DRPLANE_FAILPOINTS: failpoints }, args: ['--name', 'agent1', '--listen', agentAddress, '--data-dir', path.join(dir, 'agent'), ...sources.flatMap((source) => ['--disk', source])] });

  let masterTarget: RunningDaemon = await startMasterTarget('apply.replica-written=crash@2');
  let agent: RunningDaemon = await startAgent();
  const processServer = await startDaemon('process-server', { args: ['--name', 'ps1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'ps')] });
  const ps = processServerClient(processServer.address);
  t.teardown(async () => {
    ps.close();
    await Promise.all([masterTarget.stop(), agent.stop(), processServer.stop()]);
  });
  const mt = masterTargetClient(mtAddress);
  for (const [index, source] of sources.entries()) {
    await unary(mt, mt.createReplica, { diskId: `disk${index}`, path: path.join(datastore, `disk${index}.img`), diskBytes: 128 * MiB, epoch: 1 });
  }
  mt.close();
  const startSync = (index: number, syncId: string) =>
    unary(ps, ps.startSync, { diskId: `disk${index}`, syncId, mode: 'SYNC_MODE_FULL', epoch: 1, agentAddress, sourcePath: sources[index], masterTargetAddress: mtAddress });

  t.test('master target killed while applying the second batch', async (t) => {
    await startSync(0, 'full-0');
    const exit = await masterTarget.exited;
    t.equal(exit.signal, 'SIGKILL', 'the failpoint killed the master target');
    masterTarget = await startMasterTarget();
    const status = await waitForSync(ps, 'disk0');
    t.equal(status.state, 'SYNC_STATE_COMPLETED', status.error);
    t.ok(status.reconnects >= 1, `${status.reconnects} reconnects`);
    t.equal(status.resumedFrom > 0, true, `resumed from ${status.resumedFrom}, after the first batch`);
    t.equal(sha256File(path.join(datastore, 'disk0.img')), sha256File(sources[0]), 'the replica equals the source');
  });

  t.test('agent killed while streaming', async (t) => {
    await agent.stop();
    // The 20th read of 4 MiB: 80 MiB into the disk.
    agent = await startAgent('read-disk.run-read=crash@20');
    await startSync(1, 'full-1');
    const exit = await agent.exited;
    t.equal(exit.signal, 'SIGKILL', 'the failpoint killed the agent');
    agent = await startAgent();
    const status = await waitForSync(ps, 'disk1');
    t.equal(status.state, 'SYNC_STATE_COMPLETED', status.error);
    t.ok(status.reconnects >= 1, `${status.reconnects} reconnects`);
    t.equal(sha256File(path.join(datastore, 'disk1.img')), sha256File(sources[1]), 'the replica equals the source');
  });

  t.test('a stopped sync started again with the same id resumes', async (t) => {
    await masterTarget.stop();
    // Slow batches, so the sync is surely still running when it is stopped.
    masterTarget = await startMasterTarget('apply.applied-committed=sleep:1000');
    await startSync(2, 'full-2');
    const acked = await waitForSync(ps, 'disk2', (status) => status.batchesAcked >= 1);
    t.equal(acked.state, 'SYNC_STATE_RUNNING');
    const stopped = await unary(ps, ps.stopSync, { diskId: 'disk2' });
    t.equal(stopped.state, 'SYNC_STATE_STOPPED');
    t.equal((await unary(ps, ps.getSync, { diskId: 'disk2' })).state, 'SYNC_STATE_STOPPED', 'it stays stopped');
    await startSync(2, 'full-2');
    const status = await waitForSync(ps, 'disk2');
    t.equal(status.state, 'SYNC_STATE_COMPLETED', status.error);
    // The first batch was acknowledged before the stop, so the sync goes on after it; or, when the master
    // target applied the final batch it had already received, it is complete and nothing is sent again.
    t.ok(status.resumedFrom > 0 || status.bytesChanged === 0, `resumed from ${status.resumedFrom}, ${status.bytesChanged} bytes sent again`);
    t.equal(sha256File(path.join(datastore, 'disk2.img')), sha256File(sources[2]), 'the replica equals the source');
  });
});
