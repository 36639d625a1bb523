// The captures of an agent's source disks: at most one per disk, started and
// stopped by the process server, and the markers that app-consistent points
// and group barriers put in their streams.
import { failpoint } from '../../shared/failpoints';
import type { CaptureStatus } from '../../generated/drplane/v1/CaptureStatus';
import type { DiskMarker } from '../../generated/drplane/v1/DiskMarker';
import type { MarkerKind__Output } from '../../generated/drplane/v1/MarkerKind';
import type { ScanBaselineChunk__Output } from '../../generated/drplane/v1/ScanBaselineChunk';
import type { StartCaptureRequest__Output } from '../../generated/drplane/v1/StartCaptureRequest';
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument, limitExceeded, outOfRange } from '../../shared/errors';
import type { HashPool } from '../../shared/hash-pool';
import { hashBytes } from '../../shared/hashing';
import { blockBytes, scanBaselineBytesMax, scanIntervalMsDefault, scanIntervalMsMax, scanIntervalMsMin } from '../../shared/limits';
import type { Logger } from '../../shared/log';
import { Capture, type CaptureMode } from './capture';
import type { SourceDisks } from './disks';
import type { Hooks } from './hooks';
import { Scanner } from './scan';
import type { SourceWriters } from './write-through';

interface Running {
  capture: Capture;
  scanner?: Scanner;
  /** Resolves when the capture is ready (scan: its first pass is done). */
  ready: Promise<void>;
}

/** A capture's status with, for a scan, how far its pass has got (the progress of a scan's sync). */
function withPassProgress(running: Running): CaptureStatus {
  const status = running.capture.status();
  const progress = running.scanner?.progress;
  if (!running.scanner || !progress) return status;
  return { ...status, passRunning: progress.running, passBytesRead: progress.bytesRead, passBytesRecorded: progress.bytesRecorded, diskBytes: running.scanner.diskBytes };
}

const modeName = (mode: CaptureMode) => (mode === 'CAPTURE_SCAN' ? 'scan' : 'write-through');

export class Captures {
  private readonly running = new Map<string, Running>();
  /** Replica hashes put for each disk's next SCAN_BASELINE_REPLICA capture (PutScanBaseline). */
  private readonly scanBaselines = new Map<string, Buffer>();

  constructor(
    private readonly disks: SourceDisks,
    private readonly writers: SourceWriters,
    private readonly pool: HashPool,
    private readonly hooks: Hooks,
    readonly heldBytesMax: number,
    private readonly log: Logger,
    /** Set while a disk is shut down as a source: why no capture may start on it (it takes no writes either). */
    private readonly shutDown: (diskPath: string) => DrplaneError | undefined = () => undefined,
  ) {}

  /**
   * Keeps a replica's block hashes for the disk's next scan capture with
   * SCAN_BASELINE_REPLICA, replacing any it had. The chunks come in disk
   * order; all of them must add up to 8 bytes per block of the disk.
   */
  async putScanBaseline(chunks: AsyncIterable<ScanBaselineChunk__Output>): Promise<{ blocks: number }> {
    // A fault test refuses here, as an older agent without the method would, to run the process server's own filter.
    await failpoint('agent.put-scan-baseline');
    let diskPath: string | undefined;
    let hashes: Buffer | undefined;
    let received = 0;
    for await (const chunk of chunks) {
      if (!diskPath) {
        diskPath = this.disks.authorize(chunk.path);
        const disk = await this.disks.describe(diskPath);
        const bytes = (disk.diskBytes / blockBytes) * hashBytes;
        const others = [...this.scanBaselines].filter(([other]) => other !== diskPath).reduce((sum, [, held]) => sum + held.length, 0);
        if (others + bytes > scanBaselineBytesMax) throw limitExceeded(`a scan baseline of ${diskPath} needs ${bytes} bytes of hashes; ${others} are held for other disks, at most ${scanBaselineBytesMax} in all`);
        hashes = Buffer.allocUnsafe(bytes);
      } else if (chunk.path && chunk.path !== diskPath) throw invalidArgument(`PutScanBaseline names ${chunk.path} after ${diskPath}: one disk per call`);
      if (received + chunk.blockHashes.length > hashes!.length) throw outOfRange(`PutScanBaseline sent more than the ${hashes!.length} bytes of hashes ${diskPath} has`);
      chunk.blockHashes.copy(hashes!, received);
      received += chunk.blockHashes.length;
    }
    if (!diskPath || !hashes) throw invalidArgument('PutScanBaseline sent nothing: the first chunk names the disk');
    if (received !== hashes.length) throw invalidArgument(`PutScanBaseline sent ${received} bytes of hashes; ${diskPath} needs ${hashes.length} (8 per 4 KiB block)`);
    this.scanBaselines.set(diskPath, hashes);
    return { blocks: hashes.length / hashBytes };
  }

