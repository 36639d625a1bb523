// Goal: the master target's memory for open hash trees does not grow with the
// size of the replica. A 16 GiB replica with one written block in every MiB
// (every hash page of its index exists) used to cost 32 MiB of leaves per open
// tree; the tree now keeps only the levels above the leaves (2 MiB) and reads
// leaves from the index when asked. Measured as the daemon's anonymous memory
// and peak RSS (VmHWM, reset before the opens), never as time.
import fs from 'node:fs';
import t from 'tap';
import { startMasterTarget, makeExtent, sendFrames, unary } from '../helpers/clients';
import { tempDir } from '../helpers/daemons';
import { randomBytes, seededRandom } from '../helpers/disks';
import { blockBytes, hashTreeFanout } from '../../shared/limits';
import path from 'node:path';

const MiB = 1024 * 1024;
const diskBytes = 16 * 1024 * MiB;
const treesOpened = 4;

function status(pid: number, field: string): number {
  const match = new RegExp(`${field}:\\s+(\\d+) kB`).exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(match![1]) * 1024;
}

t.test('open hash trees of a large written replica cost the levels above the leaves, not the leaves', async (t) => {
  const seed = 16;
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { mt, client, datastore } = await startMasterTarget(t, dir);
  const diskId = 'large';
  await unary(client, client.createReplica, { diskId, path: path.join(datastore, 'large.img'), diskBytes, epoch: 1 });

  // One 4 KiB block in every MiB of the disk: 16,384 extents in 4 batches of 4 frames.
  const extentsPerFrame = 1024;
  const framesPerBatch = 4;
  let sequence = 0;
  for (let block = 0; block < diskBytes / MiB; ) {
    sequence++;
    const frames = [];
    for (let frame = 0; frame < framesPerBatch; frame++) {
      const extents = [];
      for (let index = 0; index < extentsPerFrame; index++, block++) extents.push(await makeExtent(block * MiB, randomBytes(blockBytes, random), false));
      frames.push({ diskId, epoch: 1, sequence, extents, last: frame === framesPerBatch - 1 });
    }
    const sent = await sendFrames(client, frames);
    t.notOk(sent.error, `batch ${sequence} applied${sent.error ? `: ${sent.error.details}` : ''}`);
  }

  const pid = mt.process.pid!;
  fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
  const before = status(pid, 'VmRSS');
  const anonBefore = status(pid, 'RssAnon');
  const fileBefore = status(pid, 'RssFile');
  const roots = new Set<string>();
  for (let opened = 0; opened < treesOpened; opened++) {
    const info = await unary(client, client.openHashTree, { diskId });
    roots.add(info.rootHash.toString('hex'));
    t.equal(Number(info.leafCount), diskBytes / blockBytes);
    // Leaves of the first and the last parent: read from the index, and not all zero (a block is written in each MiB).
    const { hashes } = await unary(client, client.getHashes, { treeId: info.treeId, level: 0, parents: [0, diskBytes / blockBytes / hashTreeFanout - 1] });
    t.equal(hashes.length, 2 * hashTreeFanout * 8);
    t.ok(hashes.subarray(0, 8).readBigUInt64LE() !== 0n, 'the first block holds data');
  }
  const grown = status(pid, 'VmHWM') - before;
  t.comment(`RssAnon +${((status(pid, 'RssAnon') - anonBefore) / MiB).toFixed(1)} MiB, RssFile +${((status(pid, 'RssFile') - fileBefore) / MiB).toFixed(1)} MiB, VmHWM +${(grown / MiB).toFixed(1)} MiB`);
  t.equal(roots.size, 1, 'every open gives the same root');
  // Leaves in memory were 4 x 32 MiB of the heap (measured before this change: RssAnon +123 MiB, VmHWM +216 MiB);
  // the levels above them are 4 x about 2 MiB, and the garbage of reading the index comes and goes (0-25 MiB). Reading the index maps its LMDB pages into the process
  // (file-backed, page cache the kernel can reclaim, read once whatever the number of trees), in VmHWM too.
  const anonGrown = status(pid, 'RssAnon') - anonBefore;
  t.ok(anonGrown < 48 * MiB, `the heap grew by ${(anonGrown / MiB).toFixed(1)} MiB for ${treesOpened} open trees`);
  t.ok(grown < 128 * MiB, `peak RSS grew by ${(grown / MiB).toFixed(1)} MiB for ${treesOpened} open trees of a ${diskBytes / 1024 / MiB} GiB replica`);
});
