// The before-images of a batch (apply.ts, step 2): the old bytes of every
// range the batch overwrites, read from the replica before it is touched, into
// reused slabs, inline while the replica's pages are cached and in the thread
// pool once they come from the disk.
import { readAll, readAllSync } from '../../shared/file-io';
import type { FileHandle } from 'node:fs/promises';
import { DrplaneError, ErrorCode } from '../../shared/errors';
import { failpoint } from '../../shared/failpoints';

/**
 * A before-image read slower than this came from the disk, not the page cache: a fixed part (a disk read of 4 KiB
 * takes 35-100 us on these VMs, a cached one 2-5 us) and the copy of a cached read at 4 GB/s. A replica's pages are
 * mostly not cached (it is larger than memory, and large writes bypass the cache with O_DIRECT): a continuous run
 * after the initial sync spent 14-30 % of the master target's main thread blocked in such reads.
 */
const cachedReadFixedNs = 30_000;
const cachedReadBytesPerNs = 4;
/** Before-image reads of one batch in flight at once in the thread pool, once they come from the disk. */
const beforeImageReadsInFlightMax = 8;
/** A disk whose before-images come from the disk tries one inline read again every this many batches. */
const inlineProbeEveryBatches = 16;

/**
 * Where a disk's before-images came from lately: its next batch starts in the thread pool while they came from the
 * disk (one batch's inline read a disk read, each batch of a continuous run), and tries inline again now and then.
 */
export class BeforeImageSource {
  private batchesFromDisk = 0;
  fromDisk = false;

  /** Whether the next batch starts with inline reads. */
  startInline(): boolean {
    if (!this.fromDisk) return true;
    return ++this.batchesFromDisk % inlineProbeEveryBatches === 0;
  }

  noted(fromDisk: boolean): void {
    if (fromDisk && !this.fromDisk) this.batchesFromDisk = 0;
    this.fromDisk = fromDisk;
  }
}

/**
 * The before-image reads of one batch. A read starts synchronous (a page-cache read of a few KiB costs microseconds,
 * a trip through the thread pool far more, and a delta reads thousands); once one takes as long as a disk read, the
 * rest of the batch goes to the thread pool, several at a time, so the disk works on several and the event loop
 * on the batch's frames meanwhile. The old data goes into the buffer the caller gives (a view of a reused slab).
 */
export class BeforeImageReads {
  private fromDisk: boolean;
  private readonly inFlight = new Set<Promise<void>>();
  /** The first read that failed: the batch fails with it (its before-image would be missing). */
  private failure: unknown;

  constructor(
    private readonly file: FileHandle,
    private readonly replicaPath: string,
    private readonly source: BeforeImageSource,
  ) {
    this.fromDisk = !source.startInline();
  }

  /** Reads `into.length` bytes at `offset` into `into`, now or later (finished() waits for every one). */
  async read(offset: number, into: Buffer): Promise<void> {
    if (!this.fromDisk) {
      const startedNs = process.hrtime.bigint();
      // A fault test slows this read (sleep) to take the thread pool's path.
      await failpoint('apply.before-image-read');
      try {
        this.readSync(into, offset);
      } catch (error) {
        throw this.readError(error);
      }
      this.fromDisk = Number(process.hrtime.bigint() - startedNs) > cachedReadFixedNs + into.length / cachedReadBytesPerNs;
      return;
    }
    while (this.inFlight.size >= beforeImageReadsInFlightMax) await Promise.race(this.inFlight);
    if (this.failure) throw this.readError(this.failure);
    const read: Promise<void> = this.readAsync(into, offset)
      .catch((error: unknown) => {
        this.failure ??= error;
      })
      .finally(() => this.inFlight.delete(read));
    this.inFlight.add(read);
  }

  /** Waits for every read in flight, failed or not: the buffers they read into may then be reused. */
  async settled(): Promise<void> {
    await Promise.allSettled([...this.inFlight]);
  }

  /** Waits for every read; throws the first failure, so no batch is committed with a before-image missing. */
  async finished(): Promise<void> {
    await Promise.all([...this.inFlight]);
    if (this.failure) throw this.readError(this.failure);
    this.source.noted(this.fromDisk);
  }

  /** Nothing of the batch is written yet when a before-image cannot be read: the caller may send it again. */
  private readError(error: unknown): DrplaneError {
    if (error instanceof DrplaneError) return error;
    const reason = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
    return new DrplaneError(ErrorCode.Internal, `cannot read replica ${this.replicaPath} for the batch's before-images (${reason}); nothing of the batch was applied: send it again`, { cause: error });
  }

  private readonly pastEnd = (at: number) => new Error(`short read of replica ${this.replicaPath} at ${at}`);

  private readSync(buffer: Buffer, offset: number): void {
    readAllSync(this.file.fd, buffer, offset, this.pastEnd);
  }

  private async readAsync(buffer: Buffer, offset: number): Promise<void> {
    await failpoint('apply.before-image-read-async');
    await readAll(this.file, buffer, offset, this.pastEnd);
  }
}

/** A slab is a whole number of these: a batch a little larger than the last one reuses its slab. */
const beforeImageSlabUnitBytes = 4 * 1024 * 1024;
/** Kept slabs are let go after this long without a batch: an idle master target holds no batch-sized buffers. */
const beforeImageSlabsIdleMs = 30_000;

/**
 * Reused buffers for batches' before-images: a continuous run overwrites about every byte it writes, and a buffer
 * per image (and a copy into its encoding) made V8 collect for external memory several times a second. One slab is
 * kept (the largest), in whole units of beforeImageSlabUnitBytes; a second batch applying at once (another disk)
 * gets one of its own for its time.
 */
export class Slabs {
  private kept_: Buffer | undefined;
  private idle: NodeJS.Timeout | undefined;

  constructor(private readonly idleMs = beforeImageSlabsIdleMs) {}

  acquire(bytes: number): Buffer {
    if (bytes === 0) return Buffer.alloc(0);
    clearTimeout(this.idle);
    const kept = this.kept_;
    if (kept && kept.length >= bytes) {
      this.kept_ = undefined;
      return kept;
    }
    return Buffer.allocUnsafeSlow(Math.ceil(bytes / beforeImageSlabUnitBytes) * beforeImageSlabUnitBytes);
  }

  release(slab: Buffer): void {
    if (slab.length === 0) return;
    if (!this.kept_ || this.kept_.length < slab.length) this.kept_ = slab;
    clearTimeout(this.idle);
    this.idle = setTimeout(() => (this.kept_ = undefined), this.idleMs);
    this.idle.unref();
  }

  /** Slabs kept now (for tests). */
  get kept(): number {
    return this.kept_ ? 1 : 0;
  }
}
