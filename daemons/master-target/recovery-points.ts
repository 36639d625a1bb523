// Recovery points: listing, selecting, and materialising any point to a new disk file,
// or over a machine's disk (replace_existing, failover).
// Materialising point P copies the replica (thin: zero runs stay holes) and,
// for every block changed after P, writes back the before-image from the first
// batch after P. Its cost grows with the changes since P, not the disk size
// (beyond the copy).
// Over an existing disk, the point is written to a temporary file beside it,
// fdatasynced and renamed over it (then the directory is fsynced): the disk is
// the old one or the whole point, never a mix. A repeated call (after a crash
// or a failed attempt) simply does it again; the temporary file is rewritten.
import fs from 'node:fs';
import path from 'node:path';
import { blockBytes, extentBytesMax } from '../../shared/limits';
import { failedPrecondition, invalidArgument, notFound } from '../../shared/errors';
import { isZero } from '../../shared/hashing';
import { failpoint } from '../../shared/failpoints';
import type { MaterialiseProgress } from '../../generated/drplane/v1/MaterialiseProgress';
import { syncDirectory, writeAll } from '../../shared/file-io';
import { openFlags } from '../../shared/open-beneath';
import type { RecoveryPoint } from '../../generated/drplane/v1/RecoveryPoint';
import type { PointSelector__Output } from '../../generated/drplane/v1/PointSelector';
import { besideTemporary, existsError } from './datastore';
import { withPointDefaults, type RecoveryPointRecord } from './retention-store';
import type { Replicas } from './replicas';
import type { Retention } from './retention';

const copyRunBytes = 4 * 1024 * 1024;

export function toProtoPoint(point: RecoveryPointRecord): RecoveryPoint {
  return { ...withPointDefaults(point) };
}

export interface SelectRequest {
  diskId: string;
  selector: PointSelector__Output;
  pointId: string;
  timeMs: number;
}

export interface MaterialiseResult {
  path: string;
  point: RecoveryPointRecord;
  diskBytes: number;
  beforeImageBytes: number;
  durationMs: number;
}

export class RecoveryPoints {
  /** Files being written by a materialisation now (resolved paths): nothing else may write or delete them. */
  private readonly materialising = new Set<string>();
  /** How far each of those has got (GetMaterialiseProgress). */
  private readonly progress = new Map<string, MaterialiseProgress>();

  constructor(
    private readonly replicas: Replicas,
    private readonly retention: Retention,
  ) {}

  /** How far the materialisation writing `requestedPath` has got; running false when none does now. */
  materialiseProgress(requestedPath: string): MaterialiseProgress {
    const target = this.replicas.datastores.plannedPath(requestedPath);
    return { ...(this.progress.get(target) ?? { path: target, recoveryPointId: '', running: false, diskBytes: 0, bytesCopied: 0, beforeImageBytes: 0, startedTimeMs: 0 }) };
  }

  /** Whether a materialisation is writing this file (a resolved path) now. */
  isMaterialising(filePath: string): boolean {
    return this.materialising.has(filePath);
  }

  /** Points at or above the pruner's floor: those below are being deleted. A retired replica has none. */
  list(diskId: string): RecoveryPointRecord[] {
    if (this.replicas.get(diskId).retired) return [];
    const floor = this.retention.floor(diskId);
    return [...this.replicas.store.pointsFrom(diskId, floor)];
  }

  oldest(diskId: string): RecoveryPointRecord | undefined {
    return this.replicas.store.oldestPoint(diskId, this.retention.floor(diskId));
  }

  newest(diskId: string): RecoveryPointRecord | undefined {
    return this.replicas.store.newestPoint(diskId, this.retention.floor(diskId));
  }

