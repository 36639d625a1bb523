// Goal: hostile or broken input to the master target gets a precise status,
// writes nothing, and leaves the daemon serving.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { startDaemon, tempDir } from '../helpers/daemons';
import { makeExtent, sendFrames, startMasterTarget, unary } from '../helpers/clients';
import { sha256File } from '../helpers/disks';
import { batchBytesMax, disksPerMasterTargetMax, extentBytesMax, messageBytesMax } from '../../shared/limits';

const diskBytes = 4 * 1024 * 1024;
const block = 4096;

t.test('hostile input is refused with a precise status and nothing is written', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { mt, client, datastore: root } = await startMasterTarget(t, dir);
  const replicaPath = path.join(root, 'd0.img');
  await unary(client, client.createReplica, { diskId: 'd0', path: replicaPath, diskBytes, epoch: 2 });
  const first = await sendFrames(client, [{ diskId: 'd0', epoch: 2, sequence: 1, extents: [await makeExtent(0, Buffer.alloc(8 * block, 7))], last: true, recoveryPointKind: 'CRASH_CONSISTENT' }]);
  t.error(first.error, 'a good batch applies');
  const before = sha256File(replicaPath);

  const good = await makeExtent(block, Buffer.alloc(block, 1));
  const cases: { name: string; code: number; frames: () => Promise<Parameters<typeof sendFrames>[1]>; message: RegExp }[] = [
    {
      name: 'wrong block hash',
      code: status.DATA_LOSS,
      message: /hash mismatch at offset 4096/,
      frames: async () => [{ diskId: 'd0', epoch: 2, sequence: 2, extents: [{ ...good, blockHashes: Buffer.alloc(8, 1) }], last: true }],
    },
    {
      name: 'data that is not lz4',
      code: status.DATA_LOSS,
      message: /lz4|decodes/,
      frames: async () => [{ diskId: 'd0', epoch: 2, sequence: 2, extents: [{ ...good, codec: 'CODEC_LZ4', data: Buffer.from('not lz4 at all') }], last: true }],
    },
    {
      // uncompressSync allocates the declared size before decoding: refused first, nothing allocated.
      name: 'lz4 whose size prefix declares 4 GiB',
      code: status.DATA_LOSS,
      message: /declares 4294967295 plain bytes, its header says 4096/,
      frames: async () => [{ diskId: 'd0', epoch: 2, sequence: 2, extents: [{ ...good, codec: 'CODEC_LZ4', data: Buffer.from([0xff, 0xff, 0xff, 0xff, 0x1f, 0x01, 0x01, 0x00]) }], last: true }],
    },
    {
      name: 'a run of zeros (CODEC_ZERO) that carries data',
      code: status.DATA_LOSS,
      message: /CODEC_ZERO extent carries 4096 bytes of data/,
      frames: async () => [{ diskId: 'd0', epoch: 2, sequence: 2, extents: [{ ...good, codec: 'CODEC_ZERO', blockHashes: Buffer.alloc(0) }], last: true }],
    },
    {
      name: 'a run of zeros (CODEC_ZERO) that carries block hashes',
      code: status.INVALID_ARGUMENT,
      message: /carries 8 bytes of block hashes, expected 0/,
      frames: async () => [{ diskId: 'd0', epoch: 2, sequence: 2, extents: [{ ...good, codec: 'CODEC_ZERO', data: Buffer.alloc(0), blockHashes: Buffer.alloc(8) }], last: true }],
    },
    {
      name: 'offset past the end of the disk',
      code: status.OUT_OF_RANGE,
      message: /past the end of disk d0/,
      frames: async () => [{ diskId: 'd0', epoch: 2, sequence: 2, extents: [{ ...good, offset: diskBytes }], last: true }],
    },
    {
      name: 'offset not block-aligned',
      code: status.INVALID_ARGUMENT,
      message: /whole 4096-byte blocks/,
      frames: async () => [{ diskId: 'd0', epoch: 2, sequence: 2, extents: [{ ...good, offset: 100 }], last: true }],
    },
    {
      name: 'stale epoch',
      code: status.FAILED_PRECONDITION,
      message: /epoch 1 is older than the replica's epoch 2/,
      frames: async () => [{ diskId: 'd0', epoch: 1, sequence: 2, extents: [good], last: true }],
    },
    {
      name: 'sequence gap',
      code: status.FAILED_PRECONDITION,
      message: /the next batch is 2/,
      frames: async () => [{ diskId: 'd0', epoch: 2, sequence: 5, extents: [good], last: true }],
    },
    {
      name: 'unknown disk',
      code: status.NOT_FOUND,
      message: /no replica for disk nope/,
      frames: async () => [{ diskId: 'nope', epoch: 2, sequence: 1, extents: [good], last: true }],
    },
    {
      name: 'message over the limit',
      code: status.RESOURCE_EXHAUSTED,
      message: /larger than max|message/i,
      frames: async () => [{ diskId: 'd0', epoch: 2, sequence: 2, extents: [{ ...good, data: Buffer.alloc(messageBytesMax + 1024) }], last: true }],
    },
    {
      name: 'extent over the limit',
      code: status.RESOURCE_EXHAUSTED,
      message: /more than 1048576/,
      frames: async () => [{ diskId: 'd0', epoch: 2, sequence: 2, extents: [await makeExtent(0, Buffer.alloc(extentBytesMax * 2, 3))], last: true }],
    },
    {
      name: 'batch over the limit',
      code: status.RESOURCE_EXHAUSTED,
      message: /holds more than/,
      frames: async () => {
        const extent = await makeExtent(0, Buffer.alloc(extentBytesMax, 5));
        const frames = [];
        // Each frame is small on the wire (compressed), the batch is not.
        for (let n = 0; n <= batchBytesMax / extentBytesMax; n++) frames.push({ diskId: 'd0', epoch: 2, sequence: 2, extents: [extent] });
        return frames;
      },
    },
  ];
  for (const c of cases) {
    const result = await sendFrames(client, await c.frames());
    t.equal(result.error?.code, c.code, `${c.name}: ${status[c.code]}`);
    t.match(result.error?.details ?? '', c.message, `${c.name}: the message says why`);
    t.equal(sha256File(replicaPath), before, `${c.name}: nothing written to the replica`);
    const replica = await unary(client, client.getReplica, { diskId: 'd0' });
    t.equal(replica.appliedSequence, 1, `${c.name}: nothing applied`);
  }

  // Peak resident memory of the master target (Linux): the 4 GiB the lz4 prefix declared was never allocated.
  const peakKiB = Number(/VmHWM:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${mt.process.pid}/status`, 'utf8'))?.[1]);
  t.ok(peakKiB < 1024 * 1024, `the master target's peak resident memory is ${peakKiB} KiB, under 1 GiB`);

  // Paths outside the datastore roots, directly, through .. and through a symlink.
  const outside = path.join(dir, 'outside');
  fs.mkdirSync(outside);
  fs.symlinkSync(outside, path.join(root, 'link'));
  for (const bad of [path.join(outside, 'x.img'), path.join(root, '..', 'outside', 'y.img'), path.join(root, 'link', 'z.img'), path.join(root, 'link', 'newdir', 'w.img')]) {
    const error = await unary(client, client.createReplica, { diskId: 'd9', path: bad, diskBytes, epoch: 1 }).catch((e) => e);
    t.equal(error.code, status.PERMISSION_DENIED, `create at ${bad}: PERMISSION_DENIED`);
    t.match(error.details, /outside the datastore roots/);
    const point = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@1', path: bad }).catch((e) => e);
    t.equal(point.code, status.PERMISSION_DENIED, `materialise to ${bad}: PERMISSION_DENIED`);
  }
  t.same(fs.readdirSync(outside), [], 'nothing was created outside the roots');
  const relative = await unary(client, client.createReplica, { diskId: 'd9', path: 'relative.img', diskBytes, epoch: 1 }).catch((e) => e);
  t.equal(relative.code, status.INVALID_ARGUMENT, 'a relative path is refused');
  const existing = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@1', path: replicaPath }).catch((e) => e);
  t.equal(existing.code, status.ALREADY_EXISTS, 'materialising over an existing file (the replica) is refused');
  t.equal(sha256File(replicaPath), before, 'the replica is untouched');

  // The daemon still serves, and a good batch still applies.
  const next = await sendFrames(client, [{ diskId: 'd0', epoch: 2, sequence: 2, extents: [good], last: true }]);
  t.error(next.error, 'a good batch applies after all that');
  const statusAfter = await unary(client, client.getStatus, {});
  t.equal(statusAfter.replicaCount, 1);

  // A run of zeros over the data of batch 1: written as zeros, and the point before it keeps that data (before-images).
  const afterGood = fs.readFileSync(replicaPath);
  const zeroRun = await sendFrames(client, [{ diskId: 'd0', epoch: 2, sequence: 3, extents: [{ offset: 0, length: 8 * block, codec: 'CODEC_ZERO', data: Buffer.alloc(0), blockHashes: Buffer.alloc(0) }], last: true, recoveryPointKind: 'CRASH_CONSISTENT' }]);
  t.error(zeroRun.error, 'a CODEC_ZERO extent (no data, no hashes) applies');
  const zeroed = fs.readFileSync(replicaPath);
  t.ok(zeroed.subarray(0, 8 * block).equals(Buffer.alloc(8 * block)) && zeroed.subarray(8 * block).equals(afterGood.subarray(8 * block)), 'the replica holds zeros there and nothing else changed');
  const pointBefore = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: 'd0@1', path: path.join(root, 'before-zeros.img') });
  t.ok(fs.readFileSync(pointBefore.path).subarray(0, 8 * block).equals(Buffer.alloc(8 * block, 7)), 'the point before the run of zeros still materialises its data');
});

