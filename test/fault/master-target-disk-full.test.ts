// Goal: a replica write that fails (a full datastore, injected as ENOSPC by a
// failpoint) is refused with RESOURCE_EXHAUSTED, the batch is rolled back at
// once (the replica stays at the last batch boundary while the daemon runs,
// and every point still materialises), and the same batch applies when it is
// sent again.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { tempDir } from '../helpers/daemons';
import { makeExtent, sendFrames, startMasterTarget, unary } from '../helpers/clients';
import { randomBytes, seededRandom } from '../helpers/disks';

const diskBytes = 4 * 1024 * 1024;
const block = 4096;

t.test('a full datastore refuses the batch and rolls it back', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { mt, client } = await startMasterTarget(t, dir, { DRPLANE_FAILPOINTS: 'apply.replica-write=error:ENOSPC@2' });
  const replicaPath = path.join(dir, 'ds', 'd.img');
  await unary(client, client.createReplica, { diskId: 'd', path: replicaPath, diskBytes, epoch: 1 });

  const random = seededRandom(7);
  const first = randomBytes(64 * block, random);
  const second = randomBytes(96 * block, random);
  const batch = async (sequence: number, data: Buffer) => [{ diskId: 'd', epoch: 1, sequence, extents: [await makeExtent(32 * block, data)], last: true, recoveryPointKind: 'CRASH_CONSISTENT' as const }];

  t.error((await sendFrames(client, await batch(1, first))).error, 'batch 1 applies');
  const afterFirst = fs.readFileSync(replicaPath);

  const refused = await sendFrames(client, await batch(2, second));
  t.equal(refused.error?.code, status.RESOURCE_EXHAUSTED, 'no space: RESOURCE_EXHAUSTED');
  t.match(refused.error?.details ?? '', /no space left to write replica .* the batch was rolled back/);
  t.ok(fs.readFileSync(replicaPath).equals(afterFirst), 'the replica is at the last batch boundary, without a restart');
  const replica = await unary(client, client.getReplica, { diskId: 'd' });
  t.equal(replica.appliedSequence, 1, 'batch 2 is not applied');
  await mt.waitForLog((line) => line.msg === 'batch failed while applying and was rolled back');

  t.error((await sendFrames(client, await batch(2, second))).error, 'sent again, batch 2 applies');
  const restored = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd@1', path: path.join(dir, 'ds', 'at-1.img') });
  t.ok(fs.readFileSync(restored.path).equals(afterFirst), 'point 1 still materialises exactly');
  const expected = Buffer.from(afterFirst);
  second.copy(expected, 32 * block);
  t.ok(fs.readFileSync(replicaPath).equals(expected), 'the replica holds batch 2');
});
