// Retention: the pruner, and the pins that keep a point being materialised.
//
// Every pruneIntervalMs, for each replica, the pruner removes the points whose
// source time is older than the replica's window, oldest first, stopping at the
// first point inside the window, and ALWAYS keeping the newest point and every
// pinned point. The oldest kept point K is the floor: then it removes the
// before-images and batch records of batches at or below K's sequence, since
// materialising a point P reads only the before-images of batches after P.
//
// Crash safety: points go in earlier transactions than the before-images of
// their batches, so a point that is still listed never lacks an image it needs;
// a crash between the two leaves images no point needs, removed by the next run.
//
// Concurrency: deletes run in transactions of at most pruneKeysPerTransaction
// keys with a yield between them, so apply never waits long; the pruner never
// takes a replica's lock (its record updates are read-modify-writes inside the
// transaction). Deciding the floor and pinning are both synchronous, so a point
// is either pinned before the pruner decides (and kept) or seen as pruned by
// the materialiser (NOT_FOUND): never deleted under a running materialisation.
//
// Retired replicas (retirement.ts) are skipped; a run already inside one stops
// at its next transaction, and the retirement waits for that (idle()).
import assert from 'node:assert/strict';
import { notFound } from '../../shared/errors';
import { failpoint } from '../../shared/failpoints';
import { exitCode } from '../../shared/process';
import type { Logger } from '../../shared/log';
import type { Replicas } from './replicas';

export interface RetentionOptions {
  pruneIntervalMs: number;
  pruneKeysPerTransaction: number;
}

const yieldToOthers = () => new Promise<void>((resolve) => setImmediate(resolve));

export class Retention {
  /** Since start-up. */
  recoveryPointsPruned = 0;
  beforeImageBytesPruned = 0;
  /** Pinned points per disk: sequence -> materialisations running. */
  private readonly pins = new Map<string, Map<number, number>>();
  /** Per disk, the sequence below which points are pruned or being pruned (they no longer exist for readers). */
  private readonly floors = new Map<string, number>();
  /** The disk being pruned now, and the end of that. */
  private current: { diskId: string; done: Promise<void> } | undefined;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = false;

  constructor(
    private readonly replicas: Replicas,
    private readonly log: Logger,
    private readonly options: RetentionOptions,
  ) {}

  /** Points of this disk with a lower sequence are pruned (or about to be): readers must not offer them. */
  floor(diskId: string): number {
    return this.floors.get(diskId) ?? 0;
  }

