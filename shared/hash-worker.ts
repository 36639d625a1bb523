// Piscina worker: the CPU-heavy work of the data path, handed over in large
// tasks (a whole file range, or a batch of extents) because dispatching one
// small task per 64 KiB costs more than hashing it (MEASURED.md).
import fs from 'node:fs/promises';
import { move, transferableSymbol, valueSymbol } from 'piscina';
import { blockHashes, initHashing, hashBytes } from './hashing';
import { extentsOfPiece, type PreparedExtent } from './extents';
import { blockBytes } from './limits';

const readRunBytes = 4 * 1024 * 1024;
/** This worker's read buffers (a task runs at a time per worker): a whole-disk hash allocates nothing per run. */
const readBuffers = [Buffer.allocUnsafeSlow(readRunBytes), Buffer.allocUnsafeSlow(readRunBytes)];

export interface HashFileRangeTask {
  kind: 'hash-file-range';
  path: string;
  offset: number;
  length: number;
}

export interface PrepareExtentsTask {
  kind: 'prepare-extents';
  /** Pieces of a disk, whole blocks each, in order. */
  pieces: { offset: number; data: Uint8Array }[];
  compress: boolean;
  /** Keep all-zero blocks in the extents instead of dropping them. */
  keepZero?: boolean;
}

export type { PreparedExtent };

export interface PrepareExtentsResult {
  extents: PreparedExtent[];
  zeroBytes: number;
}

/** Reads [offset, offset+length) of a file in large runs and returns its block hashes. */
async function hashFileRange(task: HashFileRangeTask): Promise<Uint8Array> {
  const out = Buffer.alloc((task.length / blockBytes) * hashBytes);
  const handle = await fs.open(task.path, 'r');
  // Two buffers, kept by this worker from task to task: the next run is read (in libuv's thread pool) while this thread hashes the current one.
  const buffers = readBuffers;
  const read = async (done: number, buffer: Buffer): Promise<number> => {
    const want = Math.min(buffer.length, task.length - done);
    let got = 0;
    while (got < want) {
      const { bytesRead } = await handle.read(buffer, got, want - got, task.offset + done + got);
      if (bytesRead === 0) throw new Error(`${task.path} ended at ${task.offset + done + got}, expected ${task.offset + task.length} bytes`);
      got += bytesRead;
    }
    if (got % blockBytes !== 0) throw new Error(`read of ${got} bytes at ${task.offset + done} is not whole blocks`);
    return got;
  };
  try {
    let pending = read(0, buffers[0]);
    for (let done = 0, turn = 0; done < task.length; turn ^= 1) {
      const bytes = await pending;
      const next = done + bytes;
      pending = next < task.length ? read(next, buffers[turn ^ 1]) : Promise.resolve(0);
      blockHashes(buffers[turn].subarray(0, bytes), out, (done / blockBytes) * hashBytes);
      done = next;
    }
    await pending;
  } finally {
    await handle.close();
  }
  return out;
}

/**
 * Hashes every block of the pieces, drops all-zero blocks (thin disks stay
 * thin), and encodes each run of non-zero blocks as an extent. With keepZero,
 * each piece becomes one extent, zero blocks included (they compress to
 * almost nothing).
 */
function prepareExtents(task: PrepareExtentsTask): PrepareExtentsResult {
  const extents: PreparedExtent[] = [];
  let zeroBytes = 0;
  // One ArrayBuffer for every piece's hashes (not Node's shared pool), so it moves back to the main thread in one transfer.
  const allHashes = Buffer.from(new ArrayBuffer((task.pieces.reduce((sum, piece) => sum + piece.data.length, 0) / blockBytes) * hashBytes));
  let hashesAt = 0;
  for (const piece of task.pieces) {
    const data = Buffer.from(piece.data.buffer, piece.data.byteOffset, piece.data.byteLength);
    const hashes = blockHashes(data, allHashes.subarray(hashesAt, hashesAt + (data.length / blockBytes) * hashBytes));
    hashesAt += hashes.length;
    const first = extents.length;
    zeroBytes += extentsOfPiece(piece.offset, data, hashes, task.compress, task.keepZero ?? false, extents);
    // Compressed extents move back to the main thread: give each a buffer of its own (raw ones are views of the piece, which moves back whole).
    for (let index = first; index < extents.length; index++) if (extents[index].codec !== 'CODEC_NONE') extents[index].data = Uint8Array.from(extents[index].data);
  }
  return { extents, zeroBytes };
}

export default async function run(task: HashFileRangeTask | PrepareExtentsTask): Promise<unknown> {
  await initHashing();
  if (task.kind === 'hash-file-range') {
    const hashes = await hashFileRange(task);
    return move(hashes);
  }
  const result = prepareExtents(task);
  // Piscina's Transferable protocol: the result's buffers move to the main thread without a copy.
  // move() marks it movable: without that mark piscina structured-clones the wrapper and the result arrives as {}.
  return move({
    [transferableSymbol]: [...new Set(result.extents.flatMap((extent) => [extent.data.buffer, extent.blockHashes.buffer]))],
    [valueSymbol]: result,
  });
}