  /**
   * Starts a capture, or returns the one running in the same mode. A scan
   * capture answers after its first pass, which compares the source with
   * `scan_baseline` (what the replica holds): SOURCE ships nothing, EMPTY every
   * non-zero block, UNKNOWN every block, REPLICA every block whose hash differs
   * from the replica's (put with PutScanBaseline); a scan capture is its own sync. For a
   * capture already running, `scan_baseline` is ignored: it keeps the baseline it started with.
   * Joining a running scan capture answers after a pass that started after
   * the call (a process server's flush asks for one that way). A disk shut
   * down as a source starts no capture; one running since before goes on (its
   * records are still drained).
   */
  async start(request: StartCaptureRequest__Output): Promise<CaptureStatus> {
    const diskPath = this.disks.authorize(request.path);
    const mode = request.mode;
    if (mode !== 'CAPTURE_WRITE_THROUGH' && mode !== 'CAPTURE_SCAN') throw invalidArgument(`capture mode must be CAPTURE_WRITE_THROUGH or CAPTURE_SCAN, got ${mode}`);
    const intervalMs = request.scanIntervalMs || scanIntervalMsDefault;
    if (mode === 'CAPTURE_SCAN' && (intervalMs < scanIntervalMsMin || intervalMs > scanIntervalMsMax)) throw invalidArgument(`scan_interval_ms must be from ${scanIntervalMsMin} to ${scanIntervalMsMax}, got ${intervalMs}`);
    const existing = this.running.get(diskPath);
    if (existing) return this.joinRunning(existing, mode, intervalMs, true);
    const refusal = this.shutDown(diskPath);
    if (refusal) throw refusal;
    const disk = await this.disks.describe(diskPath);
    let replicaHashes: Buffer | undefined;
    if (mode === 'CAPTURE_SCAN' && request.scanBaseline === 'SCAN_BASELINE_REPLICA') {
      replicaHashes = this.scanBaselines.get(diskPath);
      const expected = (disk.diskBytes / blockBytes) * hashBytes;
      // None put (or the agent restarted since): ABORTED, which a process server retries from PutScanBaseline.
      if (!replicaHashes) throw new DrplaneError(ErrorCode.Aborted, `no replica baseline of ${diskPath} for SCAN_BASELINE_REPLICA (none put, or the agent restarted since): call PutScanBaseline first`);
      if (replicaHashes.length !== expected) throw failedPrecondition(`the replica baseline of ${diskPath} has ${replicaHashes.length} bytes of hashes; the disk needs ${expected} (8 per 4 KiB block)`);
    }
    const install = () => {
      const raced = this.running.get(diskPath);
      if (raced) return raced;
      const refused = this.shutDown(diskPath);
      if (refused) throw refused;
      const capture = new Capture(diskPath, mode, this.heldBytesMax, this.log);
      const scanner = mode === 'CAPTURE_SCAN' ? new Scanner(capture, disk.diskBytes, intervalMs, this.pool, this.hooks, this.log, request.scanBaseline, replicaHashes, (use) => this.disks.withOpenPath(diskPath, use)) : undefined;
      // The scanner holds the baseline from here on; put again for another capture.
      if (replicaHashes) this.scanBaselines.delete(diskPath);
      const running: Running = { capture, scanner, ready: scanner ? scanner.start() : Promise.resolve() };
      // Handled in whenReady; this keeps a failed baseline from being an unhandled rejection meanwhile.
      running.ready.catch(() => undefined);
      this.running.set(diskPath, running);
      this.log.info({ disk: diskPath, mode: modeName(mode), captureId: capture.captureId, scanIntervalMs: scanner?.intervalMs, scanBaseline: scanner ? request.scanBaseline : undefined }, 'capture started');
      return running;
    };
    // Write-through: installed between two writes, so every write is either before the capture or in it.
    // Scan: writes need not wait for the first pass (the passes see them).
    const running = mode === 'CAPTURE_WRITE_THROUGH' ? await this.betweenWrites(diskPath, install) : install();
    return this.joinRunning(running, mode, intervalMs, false);
  }

