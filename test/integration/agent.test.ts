// The real agent process: ReadDisk returns the source bytes exactly (zero
// pieces left out with skip_zero), OpenHashTree's root equals a tree built
// here, and a path that is not configured is refused with PERMISSION_DENIED.
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import t from 'tap';
import { createClient, unary } from '../../shared/grpc';
import { v1 } from '../../shared/proto';
import { HashTree } from '../../shared/hash-tree';
import { blockHashes, initHashing } from '../../shared/hashing';
import { blockBytes, extentBytesMax } from '../../shared/limits';
import type { DiskData__Output } from '../../generated/drplane/v1/DiskData';
import { startDaemon, tempDir } from '../helpers/daemons';
import { createImage } from '../helpers/disks';

const MiB = 1024 * 1024;

t.test('agent', async (t) => {
  await initHashing();
  const dir = tempDir();
  const seed = 42;
  t.comment(`seed ${seed}`);
  const image = path.join(dir, 'source.img');
  // 24 MiB: 4 MiB of data, 4 MiB of zeros, ...; then 3 odd blocks of data inside a zero region.
  createImage(image, 24 * MiB, seed);
  const fd = fs.openSync(image, 'r+');
  fs.writeSync(fd, Buffer.alloc(3 * blockBytes, 7), 0, 3 * blockBytes, 5 * MiB + 8 * blockBytes);
  fs.closeSync(fd);
  const source = fs.readFileSync(image);

  const agent = await startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'), '--disk', image] });
  const client = createClient(v1.Agent, agent.address);
  t.teardown(async () => {
    client.close();
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  const read = (request: { path: string; ranges: { offset: number; length: number }[]; skipZero: boolean; packSmallPieces?: boolean }) =>
    new Promise<DiskData__Output[]>((resolve, reject) => {
      const pieces: DiskData__Output[] = [];
      const stream = client.readDisk(request);
      stream.on('data', (piece: DiskData__Output) => pieces.push(piece));
      stream.on('error', reject);
      stream.on('end', () => resolve(pieces));
    });

  t.test('DescribeDisks gives the size', async (t) => {
    const { disks } = await unary(client, client.describeDisks, { paths: [] });
    t.same(disks, [{ path: image, diskBytes: 24 * MiB, blockDevice: false }]);
  });

  t.test('ReadDisk with skip_zero returns the non-zero pieces byte for byte', async (t) => {
    const pieces = await read({ path: image, ranges: [{ offset: 0, length: 24 * MiB }], skipZero: true });
    const rebuilt = Buffer.alloc(source.length);
    const problems: string[] = [];
    let previousEnd = 0;
    for (const piece of pieces) {
      const end = piece.offset + piece.data.length;
      if (piece.offset < previousEnd) problems.push(`piece at ${piece.offset} comes before the end of the previous one`);
      if (piece.data.length > extentBytesMax || Math.floor(piece.offset / MiB) !== Math.floor((end - 1) / MiB)) problems.push(`piece at ${piece.offset} crosses a MiB boundary`);
      if (piece.data.equals(Buffer.alloc(piece.data.length))) problems.push(`piece at ${piece.offset} is all zero`);
      piece.data.copy(rebuilt, piece.offset);
      previousEnd = end;
    }
    t.same(problems, [], 'pieces in order, inside one MiB of the disk each, none all zero');
    t.ok(rebuilt.equals(source), 'the pieces and the zeros left out make the image');
    t.equal(pieces.reduce((sum, piece) => sum + piece.data.length, 0), 13 * MiB, '12 MiB of data regions plus the MiB with the odd blocks');
  });

  t.test('ReadDisk without skip_zero returns every byte of unaligned ranges', async (t) => {
    const ranges = [{ offset: MiB - blockBytes, length: 2 * blockBytes }, { offset: 4 * MiB + blockBytes, length: 3 * MiB }];
    const pieces = await read({ path: image, ranges, skipZero: false });
    const got = Buffer.concat(pieces.map((piece) => piece.data));
    const want = Buffer.concat(ranges.map((range) => source.subarray(range.offset, range.offset + range.length)));
    t.ok(got.equals(want));
    t.same(pieces.map((piece) => piece.offset), [MiB - blockBytes, MiB, 4 * MiB + blockBytes, 5 * MiB, 6 * MiB, 7 * MiB]);
  });

  t.test('ReadDisk with pack_small_pieces packs scattered blocks several to a message, in order, with their hashes', async (t) => {
    // 600 scattered single blocks (a delta's shape), a 1 MiB range (a large piece, which goes alone), then 300 more:
    // the packed extents must keep the order across the large piece.
    const scattered = (from: number, count: number) => Array.from({ length: count }, (_, index) => ({ offset: from + index * 2 * blockBytes, length: blockBytes }));
    const ranges = [...scattered(0, 600), { offset: 8 * MiB, length: MiB }, ...scattered(12 * MiB, 300)];
    const messages = await read({ path: image, ranges, skipZero: false, packSmallPieces: true });
    const pieces = messages.flatMap((message) => (message.extents.length > 0 ? message.extents : [message]));
    t.same(pieces.map((piece) => [piece.offset, piece.data.length]), ranges.map((range) => [range.offset, range.length]), 'every range once, in order');
    t.ok(pieces.every((piece) => piece.data.equals(source.subarray(piece.offset, piece.offset + piece.data.length))), 'the bytes of the source');
    t.ok(pieces.every((piece) => piece.blockHashes.equals(blockHashes(piece.data))), 'each with its block hashes');
    // About 4.1 KiB a packed block: 600 blocks fill three packs of 1 MiB, 300 two, and the large piece goes alone.
    t.equal(messages.length, 6, `${messages.length} messages for ${pieces.length} pieces`);
    t.ok(messages.every((message) => message.extents.length === 0 || (message.data.length === 0 && message.offset === 0)), 'a packed message carries only extents');
    const unpacked = await read({ path: image, ranges: ranges.slice(0, 10), skipZero: false });
    t.equal(unpacked.length, 10, 'without the flag, a message per piece (what an older process server expects)');
    t.ok(unpacked.every((message) => message.extents.length === 0));
  });

  t.test('OpenHashTree root equals a tree built from the file', async (t) => {
    const info = await unary(client, client.openHashTree, { diskId: 'd1', path: image });
    const local = new HashTree(blockHashes(source));
    t.ok(info.rootHash.equals(local.root), 'same root');
    t.equal(info.leafCount, source.length / blockBytes);
    t.equal(info.height, local.height);
    t.equal(info.diskBytes, source.length);
    const { hashes } = await unary(client, client.getHashes, { treeId: info.treeId, level: 0, parents: [0, 5] });
    t.ok(hashes.equals(local.children(0, [0, 5])), 'GetHashes answers as the local tree');
    await unary(client, client.closeHashTree, { treeId: info.treeId });
    await t.rejects(unary(client, client.getHashes, { treeId: info.treeId, level: 0, parents: [0] }), { code: grpc.status.NOT_FOUND });
  });

  t.test('requests outside the configuration or the disk are refused', async (t) => {
    await t.rejects(read({ path: '/etc/passwd', ranges: [{ offset: 0, length: blockBytes }], skipZero: false }), { code: grpc.status.PERMISSION_DENIED, details: /\/etc\/passwd/ });
    await t.rejects(unary(client, client.openHashTree, { diskId: 'x', path: path.join(dir, 'other.img') }), { code: grpc.status.PERMISSION_DENIED, details: /other\.img/ });
    await t.rejects(read({ path: image, ranges: [{ offset: 24 * MiB, length: blockBytes }], skipZero: false }), { code: grpc.status.OUT_OF_RANGE });
    await t.rejects(read({ path: image, ranges: [{ offset: 100, length: blockBytes }], skipZero: false }), { code: grpc.status.INVALID_ARGUMENT });
  });

  t.test('GetStatus reports the disks', async (t) => {
    const status = await unary(client, client.getStatus, {});
    t.equal(status.name, 'agent1');
    t.same(status.diskPaths, [image]);
    t.ok(status.bytesRead >= 24 * MiB);
  });
});