  /**
   * Pins a point for a materialisation: the pruner keeps it and every
   * before-image it needs until the returned function is called. Synchronous
   * on purpose (see the top of this file).
   */
  pin(diskId: string, sequence: number): () => void {
    if (sequence < this.floor(diskId)) throw notFound(`recovery point ${diskId}@${sequence} was pruned (older than the disk's retention window): list the points of disk ${diskId}`);
    let disk = this.pins.get(diskId);
    if (!disk) this.pins.set(diskId, (disk = new Map()));
    disk.set(sequence, (disk.get(sequence) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const count = disk.get(sequence) ?? 0;
      assert.ok(count > 0, `unpinned ${diskId}@${sequence} more often than pinned`);
      if (count === 1) disk.delete(sequence);
      else disk.set(sequence, count - 1);
    };
  }

  /** Whether a materialisation of any point of this disk is running. */
  pinned(diskId: string): boolean {
    return (this.pins.get(diskId)?.size ?? 0) > 0;
  }

  /** Resolves once the pruner is not inside this disk (a retirement waits for it before deleting the disk's keys). */
  async idle(diskId: string): Promise<void> {
    while (this.current?.diskId === diskId) await this.current.done;
  }

  /** A retired disk's floor goes with it: a replica created again under its id starts at sequence 1. */
  forget(diskId: string): void {
    assert.ok(!this.pinned(diskId), `forgot disk ${diskId} while a point of it is pinned`);
    this.floors.delete(diskId);
    this.pins.delete(diskId);
  }

  private lowestPin(diskId: string): number {
    let lowest = Number.MAX_SAFE_INTEGER;
    for (const sequence of this.pins.get(diskId)?.keys() ?? []) lowest = Math.min(lowest, sequence);
    return lowest;
  }

  start(): void {
    if (this.stopped || this.timer) return;
    this.timer = setTimeout(() => {
      this.running = this.pruneOnce()
        .catch((error: unknown) => {
          if (error instanceof assert.AssertionError) {
            this.log.fatal({ err: error }, 'pruner assertion failed: this is a bug; exiting so the service manager restarts the daemon');
            process.exit(exitCode.crash);
          }
          this.log.error({ err: error }, 'pruning failed; it runs again at the next interval');
        })
        .finally(() => {
          this.running = undefined;
          this.timer = undefined;
          this.start();
        });
    }, this.options.pruneIntervalMs);
  }

  /** Stops scheduling and waits for the run in progress to reach a transaction boundary. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
  }

  /** One pass over every replica. */
  async pruneOnce(now = Date.now()): Promise<void> {
    for (const record of this.replicas.list()) {
      if (this.stopped) return;
      if (record.retired || record.seeding) continue;
      const done = this.pruneReplica(record.diskId, now);
      this.current = { diskId: record.diskId, done: done.then(() => undefined, () => undefined) };
      try {
        await done;
      } finally {
        this.current = undefined;
      }
    }
  }

  private async pruneReplica(diskId: string, now: number): Promise<void> {
    const store = this.replicas.store;
    const record = this.replicas.get(diskId);
    // Retired since the list was read: nothing of it is pruned any more (the retirement deletes it all).
    if (record.retired || record.seeding) return;
    const floor = this.floor(diskId);
    const newest = store.newestPoint(diskId, floor);
    // Batches at or below this sequence can serve no point, present or future.
    let imagesThrough: number;
    if (!newest) {
      // No point held (a first sync in progress): a later point needs only the before-images of batches after it.
      imagesThrough = record.appliedSequence;
    } else {
      const cutoffMs = now - record.retentionWindowMs;
      let keepFrom = newest.sequence;
      for (const point of store.pointsFrom(diskId, floor, newest.sequence)) {
        if (point.sourceTimeMs >= cutoffMs) {
          keepFrom = point.sequence;
          break;
        }
      }
      keepFrom = Math.min(keepFrom, this.lowestPin(diskId));
      // From here on readers see points below keepFrom as gone, before they are deleted.
      if (keepFrom > floor) this.floors.set(diskId, keepFrom);
      imagesThrough = this.floor(diskId);
      await this.removePointsBelow(diskId, this.floor(diskId));
    }
    await this.removeBatchesThrough(diskId, imagesThrough);
  }

  private retired(diskId: string): boolean {
    return this.replicas.store.replica(diskId)?.retired ?? true;
  }

  private async removePointsBelow(diskId: string, sequence: number): Promise<void> {
    while (!this.stopped && !this.retired(diskId)) {
      const points = await this.replicas.store.prunePointsBelow(diskId, sequence, this.options.pruneKeysPerTransaction);
      if (points === 0) return;
      this.recoveryPointsPruned += points;
      this.log.debug({ diskId, points, below: sequence }, 'recovery points pruned');
      await failpoint('retention.pruned-points');
      await yieldToOthers();
    }
  }

  /** Removes before-images and batch records of batches at or below `sequence`, oldest first: a batch's record goes with (or after) its last image. */
  private async removeBatchesThrough(diskId: string, sequence: number): Promise<void> {
    while (!this.stopped && !this.retired(diskId)) {
      const { batches, images, bytes } = await this.replicas.store.pruneBatchesThrough(diskId, sequence, this.options.pruneKeysPerTransaction);
      if (batches === 0 && images === 0) return;
      this.beforeImageBytesPruned += bytes;
      this.log.debug({ diskId, batches, images, bytes, through: sequence }, 'before-images pruned');
      for (let n = 0; n < batches; n++) await failpoint('retention.pruned-batch');
      await yieldToOthers();
    }
  }
}
