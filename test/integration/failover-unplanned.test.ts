// Goal (issue 4, must-shows 2, 6 and 7), two sites on loopback:
// - a test failover materialises the chosen point to separate disks while
//   replication goes on, and cleanup removes them;
// - an unplanned failover to latest-app-consistent gives exactly the
//   app-consistent point's contents, with the choice recorded; a change of
//   recovery point to a time T gives the point at or before T;
// - after the failover, the old source's epoch is fenced: its process server,
//   back from a crash with batches still queued, and a batch sent by hand are
//   both refused by the master target, and nothing is written.
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import t from 'tap';
import { unary } from '../../shared/grpc';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import { makeExtent, sendFrames } from '../helpers/clients';
import { createImage, randomBytes, seededRandom } from '../helpers/disks';
import { eventually } from '../helpers/stack';
import { startSites, writeThrough } from '../helpers/sites';
import { sha256OfFile } from '../helpers/write-log';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 8 * MiB;

t.test('test failover, unplanned failover by selector, change of point by time, epoch fencing', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const sites = await startSites(t, { args: { agentA: ['--freeze-hook', 'true'] } });
  const { cs } = sites;
  const source = path.join(sites.disksA, 'vm1.img');
  createImage(source, diskBytes, seed);
  await sites.drctlJson('policy', 'create', 'fast', '--crash-interval', '1s', '--app-interval', '0', '--group-interval', '0');
  await sites.drctlJson('machine', 'add', 'vm1', '--agent', 'agentA', '--disk', source);

  const refused = await unary(cs, cs.failover, { machine: 'vm1', selector: 'LATEST_PROCESSED' }).catch((error: grpc.ServiceError) => error);
  t.equal((refused as grpc.ServiceError).code, grpc.status.FAILED_PRECONDITION, 'no failover before a recovery point');
  t.match((refused as grpc.ServiceError).details, /recovery point/, `and the message says why: ${(refused as grpc.ServiceError).details}`);

  const enable = await unary(cs, cs.enableReplication, { machine: 'vm1', processServer: 'psA', masterTarget: 'mtB', datastore: path.join(sites.dsB, 'vm1'), policy: 'fast', captureMode: 'CAPTURE_WRITE_THROUGH' });
  await sites.waitJob(enable.jobId);
  const writer = new WriteThroughClient(sites.daemons.agentA.address);
  t.teardown(() => writer.close());

  // W1, an app-consistent point, W2 (drained: a point covers it), time T, then W3.
  await writeThrough(writer, [source], diskBytes, 100, random);
  const appPoints = await unary(cs, cs.takeAppConsistentPoint, { machine: 'vm1', tag: 'after-w1' });
  t.equal(appPoints.recoveryPoints[0]?.kind, 'APP_CONSISTENT', 'an app-consistent point after W1');
  const afterW1 = sha256OfFile(source);
  await writeThrough(writer, [source], diskBytes, 100, random);
  await unary(cs, cs.selectRecoveryPoint, { machine: 'vm1', selector: 'LATEST' });
  const afterW2 = sha256OfFile(source);
  const timeT = Date.now();
  await new Promise((resolve) => setTimeout(resolve, 50));
  await writeThrough(writer, [source], diskBytes, 100, random);
  await unary(cs, cs.selectRecoveryPoint, { machine: 'vm1', selector: 'LATEST' });

  // Test failover to the app-consistent point while writes go on.
  let writing = true;
  const background = (async () => {
    while (writing) await writeThrough(writer, [source], diskBytes, 16, random);
  })();
  const pointsBefore = (await unary(cs, cs.listRecoveryPoints, { machine: 'vm1', diskId: '' })).recoveryPoints;
  const testJob = await unary(cs, cs.testFailover, { machine: 'vm1', selector: 'LATEST_APP_CONSISTENT' });
  await sites.waitJob(testJob.jobId);
  let machine = await sites.machine('vm1');
  t.equal(machine.state, 'PROTECTED', 'a test failover leaves the machine protected');
  const testDisk = machine.testFailover!.diskPaths[0]!;
  t.equal(sha256OfFile(testDisk), afterW1, 'the test failover disk equals the chosen (app-consistent) point');
  const newest = (points: { sequence: number | string }[]) => Math.max(...points.map((point) => Number(point.sequence)));
  await eventually('replication to go on during the test failover', async () => {
    const points = (await unary(cs, cs.listRecoveryPoints, { machine: 'vm1', diskId: '' })).recoveryPoints;
    return newest(points) > newest(pointsBefore) ? true : undefined;
  });
  writing = false;
  await background;
  const cleanup = await unary(cs, cs.cleanupTestFailover, { machine: 'vm1' });
  await sites.waitJob(cleanup.jobId);
  t.notOk(fs.existsSync(testDisk), 'cleanup removed the test failover disk');
  t.notOk((await sites.machine('vm1')).testFailover, 'and the machine no longer has a test failover');
  await unary(cs, cs.selectRecoveryPoint, { machine: 'vm1', selector: 'LATEST' });

  // The primary site's process server dies with changes still coming; unplanned failover.
  const oldEpoch = Number((await unary(sites.client.mtB, sites.client.mtB.getReplica, { diskId: 'vm1-disk0' })).epoch);
  await sites.daemons.psA.kill();
  await writeThrough(writer, [source], diskBytes, 50, random);
  const failover = await unary(cs, cs.failover, { machine: 'vm1', selector: 'LATEST_APP_CONSISTENT', noStart: true });
  const failedOver = await sites.waitJob(failover.jobId);
  machine = await sites.machine('vm1');
  t.equal(machine.state, 'FAILED_OVER', 'failed over without the primary site');
  t.equal(machine.failover!.selector, 'LATEST_APP_CONSISTENT', 'the selector is recorded on the machine');
  t.match(failedOver.detail, /LATEST_APP_CONSISTENT|latest-app-consistent/i, `and on the job: ${failedOver.detail}`);
  const recovered = machine.recovery!.diskPaths[0]!;
  t.equal(sha256OfFile(recovered), afterW1, 'unplanned failover to latest-app-consistent gives exactly the app-consistent contents');

  const change = await unary(cs, cs.changeRecoveryPoint, { machine: 'vm1', selector: 'AT_OR_BEFORE', timeMs: timeT });
  await sites.waitJob(change.jobId);
  t.equal(sha256OfFile(recovered), afterW2, 'changed to the point at or before T: the source as it was at T');
  const replica = await unary(sites.client.mtB, sites.client.mtB.getReplica, { diskId: 'vm1-disk0' });

  // The old primary's process server comes back with its queued batches of the old epoch.
  await sites.restart('psA');
  await eventually('the old session to be refused or stopped', async () => {
    try {
      const status = await unary(sites.client.psA, sites.client.psA.getReplication, { diskId: 'vm1-disk0' });
      return status.state === 'REPLICATION_FAILED' || status.state === 'REPLICATION_STOPPED' ? status : undefined;
    } catch (error) {
      return (error as grpc.ServiceError).code === grpc.status.NOT_FOUND ? true : undefined;
    }
  });
  // A batch of the old epoch, by hand.
  const frame = { diskId: 'vm1-disk0', epoch: oldEpoch, sequence: Number(replica.appliedSequence) + 1, extents: [await makeExtent(0, randomBytes(4096, random))], last: true };
  const sent = await sendFrames(sites.client.mtB, [frame]);
  t.equal(sent.error?.code, grpc.status.FAILED_PRECONDITION, `a batch of the old epoch is refused: ${sent.error?.details}`);
  const after = await unary(sites.client.mtB, sites.client.mtB.getReplica, { diskId: 'vm1-disk0' });
  t.equal(Number(after.appliedSequence), Number(replica.appliedSequence), 'nothing was applied to the replica');
  t.ok(Number(after.epoch) > oldEpoch, `the replica is at the failover's epoch (${after.epoch})`);
  t.equal(sha256OfFile(recovered), afterW2, 'the failed-over disk is untouched by the old source');

  const commit = await unary(cs, cs.commitFailover, { machine: 'vm1' });
  await sites.waitJob(commit.jobId);
  const retiredSend = await sendFrames(sites.client.mtB, [{ ...frame, epoch: Number(after.epoch) }]);
  t.equal(retiredSend.error?.code, grpc.status.FAILED_PRECONDITION, `after commit, the retired replica refuses batches of its last epoch too: ${retiredSend.error?.details}`);
  t.equal(sha256OfFile(recovered), afterW2, 'and the machine\'s disk at B is still untouched');
});
