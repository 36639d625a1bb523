// Goal: a hash tree's memory is bounded before it is allocated. A sparse giant
// (a replica of 15.9 TiB on the master target, whose tree keeps the levels
// above the leaves densely; a source disk of 1 TiB on the agent, whose tree
// keeps every leaf) is refused at OpenHashTree with RESOURCE_EXHAUSTED naming
// the limit, at once and without reading the disk, and the daemon goes on
// serving trees of other disks. Before, the master target allocated 2 GiB and
// the agent read the whole terabyte into 2 GiB of leaves.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { agentClient, startMasterTarget, unary } from '../helpers/clients';
import { startDaemon, tempDir } from '../helpers/daemons';
import { hashTreeBytes } from '../../shared/hash-tree';
import { blockBytes, hashTreeBytesMax, hashTreeFanout } from '../../shared/limits';

const TiB = 1024 ** 4;

t.test('master target: the tree of a sparse giant replica is refused, a small one opens', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { mt, client, datastore } = await startMasterTarget(t, dir);
  const giantBytes = Math.floor((15.9 * TiB) / (1024 * 1024)) * 1024 * 1024;
  t.ok(hashTreeBytes(giantBytes / blockBytes, 1) > hashTreeBytesMax, 'the giant tree is over the limit');
  await unary(client, client.createReplica, { diskId: 'giant', path: path.join(datastore, 'giant.img'), diskBytes: giantBytes, epoch: 1 });
  await unary(client, client.createReplica, { diskId: 'small', path: path.join(datastore, 'small.img'), diskBytes: 64 * 1024 * 1024, epoch: 1 });
  const startedMs = Date.now();
  await t.rejects(unary(client, client.openHashTree, { diskId: 'giant', rescan: false }), { code: grpc.status.RESOURCE_EXHAUSTED, details: /hash tree of replica giant .* more than the 2147483648 one tree may/ });
  t.ok(Date.now() - startedMs < 5_000, 'refused at once');
  const small = await unary(client, client.openHashTree, { diskId: 'small', rescan: false });
  t.equal(Number(small.leafCount), (64 * 1024 * 1024) / blockBytes, 'a small replica\'s tree opens');
  t.equal(small.fanout, hashTreeFanout);
  t.equal(mt.process.exitCode, null, 'the master target still runs');
});

t.test('agent: the tree of a 1 TiB sparse source is refused before the disk is read', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const giant = path.join(dir, 'giant.img');
  const small = path.join(dir, 'small.img');
  fs.closeSync(fs.openSync(giant, 'w'));
  fs.truncateSync(giant, TiB);
  fs.writeFileSync(small, Buffer.alloc(1024 * 1024, 3));
  const agent = await startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'), '--disk', giant, '--disk', small] });
  t.teardown(() => agent.stop());
  const client = agentClient(agent.address);
  t.teardown(() => client.close());
  const startedMs = Date.now();
  await t.rejects(unary(client, client.openHashTree, { path: giant }), { code: grpc.status.RESOURCE_EXHAUSTED, details: /hash tree of disk .*giant\.img .* more than the 2147483648 one tree may/ });
  t.ok(Date.now() - startedMs < 5_000, 'refused at once');
  const status = await unary(client, client.getStatus, {});
  t.equal(Number(status.bytesRead), 0, 'nothing of the giant was read');
  const opened = await unary(client, client.openHashTree, { path: small });
  t.equal(Number(opened.leafCount), 256, 'a small disk\'s tree opens');
});