t.test(`a master target serves at most ${disksPerMasterTargetMax} disks`, async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { client, datastore: root } = await startMasterTarget(t, dir);
  for (let n = 0; n < disksPerMasterTargetMax; n++) {
    await unary(client, client.createReplica, { diskId: `disk${n}`, path: path.join(root, `disk${n}.img`), diskBytes: block, epoch: 1 });
  }
  const error = await unary(client, client.createReplica, { diskId: 'one-too-many', path: path.join(root, 'extra.img'), diskBytes: block, epoch: 1 }).catch((e) => e);
  t.equal(error.code, status.RESOURCE_EXHAUSTED);
  t.match(error.details, /already serves 60 disks/);
  t.notOk(fs.existsSync(path.join(root, 'extra.img')), 'no file was created');
});

t.test('a configured disk limit above the built-in one is refused at start-up', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const config = path.join(dir, 'mt.json');
  fs.writeFileSync(config, JSON.stringify({ disksMax: 61, datastoreRoots: [path.join(dir, 'ds')] }));
  const mt = await startDaemon('master-target', { args: ['--config', config, '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt')], expectExit: true });
  const exit = await mt.exited;
  t.equal(exit.code, 2, 'exits with the configuration error code');
  t.match(mt.stderr.join('\n'), /disksMax must be an integer from 1 to 60, got 61/);
});
