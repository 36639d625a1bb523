// Group barriers: PrepareBarrier holds new writes to the listed disks, puts a
// group marker after the writes already admitted, and keeps holding until
// ReleaseBarrier or hold_ms. The configuration server prepares every member
// first and releases them only when all have answered, so no member's write
// after the point precedes another member's write before it. A barrier that
// expired before its release is not a group point. Scan captures cannot hold
// writes: they get a pass and the marker, only as good as that pass.
import type { MarkersResponse } from '../../generated/drplane/v1/MarkersResponse';
import type { ReleaseBarrierResponse } from '../../generated/drplane/v1/ReleaseBarrierResponse';
import type { DiskMarker } from '../../generated/drplane/v1/DiskMarker';
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument, limitExceeded, notFound } from '../../shared/errors';
import { barrierHoldMsMax, barriersKeptMax, nameLengthMax } from '../../shared/limits';
import type { Logger } from '../../shared/log';
import type { Captures } from './captures';

/** An expired barrier is remembered this long, so its ReleaseBarrier can still say it expired. */
const expiredKeptMs = 60_000;

interface Barrier {
  id: string;
  disks: string[];
  holdMs: number;
  startedMs: number;
  releases: (() => void)[];
  timer: NodeJS.Timeout | undefined;
  /** Set when hold_ms ran out (writes then flowed again). */
  expiredMs: number | undefined;
  released: boolean;
}

export class Barriers {
  private readonly barriers = new Map<string, Barrier>();

  constructor(
    private readonly captures: Captures,
    private readonly log: Logger,
    private readonly keptMax = barriersKeptMax,
  ) {}

  async prepare(barrierId: string, paths: readonly string[], holdMsAsked: number): Promise<MarkersResponse> {
    if (!barrierId) throw invalidArgument('barrier_id is required');
    if (barrierId.length > nameLengthMax) throw invalidArgument(`barrier_id is longer than ${nameLengthMax} characters`);
    if (holdMsAsked > barrierHoldMsMax) throw invalidArgument(`hold_ms ${holdMsAsked} is more than the ${barrierHoldMsMax} ms an agent holds writes`);
    if (this.barriers.has(barrierId)) throw new DrplaneError(ErrorCode.AlreadyExists, `barrier ${barrierId} is already prepared on this agent: release it first`);
    this.makeRoom();
    const disks = this.captures.captured(paths);
    // A scan capture cannot hold the workload's writes, so its marker would follow a pass read while the
    // other members kept writing: that is no common point, and a point must never claim what it is not.
    const scanned = disks.filter((diskPath) => this.captures.get(diskPath).mode === 'CAPTURE_SCAN');
    if (scanned.length) throw failedPrecondition(`group-consistent points need write-through capture: ${scanned.join(', ')} ${scanned.length === 1 ? 'is' : 'are'} captured by scan, whose writes cannot be held at a barrier`);
    const holdMs = holdMsAsked || barrierHoldMsMax;
    const barrier: Barrier = { id: barrierId, disks, holdMs, startedMs: Date.now(), releases: [], timer: undefined, expiredMs: undefined, released: false };
    this.barriers.set(barrierId, barrier);
    // Writes are held at most hold_ms from now, even if holding every disk takes a while.
    barrier.timer = setTimeout(() => this.expire(barrier), holdMs);
    const markers: DiskMarker[] = [];
    try {
      for (const diskPath of disks) {
        const held = await this.captures.holdWrites(diskPath, barrierId);
        if (barrier.expiredMs !== undefined || barrier.released) held.release();
        else barrier.releases.push(held.release);
        markers.push(held.marker);
      }
    } catch (error) {
      this.releaseWrites(barrier);
      clearTimeout(barrier.timer);
      if (this.barriers.get(barrierId) === barrier) this.barriers.delete(barrierId);
      throw error;
    }
    this.log.info({ barrierId, holdMs, markers }, 'barrier prepared: writes held');
    return { markers, hookOutput: '', hookDurationMs: 0 };
  }

  /**
   * Every id a caller prepares is remembered until its release (or a minute after it expired): ids nobody releases
   * must not grow the map without end. The oldest expired barrier is forgotten to make room; with none expired, every
   * kept barrier is holding writes, and one more is refused.
   */
  private makeRoom(): void {
    if (this.barriers.size < this.keptMax) return;
    for (const [id, barrier] of this.barriers) {
      if (barrier.expiredMs === undefined) continue;
      clearTimeout(barrier.timer);
      this.barriers.delete(id);
      return;
    }
    throw limitExceeded(`${this.barriers.size} barriers are prepared on this agent and none has expired, the most it keeps: release one first`);
  }

  release(barrierId: string): ReleaseBarrierResponse {
    const barrier = this.barriers.get(barrierId);
    if (!barrier) throw notFound(`barrier ${barrierId} is not prepared on this agent (never prepared, already released, or expired more than ${expiredKeptMs / 1000} s ago)`);
    this.barriers.delete(barrierId);
    clearTimeout(barrier.timer);
    if (barrier.expiredMs !== undefined) return { heldMs: barrier.expiredMs - barrier.startedMs, expired: true };
    barrier.released = true;
    this.releaseWrites(barrier);
    const heldMs = Date.now() - barrier.startedMs;
    this.log.info({ barrierId, heldMs }, 'barrier released');
    return { heldMs, expired: false };
  }

  private expire(barrier: Barrier): void {
    barrier.expiredMs = Date.now();
    this.releaseWrites(barrier);
    this.log.warn({ barrierId: barrier.id, holdMs: barrier.holdMs, disks: barrier.disks }, 'barrier expired before its release: writes flow again and it is not a group point');
    barrier.timer = setTimeout(() => {
      if (this.barriers.get(barrier.id) === barrier) this.barriers.delete(barrier.id);
    }, expiredKeptMs);
    barrier.timer.unref();
  }

  private releaseWrites(barrier: Barrier): void {
    for (const release of barrier.releases.splice(0)) release();
  }

  /** At shutdown: let every held write go. */
  releaseAll(): void {
    for (const barrier of this.barriers.values()) {
      clearTimeout(barrier.timer);
      barrier.released = true;
      this.releaseWrites(barrier);
    }
    this.barriers.clear();
  }
}
