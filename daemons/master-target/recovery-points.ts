// Recovery points: listing, and materialising any point to a new disk file.
// Materialising point P copies the replica (thin: zero runs stay holes) and,
// for every block changed after P, writes back the before-image from the first
// batch after P. Its cost grows with the changes since P, not the disk size
// (beyond the copy).
import fs from 'node:fs';
import { blockBytes, extentBytesMax } from '../../shared/limits';
import { invalidArgument, notFound } from '../../shared/errors';
import { isZero } from '../../shared/hashing';
import type { RecoveryPoint } from '../../generated/drplane/v1/RecoveryPoint';
import { existsError } from './datastore';
import { decodeBeforeImage, type RecoveryPointRecord } from './retention-store';
import type { Replicas } from './replicas';

const copyRunBytes = 4 * 1024 * 1024;

export function toProtoPoint(point: RecoveryPointRecord): RecoveryPoint {
  return { ...point };
}

export class RecoveryPoints {
  constructor(private readonly replicas: Replicas) {}

  list(diskId: string): RecoveryPointRecord[] {
    this.replicas.get(diskId);
    return [...this.replicas.store.points.getRange({ start: [diskId, 0], end: [diskId, Number.MAX_SAFE_INTEGER] })].map((entry) => entry.value);
  }

  find(pointId: string): RecoveryPointRecord {
    const at = pointId.lastIndexOf('@');
    const sequence = Number(pointId.slice(at + 1));
    if (at <= 0 || !Number.isSafeInteger(sequence) || sequence < 1) throw invalidArgument(`recovery point id ${JSON.stringify(pointId)} is not of the form <disk_id>@<sequence>`);
    const diskId = pointId.slice(0, at);
    this.replicas.get(diskId);
    const point = this.replicas.store.points.get([diskId, sequence]);
    if (!point) throw notFound(`recovery point ${pointId} does not exist (pruned, or never made): list the points of disk ${diskId}`);
    return point;
  }

  async materialise(pointId: string, requestedPath: string): Promise<{ path: string; point: RecoveryPointRecord; diskBytes: number; beforeImageBytes: number; durationMs: number }> {
    const started = Date.now();
    const point = this.find(pointId);
    const target = this.replicas.datastores.resolveNewFile(requestedPath);
    const out = await fs.promises.open(target, 'wx', 0o600).catch((error: NodeJS.ErrnoException) => {
      throw error.code === 'EEXIST' ? existsError(target) : error;
    });
    let beforeImageBytes = 0;
    try {
      // The copy runs under the disk's lock so it sees the replica at one batch boundary.
      const { record, appliedSequence } = await this.replicas.lock(point.diskId).runExclusive(async () => {
        const current = this.replicas.get(point.diskId);
        await copySparse(await this.replicas.file(current), out, current.diskBytes);
        return { record: current, appliedSequence: current.appliedSequence };
      });
      // Before-images of batches after P, oldest first: the first one that covers a block holds its state at P.
      const restored = new Uint8Array(Math.ceil(record.diskBytes / blockBytes / 8));
      const zeros = Buffer.alloc(extentBytesMax);
      const store = this.replicas.store;
      for (const { value } of store.beforeImages.getRange({ start: [point.diskId, point.sequence + 1, 0], end: [point.diskId, appliedSequence + 1, 0] })) {
        const image = decodeBeforeImage(value);
        const offset = image.offset;
        const length = image.zero ? image.length : image.data.length;
        for (let block = 0; block < length / blockBytes; block++) {
          const diskBlock = offset / blockBytes + block;
          if (restored[diskBlock >> 3] & (1 << (diskBlock & 7))) continue;
          restored[diskBlock >> 3] |= 1 << (diskBlock & 7);
          const data = image.zero ? zeros.subarray(0, blockBytes) : image.data.subarray(block * blockBytes, (block + 1) * blockBytes);
          await out.write(data, 0, blockBytes, diskBlock * blockBytes);
          beforeImageBytes += blockBytes;
        }
      }
      await out.sync();
      return { path: target, point, diskBytes: record.diskBytes, beforeImageBytes, durationMs: Date.now() - started };
    } catch (error) {
      await out.close().catch(() => undefined);
      // A half-written copy never stands as a recovery point's contents.
      await fs.promises.rm(target, { force: true });
      throw error;
    } finally {
      await out.close().catch(() => undefined);
    }
  }
}

/** Copies a file, leaving holes where the source reads as zeros. */
async function copySparse(from: fs.promises.FileHandle, to: fs.promises.FileHandle, bytes: number): Promise<void> {
  await to.truncate(bytes);
  const buffer = Buffer.allocUnsafe(copyRunBytes);
  for (let offset = 0; offset < bytes; ) {
    const { bytesRead } = await from.read(buffer, 0, Math.min(buffer.length, bytes - offset), offset);
    if (bytesRead === 0) throw new Error(`replica ended at ${offset} of ${bytes} bytes`);
    for (let run = 0; run < bytesRead; run += extentBytesMax) {
      const piece = buffer.subarray(run, Math.min(run + extentBytesMax, bytesRead));
      if (!isZero(piece)) await to.write(piece, 0, piece.length, offset + run);
    }
    offset += bytesRead;
  }
}
