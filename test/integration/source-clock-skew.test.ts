// Goal: an agent whose clock is a day ahead (DRPLANE_TEST_CLOCK_OFFSET_MS)
// cannot date points in the future: the process server dates them with its
// own clock once the agent's is more than sourceClockSkewMsMax ahead, so the
// retention window (1 s here) keeps pruning; the configuration server raises
// SOURCE_CLOCK_SKEW for the disk. Real daemons, write-through capture.
import path from 'node:path';
import t from 'tap';
import { unary } from '../../shared/grpc';
import { sourceClockSkewMsMax } from '../../shared/limits';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import { tempDir } from '../helpers/daemons';
import { createImage, seededRandom } from '../helpers/disks';
import { eventually, startStack } from '../helpers/stack';
import { randomWrite } from '../helpers/write-log';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 2 * MiB;
const dayMs = 24 * 60 * 60_000;

t.test("an agent's clock a day ahead: points dated by the process server, pruning goes on, SOURCE_CLOCK_SKEW raised", async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = tempDir();
  const source = path.join(dir, 'source.img');
  createImage(source, diskBytes, seed);
  const stack = await startStack(t, {
    dir,
    csArgs: ['--status-poll-interval-ms', '200'],
    psArgs: ['--hash-threads', '1'],
    agents: [{ name: 'agent1', disks: [source], args: ['--hash-threads', '1'], env: { DRPLANE_TEST_CLOCK_OFFSET_MS: String(dayMs) } }],
  });
  const { csClient, mtClient } = stack;
  const created = await unary(csClient, csClient.createPolicy, { name: 'short', crashConsistentIntervalMs: 500, rpoThresholdMs: 60_000, retentionMs: 1_000 });
  await unary(csClient, csClient.updatePolicy, { policy: created.policy!.policyId, appConsistentIntervalMs: 0, groupConsistentIntervalMs: 0 });
  await unary(csClient, csClient.addMachine, { name: 'vm1', agent: 'agent1', disks: [{ sourcePath: source }] });
  const job = await stack.drctlJson<{ state: string }>('enable', 'vm1', '--datastore', path.join(stack.datastore, 'vm1'), '--policy', 'short', '--capture', 'write-through');
  t.equal(job.state, 'JOB_SUCCEEDED', 'replication enabled');

  const writer = new WriteThroughClient(stack.agents.get('agent1')!.address);
  t.teardown(() => writer.close());
  const write = async () => {
    const { offset, data } = randomWrite(random, diskBytes);
    await writer.write(source, offset, data);
  };
  await write();
  const first = await eventually('a point after the first write', async () => {
    const { recoveryPoints: points } = await unary(mtClient, mtClient.listRecoveryPoints, { diskId: 'vm1-disk0' });
    return points.length > 0 ? points[0] : undefined;
  }, 30_000);
  t.ok(Number(first.sourceTimeMs) <= Date.now() + sourceClockSkewMsMax, `the first point is not dated in the future (${new Date(Number(first.sourceTimeMs)).toISOString()})`);

  // Points keep coming while the disk is written; the 1 s window prunes the first one.
  const pruned = await eventually('the first point to be pruned', async () => {
    await write();
    const { recoveryPoints: points } = await unary(mtClient, mtClient.listRecoveryPoints, { diskId: 'vm1-disk0' });
    return points.length > 0 && points.every((point) => point.id !== first.id) ? points : undefined;
  }, 30_000);
  t.ok(pruned.every((point) => Number(point.sourceTimeMs) <= Date.now() + sourceClockSkewMsMax), 'no point held is dated in the future');

  const event = await eventually('SOURCE_CLOCK_SKEW', async () => {
    const { events } = await unary(csClient, csClient.listHealthEvents, { machine: 'vm1', activeOnly: true, limit: 0 });
    return events.find((candidate) => candidate.code === 'SOURCE_CLOCK_SKEW');
  }, 30_000);
  t.match(event, { subject: 'vm1-disk0', severity: 'HEALTH_WARNING' }, 'raised for the disk, as a warning');
  t.match(event.message, /ahead of its process server's/, 'the message says what is wrong');
});
