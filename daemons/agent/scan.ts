// Scan capture: every scan interval the agent hashes every 4 KiB block of the
// device in the worker pool and records the blocks whose hash changed since
// the previous pass, coalesced into runs, with the data it read. A pass read
// while the source changes is not a state the source had, so it ends with a
// crash-consistent marker only when it was read from a snapshot or found
// nothing changed (a quiet pass). Known gap: a block changed and changed back
// between two passes is not seen (ABA); write-through capture has none.
// The first pass compares the source with what the caller says the replica
// holds (the scan baseline), so a capture is its own sync: after the first
// pass the replica equals what the passes shipped.
import fs from 'node:fs/promises';
import { readAll } from '../../shared/file-io';
import type { HashPool } from '../../shared/hash-pool';
import { blockHashes, hashBytes } from '../../shared/hashing';
import { blockBytes, extentBytesMax, units } from '../../shared/limits';
import type { Logger } from '../../shared/log';
import type { ScanBaseline__Output } from '../../generated/drplane/v1/ScanBaseline';
import type { Capture } from './capture';
import { hookError, type Hooks } from './hooks';
import { OneAtATime } from './one-at-a-time';

export interface BlockRun {
  firstBlock: number;
  blocks: number;
}

/** Hashes compared at once before looking block by block: most of a disk is unchanged. */
const compareSpanBlocks = 8 * 1024;

/** The blocks whose hashes differ, as runs of adjacent blocks of at most runBlocksMax. */
export function changedRuns(previous: Buffer, current: Buffer, runBlocksMax = extentBytesMax / blockBytes): BlockRun[] {
  if (previous.length !== current.length) throw new RangeError(`hash lists differ in length (${previous.length} and ${current.length} bytes)`);
  const blocks = current.length / hashBytes;
  const runs: BlockRun[] = [];
  let run: BlockRun | undefined;
  for (let spanStart = 0; spanStart < blocks; spanStart += compareSpanBlocks) {
    const spanEnd = Math.min(blocks, spanStart + compareSpanBlocks);
    if (previous.compare(current, spanStart * hashBytes, spanEnd * hashBytes, spanStart * hashBytes, spanEnd * hashBytes) === 0) {
      run = undefined;
      continue;
    }
    for (let block = spanStart; block < spanEnd; block++) {
      const at = block * hashBytes;
      if (previous.compare(current, at, at + hashBytes, at, at + hashBytes) === 0) {
        run = undefined;
        continue;
      }
      if (run && run.firstBlock + run.blocks === block && run.blocks < runBlocksMax) run.blocks++;
      else runs.push((run = { firstBlock: block, blocks: 1 }));
    }
  }
  return runs;
}

/** Every block as runs of at most runBlocksMax: the first pass against a replica of unknown content ships them all. */
export function allRuns(blocks: number, runBlocksMax = extentBytesMax / blockBytes): BlockRun[] {
  const runs: BlockRun[] = [];
  for (let firstBlock = 0; firstBlock < blocks; firstBlock += runBlocksMax) runs.push({ firstBlock, blocks: Math.min(runBlocksMax, blocks - firstBlock) });
  return runs;
}

export interface PassResult {
  /** The time the pass stands for: its start, or when the snapshot was taken. */
  passTimeMs: number;
  /** The first pass of a SCAN_BASELINE_SOURCE capture: it only set the baseline. */
  baseline: boolean;
  changedBlocks: number;
  fromSnapshot: boolean;
  /** A crash-consistent marker ended the pass. */
  marked: boolean;
}

export interface PassProgress {
  running: boolean;
  /** The pass has hashed every block before this offset and recorded those that changed. */
  bytesRead: number;
  /** Bytes of changed blocks recorded by the pass so far. */
  bytesRecorded: number;
}

/**
 * A pass hashes this much of the disk, then records its changed blocks, then
 * the next span. Several hash tasks (hashTaskBytes) each, so the pool's
 * workers hash in parallel; small enough that the pass's progress moves often.
 */
export const scanSpanBytes = 256 * units.MiB;

export class Scanner {
  /** The block hashes of what was last shipped (or of the first pass). */
  private baseline: Buffer | undefined;
  private readonly passes = new OneAtATime();
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** A pass asked for by passAfterNow() that has not started yet: later askers share it. */
  private queuedFresh: Promise<PassResult> | undefined;
  /** The pass in progress, or the last one: how far through the disk it has got. */
  progress: PassProgress = { running: false, bytesRead: 0, bytesRecorded: 0 };