  /**
   * Chooses a point (docs/continuous-replication.md, Points and selectors).
   * Scans from the newest point backwards: the wanted point is nearly always
   * among the newest.
   */
  select(request: SelectRequest): RecoveryPointRecord {
    const { selector } = request;
    if (selector === 'BY_ID') {
      const point = this.find(request.pointId);
      if (request.diskId && request.diskId !== point.diskId) throw invalidArgument(`point ${request.pointId} belongs to disk ${point.diskId}, not ${request.diskId}`);
      return point;
    }
    if (selector === 'LATEST') throw invalidArgument('latest drains the process server: ask the configuration server (drctl points --select latest)');
    const diskId = request.diskId;
    this.replicas.live(diskId);
    const newest = this.newest(diskId);
    if (!newest) throw notFound(`disk ${diskId} has no recovery point yet (its first sync has not finished)`);
    switch (selector) {
      case 'LATEST_PROCESSED':
        return newest;
      case 'LATEST_APP_CONSISTENT':
        return this.newestMatching(diskId, (point) => point.kind === 'APP_CONSISTENT') ?? this.noMatch(diskId, 'app-consistent');
      case 'LATEST_CRASH_CONSISTENT':
        return this.newestMatching(diskId, (point) => point.kind === 'CRASH_CONSISTENT') ?? this.noMatch(diskId, 'crash-consistent');
      case 'AT_OR_BEFORE': {
        const timeMs = request.timeMs;
        if (!Number.isSafeInteger(timeMs) || timeMs <= 0) throw invalidArgument(`time_ms ${timeMs} is not a time: give unix milliseconds`);
        const point = this.newestMatching(diskId, (candidate) => candidate.sourceTimeMs <= timeMs);
        if (point) return point;
        const oldest = this.oldest(diskId)!;
        throw notFound(`disk ${diskId} has no recovery point at or before ${new Date(timeMs).toISOString()} (${timeMs}): the oldest it holds is ${oldest.id} at ${new Date(oldest.sourceTimeMs).toISOString()} (${oldest.sourceTimeMs})`);
      }
      default:
        throw invalidArgument(`selector ${selector} is not one of LATEST_PROCESSED, LATEST_APP_CONSISTENT, LATEST_CRASH_CONSISTENT, BY_ID, AT_OR_BEFORE`);
    }
  }

  private newestMatching(diskId: string, matches: (point: RecoveryPointRecord) => boolean): RecoveryPointRecord | undefined {
    const floor = this.retention.floor(diskId);
    for (const point of this.replicas.store.pointsNewestFirst(diskId, floor)) {
      if (matches(point)) return point;
    }
    return undefined;
  }

  private noMatch(diskId: string, kind: string): never {
    throw notFound(`disk ${diskId} holds no ${kind} recovery point (none taken, or all pruned): choose another selector`);
  }

  find(pointId: string): RecoveryPointRecord {
    const at = pointId.lastIndexOf('@');
    const sequence = Number(pointId.slice(at + 1));
    if (at <= 0 || !Number.isSafeInteger(sequence) || sequence < 1) throw invalidArgument(`recovery point id ${JSON.stringify(pointId)} is not of the form <disk_id>@<sequence>`);
    const diskId = pointId.slice(0, at);
    this.replicas.live(diskId);
    const point = sequence < this.retention.floor(diskId) ? undefined : this.replicas.store.point(diskId, sequence);
    if (!point) throw notFound(`recovery point ${pointId} does not exist (pruned, or never made): list the points of disk ${diskId}`);
    return point;
  }

  async materialise(pointId: string, requestedPath: string, replaceExisting = false): Promise<MaterialiseResult> {
    const started = Date.now();
    const point = this.find(pointId);
    // Pinned in the same tick as found: the pruner keeps the point and its before-images until unpinned.
    const unpin = this.retention.pin(point.diskId, point.sequence);
    try {
      // Every check runs before anything is written, directories included.
      const target = this.replicas.datastores.plannedPath(requestedPath);
      if (!replaceExisting && fs.existsSync(target)) throw existsError(target);
      const owner = this.replicas.replicaAt(target);
      if (owner) throw failedPrecondition(`${target} is the replica file of disk ${owner.diskId}: a recovery point is never written over a replica (materialise to the machine's disk or a new path)`);
      if (this.materialising.has(target)) throw failedPrecondition(`${target} is being materialised by another call now: wait for it to finish`);
      this.materialising.add(target);
      this.progress.set(target, { path: target, recoveryPointId: point.id, running: true, diskBytes: 0, bytesCopied: 0, beforeImageBytes: 0, startedTimeMs: started });
      try {
        await this.replicas.datastores.resolveNewFile(requestedPath);
        return replaceExisting ? await this.materialiseOver(point, target, started) : await this.materialiseNew(point, target, started);
      } finally {
        this.materialising.delete(target);
        this.progress.delete(target);
      }
    } finally {
      unpin();
    }
  }

  /** To a new file: refused if the path exists; a failed attempt removes what it wrote. */
  private async materialiseNew(point: RecoveryPointRecord, target: string, started: number): Promise<MaterialiseResult> {
    const out = await this.replicas.datastores.open(target, openFlags.createNew, 0o600).catch((error: NodeJS.ErrnoException) => {
      throw error.code === 'EEXIST' ? existsError(target) : error;
    });
    try {
      const written = await this.writePoint(point, out, this.progress.get(target));
      await out.sync();
      // The new file's entry too: without it a power cut could lose the whole restored disk.
      await syncDirectory(path.dirname(target));
      return { path: target, point, ...written, durationMs: Date.now() - started };
    } catch (error) {
      await out.close().catch(() => undefined);
      // A half-written copy never stands as a recovery point's contents.
      await fs.promises.rm(target, { force: true });
      throw error;
    } finally {
      await out.close().catch(() => undefined);
    }
  }

