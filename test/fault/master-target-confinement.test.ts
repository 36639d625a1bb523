// Goal: the master target writes and reads only inside its datastore roots
// even when the file system changes under it: a symlink as the last component
// of an adopted replica is refused, a directory swapped for a symlink between
// the check of a path and its open (held there by a failpoint) cannot lead a
// new replica outside, and a replica whose directory became a link while the
// daemon was down is not written through that link. Nothing outside changes.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { status } from '@grpc/grpc-js';
import { tempDir } from '../helpers/daemons';
import { makeExtent, sendFrames, startMasterTarget, unary } from '../helpers/clients';

const diskBytes = 1024 * 1024;

t.test('adopt_existing does not follow a symlink in the last component', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { client, datastore } = await startMasterTarget(t, dir);
  const outside = path.join(dir, 'outside');
  fs.mkdirSync(outside);
  const victim = path.join(outside, 'victim.img');
  fs.writeFileSync(victim, Buffer.alloc(diskBytes, 9));
  const inside = path.join(datastore, 'inside.img');
  fs.writeFileSync(inside, Buffer.alloc(diskBytes, 8));
  for (const [name, target] of [['outside', victim], ['inside', inside]] as const) {
    const link = path.join(datastore, `link-${name}.img`);
    fs.symlinkSync(target, link);
    const error = await unary(client, client.createReplica, { diskId: `d-${name}`, path: link, diskBytes, epoch: 1, adoptExisting: true }).catch((e) => e);
    t.equal(error.code, status.PERMISSION_DENIED, `a link to a file ${name} the roots: PERMISSION_DENIED`);
    t.match(error.details, /symbolic link/, 'the message says it is a link');
    const known = await unary(client, client.getReplica, { diskId: `d-${name}` }).catch((e) => e);
    t.equal(known.code, status.NOT_FOUND, 'no replica was recorded');
  }
  t.ok(fs.readFileSync(victim).equals(Buffer.alloc(diskBytes, 9)), 'the file outside is unchanged');
  const adopted = await unary(client, client.createReplica, { diskId: 'd-file', path: inside, diskBytes, epoch: 1, adoptExisting: true });
  t.equal(adopted.path, inside, 'a regular file is still adopted');
});

t.test('a directory swapped for a symlink between the check and the open cannot lead a new replica outside', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const go = path.join(dir, 'go');
  const { mt, client, datastore } = await startMasterTarget(t, dir, { DRPLANE_FAILPOINTS: `open-beneath.checked=wait-for:${go}` });
  const outside = path.join(dir, 'outside');
  fs.mkdirSync(outside);
  const sub = path.join(datastore, 'vm1');
  fs.mkdirSync(sub);
  const creating = unary(client, client.createReplica, { diskId: 'd0', path: path.join(sub, 'd0.img'), diskBytes, epoch: 1 }).catch((e) => e);
  await mt.waitForLog((line) => line.msg === 'failpoint waiting');
  // The path was checked; now its directory becomes a link to a directory outside the roots.
  fs.renameSync(sub, path.join(datastore, 'vm1-before'));
  fs.symlinkSync(outside, sub);
  fs.writeFileSync(go, '');
  const error = await creating;
  t.equal(error.code, status.PERMISSION_DENIED, 'PERMISSION_DENIED');
  t.match(error.details, /outside the datastore roots/, 'the message says where it led');
  t.same(fs.readdirSync(outside), [], 'nothing was created outside the roots');
  const known = await unary(client, client.getReplica, { diskId: 'd0' }).catch((e) => e);
  t.equal(known.code, status.NOT_FOUND, 'no replica was recorded');
  const status_ = await unary(client, client.getStatus, {});
  t.equal(status_.replicaCount, 0, 'the master target still serves');
});

t.test("a replica's directory turned into a link while the daemon was down is not written through it", async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const outside = path.join(dir, 'outside');
  fs.mkdirSync(outside);
  {
    const { mt, client, datastore } = await startMasterTarget(t, dir);
    await unary(client, client.createReplica, { diskId: 'd0', path: path.join(datastore, 'vm1', 'd0.img'), diskBytes, epoch: 1 });
    client.close();
    await mt.stop();
  }
  const datastore = path.join(dir, 'ds');
  fs.renameSync(path.join(datastore, 'vm1'), path.join(outside, 'moved'));
  fs.writeFileSync(path.join(outside, 'd0.img'), Buffer.alloc(diskBytes));
  fs.symlinkSync(outside, path.join(datastore, 'vm1'));
  const { client } = await startMasterTarget(t, dir);
  const result = await sendFrames(client, [{ diskId: 'd0', epoch: 1, sequence: 1, extents: [await makeExtent(0, Buffer.alloc(8192, 5))], last: true }]);
  t.equal(result.error?.code, status.PERMISSION_DENIED, 'the batch is refused: PERMISSION_DENIED');
  t.match(result.error?.details, /outside the datastore roots/);
  t.ok(fs.readFileSync(path.join(outside, 'd0.img')).equals(Buffer.alloc(diskBytes)), 'the file outside is unchanged');
  const replica = await unary(client, client.getReplica, { diskId: 'd0' });
  t.equal(replica.appliedSequence, 0, 'nothing was applied');
});