  /** `afterNow`: a scan capture answers after a pass that started after this call (not just its first pass). */
  private async joinRunning(running: Running, mode: CaptureMode, intervalMs: number, afterNow: boolean): Promise<CaptureStatus> {
    if (running.capture.mode !== mode) {
      throw failedPrecondition(`${running.capture.path} is already captured in ${modeName(running.capture.mode)} mode: StopCapture it first to capture it in ${modeName(mode)} mode`);
    }
    if (running.scanner) running.scanner.intervalMs = intervalMs;
    if (mode === 'CAPTURE_WRITE_THROUGH') {
      // Read inside the disk's write queue: a write whose pwrite is done but whose record is not yet
      // appended must count, or a sync that read its blocks would get a consistentFrom before it.
      return this.betweenWrites(running.capture.path, () => running.capture.status());
    }
    const status = await this.whenReady(running);
    if (!afterNow || !running.scanner) return status;
    try {
      await running.scanner.passAfterNow();
    } catch (error) {
      throw failedPrecondition(`no scan pass of ${running.capture.path}: ${(error as Error).message}`);
    }
    return running.capture.status();
  }

  /**
   * Runs a task between two writes of a disk (in its write queue). A disk shut
   * down as a source takes no writes, and its file stays closed: the task runs at once.
   */
  private async betweenWrites<T>(diskPath: string, task: () => T | Promise<T>): Promise<T> {
    if (this.shutDown(diskPath)) {
      // The writes admitted before the shutdown are done first.
      await this.writers.retired(diskPath);
      return task();
    }
    return (await this.writers.get(diskPath)).queue.run(task);
  }

  private async whenReady(running: Running): Promise<CaptureStatus> {
    try {
      await running.ready;
    } catch (error) {
      // The baseline failed: the capture never ran.
      if (this.running.get(running.capture.path) === running) this.remove(running);
      throw failedPrecondition(`cannot start the scan capture of ${running.capture.path}: ${(error as Error).message}`);
    }
    return running.capture.status();
  }

  /** Stops a capture; stopping a disk that is not captured answers its (empty) status, so a retry is harmless. */
  async stop(requested: string): Promise<CaptureStatus> {
    const diskPath = this.disks.authorize(requested);
    // A baseline put for a capture of this disk is for the StartCapture that follows a stop, never one before it.
    this.scanBaselines.delete(diskPath);
    const running = this.running.get(diskPath);
    if (!running) return { path: diskPath, mode: 'CAPTURE_MODE_UNSPECIFIED' };
    const status = running.capture.status();
    this.remove(running);
    this.log.info({ disk: diskPath, captureId: status.captureId, nextSequence: status.nextSequence }, 'capture stopped');
    return { ...status, streaming: false };
  }

  private remove(running: Running, because: 'stopped' | 'shutdown' = 'stopped'): void {
    this.running.delete(running.capture.path);
    running.scanner?.stop();
    running.capture.stop(because);
  }

  /**
   * ReleaseSource of a disk that a failback replaced: its capture (sequence,
   * scan baseline) describes the old file, so it stops; the next StartCapture
   * starts afresh on the new one.
   */
  stopStale(diskPath: string, reason: string): void {
    this.scanBaselines.delete(diskPath);
    const running = this.running.get(diskPath);
    if (!running) return;
    const status = running.capture.status();
    this.remove(running);
    this.log.info({ disk: diskPath, captureId: status.captureId, reason }, 'capture stopped');
  }