  /** Over a machine's disk (a regular file, or missing): a temporary file beside it, made durable, renamed over it. */
  private async materialiseOver(point: RecoveryPointRecord, target: string, started: number): Promise<MaterialiseResult> {
    const old = await fs.promises.lstat(target).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return undefined;
      throw error;
    });
    if (old && !old.isFile()) throw invalidArgument(`${target} is not a regular file: a recovery point replaces only a disk image file`);
    const temporary = besideTemporary(target, 'materialise');
    // Left by a crash or a failed attempt: written again from the start.
    await fs.promises.rm(temporary, { force: true });
    const out = await this.replicas.datastores.open(temporary, openFlags.createNew, old ? old.mode & 0o777 : 0o600);
    try {
      const written = await this.writePoint(point, out, this.progress.get(target));
      await out.datasync();
      await out.close();
      await failpoint('materialise.temporary-written');
      await fs.promises.rename(temporary, target);
      await syncDirectory(path.dirname(target));
      return { path: target, point, ...written, durationMs: Date.now() - started };
    } catch (error) {
      await out.close().catch(() => undefined);
      await fs.promises.rm(temporary, { force: true }).catch(() => undefined);
      throw error;
    }
  }

  /** Writes the disk as it was at the point into `out` (an empty file). */
  private async writePoint(point: RecoveryPointRecord, out: fs.promises.FileHandle, progress?: MaterialiseProgress): Promise<{ diskBytes: number; beforeImageBytes: number }> {
    let beforeImageBytes = 0;
    // The copy runs under the disk's lock so it sees the replica at one batch boundary.
    const { record, appliedSequence } = await this.replicas.lock(point.diskId).runExclusive(async () => {
      const current = this.replicas.live(point.diskId);
      if (progress) progress.diskBytes = current.diskBytes;
      await copySparse(await this.replicas.file(current), out, current.diskBytes, (copied) => progress && (progress.bytesCopied = copied));
      return { record: current, appliedSequence: current.appliedSequence };
    });
    await failpoint('materialise.replica-copied');
    // Before-images of batches after P, oldest first: the first one that covers a block holds its state at P.
    const restored = new Uint8Array(Math.ceil(record.diskBytes / blockBytes / 8));
    const zeros = Buffer.alloc(extentBytesMax);
    const store = this.replicas.store;
    for (const image of store.beforeImagesBetween(point.diskId, point.sequence, appliedSequence)) {
      const offset = image.offset;
      const length = image.zero ? image.length : image.data.length;
      for (let block = 0; block < length / blockBytes; block++) {
        const diskBlock = offset / blockBytes + block;
        if (restored[diskBlock >> 3] & (1 << (diskBlock & 7))) continue;
        restored[diskBlock >> 3] |= 1 << (diskBlock & 7);
        const data = image.zero ? zeros.subarray(0, blockBytes) : image.data.subarray(block * blockBytes, (block + 1) * blockBytes);
        await writeAll(out, data, diskBlock * blockBytes, 'materialise.write');
        beforeImageBytes += blockBytes;
        if (progress) progress.beforeImageBytes = beforeImageBytes;
      }
    }
    return { diskBytes: record.diskBytes, beforeImageBytes };
  }
}

/** Copies a file, leaving holes where the source reads as zeros. */
async function copySparse(from: fs.promises.FileHandle, to: fs.promises.FileHandle, bytes: number, copied: (bytes: number) => void): Promise<void> {
  await to.truncate(bytes);
  const buffer = Buffer.allocUnsafe(copyRunBytes);
  for (let offset = 0; offset < bytes; ) {
    const { bytesRead } = await from.read(buffer, 0, Math.min(buffer.length, bytes - offset), offset);
    if (bytesRead === 0) throw new Error(`replica ended at ${offset} of ${bytes} bytes`);
    for (let run = 0; run < bytesRead; run += extentBytesMax) {
      const piece = buffer.subarray(run, Math.min(run + extentBytesMax, bytesRead));
      // Every byte or a failure: a short write would leave a hole that reads as zeros in the point.
      if (!isZero(piece)) await writeAll(to, piece, offset + run, 'materialise.write');
    }
    offset += bytesRead;
    copied(offset);
  }
}