  constructor(
    private readonly capture: Capture,
    readonly diskBytes: number,
    public intervalMs: number,
    private readonly pool: HashPool,
    private readonly hooks: Hooks,
    private readonly log: Logger,
    /** What the first pass compares the source with (the replica's content as the caller knows it). */
    private readonly firstBaseline: ScanBaseline__Output = 'SCAN_BASELINE_SOURCE',
    /** SCAN_BASELINE_REPLICA: the replica's block hashes, which the first pass compares with (dropped after it). */
    private replicaHashes?: Buffer,
    /** Runs a read of the disk with a path naming the disk's opened descriptor (SourceDisks.withOpenPath: confined under a disk root). */
    private readonly withOpenPath: <T>(use: (openPath: string) => Promise<T>) => Promise<T> = (use) => use(capture.path),
  ) {}

  /** Runs the first pass and schedules the next ones. */
  async start(): Promise<void> {
    const started = Date.now();
    await this.pass();
    this.schedule(started);
  }

  private schedule(lastStartMs: number): void {
    if (this.stopped) return;
    // From the start of one pass to the start of the next; a pass longer than the interval is followed at once.
    const delay = Math.max(0, lastStartMs + this.intervalMs - Date.now());
    this.timer = setTimeout(() => {
      const started = Date.now();
      this.pass().then(
        () => this.schedule(started),
        (error: unknown) => {
          if (this.stopped) return;
          this.log.warn({ disk: this.capture.path, err: (error as Error).message }, 'scan pass failed; the next pass tries again');
          this.schedule(started);
        },
      );
    }, delay);
  }

  /**
   * Runs a pass after any pass in progress. `then` runs at the end of the
   * pass, before the next one can start (an app or group marker goes there).
   */
  pass<T>(then?: (result: PassResult) => T): Promise<{ result: PassResult; value: T | undefined }> {
    return this.passes.run(async () => {
      const result = await this.runPass();
      return { result, value: then?.(result) };
    });
  }

  /**
   * A pass that starts after this call (a pass already running does not
   * count): a flush needs the source as it is now. Callers that ask while such
   * a pass is still queued share it, so asking often does not pile up passes.
   */
  passAfterNow(): Promise<PassResult> {
    if (!this.queuedFresh) {
      const fresh = this.passes.run(() => {
        if (this.queuedFresh === fresh) this.queuedFresh = undefined;
        return this.runPass();
      });
      this.queuedFresh = fresh;
      // The callers handle the failure; this keeps a shared pass's failure from being unhandled meanwhile.
      fresh.catch(() => undefined);
    }
    return this.queuedFresh;
  }

  private async runPass(): Promise<PassResult> {
    const capture = this.capture;
    if (this.stopped || capture.stopped) throw new Error(`the capture of ${capture.path} stopped`);
    let passTimeMs = Date.now();
    const snapshot = await this.createSnapshot();
    if (snapshot) passTimeMs = snapshot.takenMs;
    // A snapshot is read where the hook put it; the disk itself through its opened descriptor.
    const read = snapshot ? <T>(use: (readPath: string) => Promise<T>) => use(snapshot.path) : this.withOpenPath;
    return read((readPath) => this.passOver(readPath, passTimeMs, snapshot));
  }

