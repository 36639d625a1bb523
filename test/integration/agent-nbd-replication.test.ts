// Goal (issue 12, item 2): writes that real NBD clients make through the agent
// are replicated like WriteStream writes: one write-through capture of the
// disk, enabled with drctl, whose recovery points materialise equal to the
// source byte for byte. qemu-img writes a whole image while the initial sync
// runs, then qemu-io writes every shape of request (unaligned, 512 bytes, FUA,
// discard, write-zeroes); `latest` materialises to the source, and qemu-img
// compare agrees through NBD. Real daemons, registered, driven with drctl.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import type { RecoveryPoint__Output } from '../../generated/drplane/v1/RecoveryPoint';
import { unary } from '../../shared/grpc';
import { createImage, randomBytes, seededRandom, sha256File } from '../helpers/disks';
import { mustSucceed, nbdUri, qemuIo, run, whyNoNbdClients } from '../helpers/nbd';
import { eventually, startStack } from '../helpers/stack';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 32 * MiB;
const why = whyNoNbdClients();

t.test('NBD writes are replicated: the latest point equals the source', { skip: why || false }, async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'drplane-nbd-rep-'));
  const source = path.join(dir, 'vm1-disk0.img');
  createImage(source, diskBytes, seed);
  const socket = path.join(dir, 'nbd.sock');
  const stack = await startStack(t, { dir, agents: [{ name: 'agent1', disks: [source], args: ['--nbd-listen', `unix:${socket}`] }] });
  const uri = nbdUri(socket);

  await stack.drctlJson('policy', 'create', 'fast', '--crash-interval', '1s', '--retention', '1h', '--rpo-threshold', '1m', '--app-interval', '0', '--group-interval', '0');
  await stack.drctlJson('machine', 'add', 'vm1', '--agent', 'agent1', '--disk', source);
  const job = await stack.drctlJson<{ jobId: string }>('enable', 'vm1', '--datastore', path.join(stack.datastore, 'vm1'), '--policy', 'fast', '--capture', 'write-through', '--no-watch');
  const agent = stack.agentClientFor('agent1');
  await eventually('the write-through capture to start', async () => {
    const { captures } = await unary(agent, agent.listCaptures, {});
    return captures.find((capture) => capture.path === source && capture.mode === 'CAPTURE_WRITE_THROUGH');
  });

  // While the initial sync runs: a whole image written with qemu-img (data and zeros: WRITE and WRITE_ZEROES).
  const image = path.join(dir, 'image.raw');
  fs.writeFileSync(image, Buffer.concat([randomBytes(12 * MiB, random), Buffer.alloc(8 * MiB), randomBytes(12 * MiB, random)]));
  const started = Date.now();
  mustSucceed(await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image, uri]), 'qemu-img convert onto the export');
  t.comment(`qemu-img convert wrote ${diskBytes / MiB} MiB through NBD with capture on in ${Date.now() - started} ms`);
  t.equal(sha256File(source), sha256File(image), 'qemu-img wrote the image onto the source');

  const watched = await stack.drctl('job', 'watch', job.jobId);
  t.equal(watched.code, 0, `the enable job succeeded (${watched.stderr.trim()})`);

  // Every shape of request after the sync.
  await qemuIo(uri, [
    'write -P 0x11 1000 3000',
    'write -P 0x22 5000 512',
    'write -P 0x33 7680 9000',
    'write -f -P 0x44 2097152 65536',
    'flush',
    'write -P 0x55 5243000 3145728',
    'discard 10485760 1048576',
    'write -z 14680071 100000',
    'write -z -u 16777216 2097152',
    'flush',
  ]);
  const capture = (await unary(agent, agent.listCaptures, {})).captures.find((entry) => entry.path === source)!;
  t.ok(capture.writes >= 40, `the capture recorded the NBD writes (${capture.writes} records)`);

  const latest = await stack.drctlJson<{ recoveryPoints: RecoveryPoint__Output[] }>('points', 'vm1', '--select', 'latest');
  const point = latest.recoveryPoints[0]!;
  const restored = path.join(stack.datastore, 'restore', 'latest.img');
  const materialised = await unary(stack.csClient, stack.csClient.materialiseRecoveryPoint, { recoveryPointId: point.id, path: restored });
  t.equal(sha256File(materialised.path), sha256File(source), `the latest point (${point.id}) materialises equal to the source byte for byte`);
  t.match(mustSucceed(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', materialised.path, uri]), 'qemu-img compare').stdout, /Images are identical/, 'qemu-img compare, reading the source through NBD, agrees');
});
