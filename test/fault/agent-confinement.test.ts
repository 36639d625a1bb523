// Goal: an agent reads and writes only inside its disk roots even when the
// file system changes under it: a symlink as the last component of a path
// under a root is refused (even one leading inside the root), and a disk's
// directory swapped for a symlink between the check of the path and its open
// (held there by a failpoint) cannot make a write land outside the root.
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { status } from '@grpc/grpc-js';
import { startDaemon, tempDir } from '../helpers/daemons';
import { agentClient, unary } from '../helpers/clients';

const diskBytes = 1024 * 1024;
const block = 4096;

async function startAgent(t: Test, dir: string, root: string, env?: NodeJS.ProcessEnv) {
  const agent = await startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'agent'), '--disk-root', root], env });
  t.teardown(() => agent.stop());
  const client = agentClient(agent.address);
  t.teardown(() => client.close());
  return { agent, client };
}

t.test('a symlink as the last component under a disk root is refused', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const root = path.join(dir, 'root');
  fs.mkdirSync(root);
  const disk = path.join(root, 'disk.img');
  fs.writeFileSync(disk, Buffer.alloc(diskBytes, 3));
  const link = path.join(root, 'link.img');
  fs.symlinkSync(disk, link);
  const { client } = await startAgent(t, dir, root);
  await t.rejects(unary(client, client.describeDisks, { paths: [link] }), { code: status.PERMISSION_DENIED, details: /symbolic link/ }, 'describe refused');
  await t.rejects(unary(client, client.write, { path: link, offset: 0, data: Buffer.alloc(block, 1) }), { code: status.PERMISSION_DENIED }, 'write refused');
  t.ok(fs.readFileSync(disk).equals(Buffer.alloc(diskBytes, 3)), 'the file behind the link is unchanged');
  const { disks } = await unary(client, client.describeDisks, { paths: [disk] });
  t.equal(disks[0].diskBytes, diskBytes, 'the file itself is still a disk');
});

t.test("a disk's directory swapped for a symlink between the check and the open: the write does not land outside", async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const root = path.join(dir, 'root');
  const outside = path.join(dir, 'outside');
  fs.mkdirSync(path.join(root, 'vm1'), { recursive: true });
  fs.mkdirSync(outside);
  const disk = path.join(root, 'vm1', 'disk.img');
  fs.writeFileSync(disk, Buffer.alloc(diskBytes));
  fs.writeFileSync(path.join(outside, 'disk.img'), Buffer.alloc(diskBytes));
  const go = path.join(dir, 'go');
  const { agent, client } = await startAgent(t, dir, root, { DRPLANE_FAILPOINTS: `write-through.before-open=wait-for:${go}` });
  const writing = unary(client, client.write, { path: disk, offset: 0, data: Buffer.alloc(block, 0xee) }).catch((e) => e);
  await agent.waitForLog((line) => line.msg === 'failpoint waiting');
  fs.renameSync(path.join(root, 'vm1'), path.join(dir, 'vm1-before'));
  fs.symlinkSync(outside, path.join(root, 'vm1'));
  fs.writeFileSync(go, '');
  const error = await writing;
  t.equal(error.code, status.PERMISSION_DENIED, 'PERMISSION_DENIED');
  t.match(error.details, /outside/, 'the message says where it led');
  t.ok(fs.readFileSync(path.join(outside, 'disk.img')).equals(Buffer.alloc(diskBytes)), 'the file outside the root is unchanged');
  const { diskRoots } = await unary(client, client.getStatus, {});
  t.same(diskRoots, [root], 'the agent still serves');
});
