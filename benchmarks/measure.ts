// Timing, child processes and medians, shared by the peer side and the drplane side.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';

export const bytesPerGigabyte = 1e9;
/** CPU seconds are reported per GiB of the disk (2^30 bytes). */
export const bytesPerGibibyte = 2 ** 30;

/** drplane's three daemons, in the order the tables print them. */
export const daemonNames = ['agent', 'process-server', 'master-target'] as const;
export type BenchDaemonName = (typeof daemonNames)[number];
/** One figure per daemon, e.g. CPU seconds or peak RSS bytes. */
export type PerDaemon = Record<BenchDaemonName, number>;

/** One timed run of one side of one case. */
export interface Sample {
  seconds: number;
  /** Bytes that crossed the (loopback) network, as that side counts them; undefined when nothing crosses one (cp). */
  wireBytes?: number;
  /** One-minute load average when the run started: the machine is shared, so noisy runs show here. */
  loadAverageAtStart: number;
  /**
   * CPU seconds (user + system) of every process of the side during the run:
   * the three daemons for drplane; cp, sync, the rsync client and the rsync
   * daemon (with its per-connection children) for the peers.
   */
  cpuSeconds?: number;
  /** drplane only: cpuSeconds by daemon. */
  cpuSecondsByDaemon?: PerDaemon;
  /** drplane only: each daemon's peak RSS during the run (VmHWM after a reset through clear_refs), bytes. */
  peakRssBytes?: PerDaemon;
  /** Anything else the side reports (rsync --stats, the process server's SyncStatus). */
  details?: Record<string, unknown>;
}

export function nowSeconds(): number {
  return Number(process.hrtime.bigint()) / 1e9;
}

export function loadAverage(): number {
  return Number(os.loadavg()[0].toFixed(2));
}

export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/** The sample whose time is the median (the lower middle one for an even count), so its other figures travel with it. */
export function medianSample(samples: Sample[]): Sample {
  const sorted = [...samples].sort((a, b) => a.seconds - b.seconds);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

export interface CommandResult {
  seconds: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion and times it from spawn to exit; throws with its stderr when it fails. */
export function runCommand(command: string, args: string[], options: { cwd?: string } = {}): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const started = nowSeconds();
    const child = spawn(command, args, { cwd: options.cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => stderr.push(chunk));
    child.once('error', (error) => reject(new Error(`${command}: cannot run: ${error.message}`)));
    child.once('close', (code, signal) => {
      const seconds = nowSeconds() - started;
      const result = { seconds, stdout: Buffer.concat(stdout).toString(), stderr: Buffer.concat(stderr).toString() };
      if (code === 0) resolve(result);
      else reject(new Error(`${command} ${args.join(' ')} failed (${signal ?? `exit code ${code}`}): ${result.stderr.trim() || result.stdout.trim()}`));
    });
  });
}

/**
 * Writes back every dirty page of the machine, untimed, before each measurement,
 * so that one run's write-back does not land in the next run's time.
 */
export async function flushDirtyPages(): Promise<void> {
  await runCommand('sync', []);
}

/** Pieces in which files are read into page cache. */
const warmReadBytes = 8 * 1024 * 1024;

/**
 * Reads files whole so that they are in page cache. Needed before every timed run:
 * these machines page out memory left untouched for about a minute (DAMON
 * "pageout" on physical memory), page cache included.
 */
export function readIntoPageCache(files: string[]): void {
  const buffer = Buffer.allocUnsafe(warmReadBytes);
  for (const file of files) {
    const fd = fs.openSync(file, 'r');
    try {
      while (fs.readSync(fd, buffer, 0, buffer.length, null) > 0);
    } finally {
      fs.closeSync(fd);
    }
  }
}

/** The share of a file that is in page cache (util-linux fincore), or undefined where fincore is missing. */
export function cachedShare(file: string): number | undefined {
  const result = spawnSync('fincore', ['--bytes', '--noheadings', '--raw', '--output', 'RES,SIZE', file], { encoding: 'utf8' });
  if (result.error || result.status !== 0) return undefined;
  const [resident, size] = result.stdout.trim().split(/\s+/).map(Number);
  return size > 0 ? Number((resident / size).toFixed(3)) : 1;
}

/**
 * The same preparation before every timed run: write back dirty pages (so one run's
 * write-back does not land in the next run's time), then bring the files the run
 * reads into page cache. Returns the share of the first file that is cached.
 */
export async function prepareMeasurement(filesRead: string[]): Promise<number | undefined> {
  await flushDirtyPages();
  readIntoPageCache(filesRead);
  return filesRead.length ? cachedShare(filesRead[0]) : undefined;
}

export function formatBytes(bytes: number | undefined): string {
  if (bytes === undefined || Number.isNaN(bytes)) return '-';
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(2)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  if (bytes >= 1e3) return `${(bytes / 1e3).toFixed(1)} kB`;
  return `${bytes} B`;
}

/** Progress for the operator, on stderr so that stdout holds only the table. */
export function progress(message: string): void {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${message}\n`);
}
