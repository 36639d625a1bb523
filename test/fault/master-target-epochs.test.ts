// Goal: SetEpoch and RetireReplica cannot fence a disk for ever: an epoch more
// than epochStepMax above the replica's (2^53-1 leaves no newer one) is
// refused with INVALID_ARGUMENT and changes nothing; the daemon keeps serving
// and a step within the bound still works.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { status } from '@grpc/grpc-js';
import { tempDir } from '../helpers/daemons';
import { makeExtent, sendFrames, startMasterTarget, unary } from '../helpers/clients';
import { sha256File } from '../helpers/disks';
import { epochStepMax } from '../../shared/limits';

const diskBytes = 1024 * 1024;

t.test('an epoch step over epochStepMax is refused and writes nothing', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { client, datastore } = await startMasterTarget(t, dir);
  const replicaPath = path.join(datastore, 'd0.img');
  await unary(client, client.createReplica, { diskId: 'd0', path: replicaPath, diskBytes, epoch: 2 });
  const first = await sendFrames(client, [{ diskId: 'd0', epoch: 2, sequence: 1, extents: [await makeExtent(0, Buffer.alloc(8192, 7))], last: true, recoveryPointKind: 'CRASH_CONSISTENT' }]);
  t.error(first.error, 'a batch applies at epoch 2');
  const before = sha256File(replicaPath);

  for (const epoch of [Number.MAX_SAFE_INTEGER, 2 + epochStepMax + 1]) {
    for (const [name, call] of [
      ['SetEpoch', () => unary(client, client.setEpoch, { diskId: 'd0', epoch })],
      ['RetireReplica', () => unary(client, client.retireReplica, { diskId: 'd0', epoch })],
    ] as const) {
      const error = await call().catch((e) => e);
      t.equal(error.code, status.INVALID_ARGUMENT, `${name} at ${epoch}: INVALID_ARGUMENT`);
      t.match(error.details, new RegExp(`more than ${epochStepMax} above`), `${name} at ${epoch}: the message names the bound`);
      const replica = await unary(client, client.getReplica, { diskId: 'd0' });
      t.match(replica, { epoch: 2, retired: false, appliedSequence: 1 }, `${name} at ${epoch}: nothing changed`);
    }
  }
  t.equal(sha256File(replicaPath), before, 'the replica file is untouched');
  const next = await sendFrames(client, [{ diskId: 'd0', epoch: 2, sequence: 2, extents: [await makeExtent(8192, Buffer.alloc(4096, 1))], last: true }]);
  t.error(next.error, 'batches of epoch 2 still apply');

  const raised = await unary(client, client.setEpoch, { diskId: 'd0', epoch: 2 + epochStepMax });
  t.equal(raised.epoch, 2 + epochStepMax, 'a step of exactly epochStepMax is taken');
  const retired = await unary(client, client.retireReplica, { diskId: 'd0', epoch: 2 + 2 * epochStepMax });
  t.match(retired, { retired: true, epoch: 2 + 2 * epochStepMax }, 'RetireReplica within the bound retires');
});