  list(): CaptureStatus[] {
    return [...this.running.values()].map((running) => withPassProgress(running));
  }

  /** The running capture of a disk, or FAILED_PRECONDITION. */
  get(requested: string): Capture {
    const diskPath = this.disks.authorize(requested);
    const running = this.running.get(diskPath);
    if (!running) throw failedPrecondition(`no capture of ${diskPath}: StartCapture first`);
    return running.capture;
  }

  /** The write-through capture of a disk, if one runs (a scan capture records its writes by scanning). */
  writeThrough(diskPath: string): Capture | undefined {
    const capture = this.running.get(diskPath)?.capture;
    return capture?.mode === 'CAPTURE_WRITE_THROUGH' ? capture : undefined;
  }

  /** The listed disks (empty: every captured disk), each captured; sorted, so two callers lock them in the same order. */
  captured(paths: readonly string[]): string[] {
    const wanted = paths.length ? paths.map((requested) => this.disks.authorize(requested)) : [...this.running.keys()];
    if (wanted.length === 0) throw failedPrecondition('no disk is being captured: StartCapture first');
    for (const diskPath of wanted) this.get(diskPath);
    return [...new Set(wanted)].sort();
  }

  /**
   * Puts a marker in a disk's stream. Write-through: between two writes.
   * Scan: after a pass run now, so the marker follows the changes made
   * before it (a scan marker is only as good as that pass).
   */
  async marker(diskPath: string, marker: MarkerKind__Output, tag: string): Promise<DiskMarker> {
    const running = this.running.get(diskPath);
    if (!running) throw failedPrecondition(`no capture of ${diskPath}: StartCapture first`);
    const { capture, scanner } = running;
    if (scanner) {
      const { value } = await scanner.pass(({ passTimeMs }) => {
        const record = capture.append({ marker, tag }, passTimeMs);
        return toDiskMarker(capture, record.sequence, record.timeMs);
      });
      return value!;
    }
    return this.betweenWrites(diskPath, () => {
      if (capture.stopped) throw failedPrecondition(`the capture of ${diskPath} stopped`);
      const record = capture.append({ marker, tag });
      return toDiskMarker(capture, record.sequence, record.timeMs);
    });
  }

  /**
   * Group barrier on one disk: waits for the writes already queued, puts the
   * marker after them, and holds later writes until release is called. A
   * scan capture cannot hold writes: it gets a pass and the marker.
   */
  async holdWrites(diskPath: string, tag: string): Promise<{ marker: DiskMarker; release: () => void }> {
    const running = this.running.get(diskPath);
    if (!running) throw failedPrecondition(`no capture of ${diskPath}: StartCapture first`);
    if (running.scanner) return { marker: await this.marker(diskPath, 'MARKER_GROUP_CONSISTENT', tag), release: () => undefined };
    // A disk shut down as a source takes no writes: there is nothing to hold.
    const release = this.shutDown(diskPath) ? () => undefined : await (await this.writers.get(diskPath)).queue.hold();
    const { capture } = running;
    if (capture.stopped) {
      release();
      throw failedPrecondition(`the capture of ${diskPath} stopped`);
    }
    const record = capture.append({ marker: 'MARKER_GROUP_CONSISTENT', tag });
    return { marker: toDiskMarker(capture, record.sequence, record.timeMs), release };
  }

  setHookError(paths: readonly string[], message: string): void {
    for (const diskPath of paths) {
      const capture = this.running.get(diskPath)?.capture;
      if (capture) capture.lastHookError = message;
    }
  }

  /** The agent is stopping: every capture ends, and its stream with UNAVAILABLE. */
  stopAll(): void {
    for (const running of [...this.running.values()]) this.remove(running, 'shutdown');
  }
}

function toDiskMarker(capture: Capture, sequence: number, timeMs: number): DiskMarker {
  return { path: capture.path, captureId: capture.captureId, sequence, timeMs };
}