  private async passOver(readPath: string, passTimeMs: number, snapshot: { path: string } | undefined): Promise<PassResult> {
    const capture = this.capture;
    const firstPass = !this.baseline;
    const result: PassResult = { passTimeMs, baseline: firstPass && this.firstBaseline === 'SCAN_BASELINE_SOURCE', changedBlocks: 0, fromSnapshot: Boolean(snapshot), marked: false };
    this.progress = { running: true, bytesRead: 0, bytesRecorded: 0 };
    try {
      // The first pass builds the baseline aside and installs it only once whole: a pass that fails half-way
      // leaves the next one a first pass again (it ships again what it must), never a baseline of blocks not shipped.
      const baseline = firstPass ? Buffer.alloc((this.diskBytes / blockBytes) * hashBytes) : this.baseline!;
      // Span by span, hashed then its changed blocks recorded: the pass moves through the disk once, in order,
      // so how far it has got is one number (CaptureStatus.pass_bytes_read, the progress of a scan's sync).
      for (let spanOffset = 0; spanOffset < this.diskBytes; spanOffset += scanSpanBytes) {
        const spanBytes = Math.min(scanSpanBytes, this.diskBytes - spanOffset);
        const hashes = await this.pool.hashFile(readPath, spanOffset, spanBytes);
        if (this.stopped || capture.stopped) throw new Error(`the capture of ${capture.path} stopped`);
        const firstHash = (spanOffset / blockBytes) * hashBytes;
        const firstBlock = spanOffset / blockBytes;
        let runs: BlockRun[];
        if (result.baseline) runs = [];
        else if (!firstPass) runs = changedRuns(baseline.subarray(firstHash, firstHash + hashes.length), hashes);
        else if (this.firstBaseline === 'SCAN_BASELINE_EMPTY') runs = changedRuns(Buffer.alloc(hashes.length), hashes);
        // EMPTY: the replica holds zeros, so every block whose hash is not 0 (the zero block's) is shipped.
        // REPLICA: every block whose hash differs from the replica's. Nothing writes the replica between the process
        // server's reading of those hashes and the apply of this pass's records, each block once and in order, so a
        // block whose hash is the replica's is already there (the trust a delta sync places in xxh64).
        // UNKNOWN: every block is shipped, zeros too. The shipped blocks' hashes then overwrite these.
        else if (this.firstBaseline === 'SCAN_BASELINE_REPLICA' && this.replicaHashes?.length === baseline.length) runs = changedRuns(this.replicaHashes.subarray(firstHash, firstHash + hashes.length), hashes);
        else runs = allRuns(hashes.length / hashBytes);
        if (firstPass) hashes.copy(baseline, firstHash);
        result.changedBlocks += await this.recordChanges(readPath, passTimeMs, runs.map((run) => ({ firstBlock: firstBlock + run.firstBlock, blocks: run.blocks })), baseline);
        // Stopped while recording: the pass ends here, without a marker (below), as it always has.
        if (capture.stopped) break;
        this.progress.bytesRead = spanOffset + spanBytes;
      }
      if (firstPass && !capture.stopped) {
        this.baseline = baseline;
        this.replicaHashes = undefined;
      }
      // A first pass that shipped data read live is fuzzy: no marker unless it read a snapshot (one instant).
      const quiet = !firstPass && result.changedBlocks === 0;
      if (!result.baseline && (snapshot || quiet) && !capture.stopped) {
        capture.append({ marker: 'MARKER_CRASH_CONSISTENT' }, passTimeMs);
        result.marked = true;
      }
      capture.scanPasses++;
      capture.lastPassTimeMs = passTimeMs;
      capture.passWatermarkMs = passTimeMs;
      capture.stream?.wake();
      this.log.debug({ disk: capture.path, ...result }, 'scan pass');
      return result;
    } finally {
      this.progress.running = false;
      if (snapshot) await this.releaseSnapshot(snapshot.path);
    }
  }

  /**
   * Reads the changed runs (after hashing: a run may have changed again) and
   * records them; the hashes of what was read become the baseline, so the
   * baseline is always what was shipped.
   */
  private async recordChanges(readPath: string, passTimeMs: number, runs: BlockRun[], baseline: Buffer): Promise<number> {
    if (runs.length === 0) return 0;
    const handle = await fs.open(readPath, 'r');
    let changedBlocks = 0;
    try {
      for (const run of runs) {
        const offset = run.firstBlock * blockBytes;
        const data = Buffer.allocUnsafe(run.blocks * blockBytes);
        await readAll(handle, data, offset, (end) => new Error(`${readPath} ended at ${end} while reading changed blocks: did the disk shrink?`));
        await this.capture.waitForRoom(data.length);
        if (this.capture.stopped) break;
        blockHashes(data, baseline, run.firstBlock * hashBytes);
        this.capture.append({ offset, data }, passTimeMs);
        changedBlocks += run.blocks;
        this.progress.bytesRead = offset + data.length;
        this.progress.bytesRecorded += data.length;
      }
    } finally {
      await handle.close();
    }
    return changedBlocks;
  }

  private async createSnapshot(): Promise<{ path: string; takenMs: number } | undefined> {
    if (!this.hooks.has('snapshotCreate')) return undefined;
    const takenMs = Date.now();
    const result = await this.hooks.run('snapshotCreate', { disks: [this.capture.path] });
    const snapshotPath = result.stdout.trim().split('\n').pop()?.trim() ?? '';
    let problem: string | undefined;
    if (!result.ok) problem = hookError(result, this.hooks.timeoutMs);
    else if (!snapshotPath) problem = 'snapshotCreate hook printed no snapshot path';
    else {
      const size = await fs.stat(snapshotPath).then(
        (stats) => (stats.isBlockDevice() ? this.diskBytes : stats.size),
        () => -1,
      );
      if (size < this.diskBytes) problem = `snapshotCreate hook printed ${snapshotPath}, which does not exist or is smaller than the disk (${this.diskBytes} bytes)`;
    }
    if (!problem) return { path: snapshotPath, takenMs };
    // A pass from the live disk still records the changes; it just ends without a marker unless quiet.
    this.capture.lastHookError = problem;
    this.log.warn({ disk: this.capture.path, problem }, 'no snapshot for this scan pass: reading the live disk');
    if (result.ok && snapshotPath) await this.releaseSnapshot(snapshotPath);
    return undefined;
  }

  private async releaseSnapshot(snapshotPath: string): Promise<void> {
    if (!this.hooks.has('snapshotRelease')) return;
    const result = await this.hooks.run('snapshotRelease', { disks: [this.capture.path], snapshot: snapshotPath });
    if (!result.ok) this.capture.lastHookError = hookError(result, this.hooks.timeoutMs);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}
