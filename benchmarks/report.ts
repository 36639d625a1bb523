// The table on stdout and the JSON result file.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bytesPerGibibyte, bytesPerGigabyte, daemonNames, formatBytes, median, medianSample, type PerDaemon, type Sample } from './measure';
import { roundCpu } from './process-usage';

/** A bar from the issue, checked on one row of a case. */
export interface Target {
  /** The peer the bar compares with. */
  peer: string;
  /** drplane throughput / peer throughput must be at least this. */
  speedRatioMin?: number;
  /** drplane wire bytes / bytes to move must be at most this. */
  wireRatioMax?: number;
  text: string;
}

export interface SideResult {
  name: string;
  samples: Sample[];
  error?: string;
  /** Untimed preparation, e.g. the full sync before a delta. */
  setup?: Record<string, unknown>;
}

export interface CaseResult {
  name: string;
  description: string;
  diskBytes: number;
  /** Bytes that must move for the target to equal the source: data bytes for a full sync, changed bytes for a delta. */
  bytesToMove: number;
  drplane?: SideResult;
  peers: SideResult[];
  targets: Target[];
}

export interface Row {
  case: string;
  drplaneSeconds?: number;
  drplaneGigabytesPerSecond?: number;
  drplaneWireBytes?: number;
  drplaneWirePerByteMoved?: number;
  peer: string;
  peerSeconds?: number;
  peerGigabytesPerSecond?: number;
  peerWireBytes?: number;
  peerWirePerByteMoved?: number;
  /** Median over the samples of the CPU seconds of the three daemons. */
  drplaneCpuSeconds?: number;
  /** Median over the samples of each daemon's CPU seconds (they need not add up to drplaneCpuSeconds). */
  drplaneCpuSecondsByDaemon?: PerDaemon;
  /** Median over the samples of the CPU seconds of the peer's processes (cp; cp and sync; the rsync client and daemon). */
  peerCpuSeconds?: number;
  /** drplaneCpuSeconds per GiB (2^30 bytes) of the disk, holes and unchanged blocks included. */
  drplaneCpuSecondsPerGiB?: number;
  peerCpuSecondsPerGiB?: number;
  /** The highest peak RSS of each daemon over the samples, bytes. */
  drplanePeakRssBytes?: PerDaemon;
  /** drplane throughput / peer throughput (= peer seconds / drplane seconds). */
  speedRatio?: number;
  target?: string;
  targetMet?: boolean;
  errors: string[];
}

interface Summary {
  seconds?: number;
  gigabytesPerSecond?: number;
  wireBytes?: number;
  cpuSeconds?: number;
  cpuSecondsPerGiB?: number;
  cpuSecondsByDaemon?: PerDaemon;
  peakRssBytes?: PerDaemon;
}

/** The median of the defined values, or undefined when there are none. */
function medianOf(values: (number | undefined)[]): number | undefined {
  const defined = values.filter((value): value is number => value !== undefined);
  return defined.length ? median(defined) : undefined;
}

function summarise(side: SideResult | undefined, diskBytes: number): Summary {
  if (!side || side.samples.length === 0) return {};
  const seconds = median(side.samples.map((sample) => sample.seconds));
  const wire = medianSample(side.samples).wireBytes;
  const cpuSeconds = medianOf(side.samples.map((sample) => sample.cpuSeconds));
  const byDaemon = side.samples.filter((sample) => sample.cpuSecondsByDaemon);
  const peaks = side.samples.filter((sample) => sample.peakRssBytes);
  return {
    seconds,
    gigabytesPerSecond: diskBytes / bytesPerGigabyte / seconds,
    wireBytes: wire,
    cpuSeconds: cpuSeconds === undefined ? undefined : roundCpu(cpuSeconds),
    cpuSecondsPerGiB: cpuSeconds === undefined ? undefined : roundCpu(cpuSeconds / (diskBytes / bytesPerGibibyte)),
    cpuSecondsByDaemon: byDaemon.length
      ? (Object.fromEntries(daemonNames.map((name) => [name, roundCpu(median(byDaemon.map((sample) => sample.cpuSecondsByDaemon![name])))])) as PerDaemon)
      : undefined,
    // The highest peak of all samples: memory is sized for the worst run, not the typical one.
    peakRssBytes: peaks.length ? (Object.fromEntries(daemonNames.map((name) => [name, Math.max(...peaks.map((sample) => sample.peakRssBytes![name]))])) as PerDaemon) : undefined,
  };
}

function sideErrors(...sides: (SideResult | undefined)[]): string[] {
  return sides.filter((side): side is SideResult => Boolean(side?.error)).map((side) => `${side.name}: ${side.error}`);
}

/** Errors in the table are cut to this; the JSON has them whole. */
const errorCharsShown = 600;

export function buildRows(cases: CaseResult[]): Row[] {
  const rows: Row[] = [];
  for (const result of cases) {
    const drplane = summarise(result.drplane, result.diskBytes);
    const perMoved = (wire: number | undefined) => (wire === undefined || result.bytesToMove === 0 ? undefined : wire / result.bytesToMove);
    const drplaneFields = (summary: Summary): Omit<Row, 'case' | 'peer' | 'errors'> => ({
      drplaneSeconds: summary.seconds,
      drplaneGigabytesPerSecond: summary.gigabytesPerSecond,
      drplaneWireBytes: summary.wireBytes,
      drplaneWirePerByteMoved: perMoved(summary.wireBytes),
      drplaneCpuSeconds: summary.cpuSeconds,
      drplaneCpuSecondsPerGiB: summary.cpuSecondsPerGiB,
      drplaneCpuSecondsByDaemon: summary.cpuSecondsByDaemon,
      drplanePeakRssBytes: summary.peakRssBytes,
    });
    for (const peer of result.peers) {
      const peerSummary = summarise(peer, result.diskBytes);
      const speedRatio = drplane.seconds !== undefined && peerSummary.seconds !== undefined ? peerSummary.seconds / drplane.seconds : undefined;
      const row: Row = {
        case: result.name,
        ...drplaneFields(drplane),
        peer: peer.name,
        peerSeconds: peerSummary.seconds,
        peerGigabytesPerSecond: peerSummary.gigabytesPerSecond,
        peerWireBytes: peerSummary.wireBytes,
        peerWirePerByteMoved: perMoved(peerSummary.wireBytes),
        peerCpuSeconds: peerSummary.cpuSeconds,
        peerCpuSecondsPerGiB: peerSummary.cpuSecondsPerGiB,
        speedRatio,
        errors: sideErrors(result.drplane, peer),
      };
      const target = result.targets.find((candidate) => candidate.peer === peer.name);
      if (target) {
        row.target = target.text;
        const checks: (boolean | undefined)[] = [];
        if (target.speedRatioMin !== undefined) checks.push(speedRatio === undefined ? undefined : speedRatio >= target.speedRatioMin);
        if (target.wireRatioMax !== undefined) checks.push(row.drplaneWirePerByteMoved === undefined ? undefined : row.drplaneWirePerByteMoved <= target.wireRatioMax);
        row.targetMet = checks.includes(undefined) ? undefined : checks.every(Boolean);
      }
      rows.push(row);
    }
    if (result.peers.length === 0) {
      rows.push({
        case: result.name,
        ...drplaneFields(drplane),
        peer: '(none run)',
        errors: sideErrors(result.drplane),
      });
    }
  }
  return rows;
}

const fixed = (value: number | undefined, digits: number, suffix = '') => (value === undefined || !Number.isFinite(value) ? '-' : `${value.toFixed(digits)}${suffix}`);

/** Peak RSS of agent / process server / master target in MiB, e.g. "92/131/88". */
export function formatPeakRssMiB(peaks: Partial<PerDaemon> | undefined): string {
  if (!peaks) return '-';
  return daemonNames.map((name) => (peaks[name] === undefined ? '-' : (peaks[name]! / 2 ** 20).toFixed(0))).join('/');
}

export function formatTable(rows: Row[]): string {
  const header = ['case', 'drplane s', 'GB/s', 'wire', 'wire/moved', 'cpu s', 'RSS MiB a/ps/mt', 'peer', 'peer s', 'peer GB/s', 'peer wire', 'peer wire/moved', 'peer cpu s', 'speed ratio', 'target', 'met'];
  const lines = rows.map((row) => [
    row.case,
    fixed(row.drplaneSeconds, 2),
    fixed(row.drplaneGigabytesPerSecond, 2),
    formatBytes(row.drplaneWireBytes),
    fixed(row.drplaneWirePerByteMoved, 2, 'x'),
    fixed(row.drplaneCpuSeconds, 2),
    formatPeakRssMiB(row.drplanePeakRssBytes),
    row.peer,
    fixed(row.peerSeconds, 2),
    fixed(row.peerGigabytesPerSecond, 2),
    formatBytes(row.peerWireBytes),
    fixed(row.peerWirePerByteMoved, 2, 'x'),
    fixed(row.peerCpuSeconds, 2),
    fixed(row.speedRatio, 2, 'x'),
    row.target ?? '',
    row.targetMet === undefined ? (row.target ? '?' : '') : row.targetMet ? 'yes' : 'NO',
  ]);
  const widths = header.map((title, column) => Math.max(title.length, ...lines.map((line) => line[column].length)));
  const render = (cells: string[]) => cells.map((cell, column) => cell.padEnd(widths[column])).join('  ').trimEnd();
  const out = [render(header), render(widths.map((width) => '-'.repeat(width))), ...lines.map(render)];
  const errors = rows.flatMap((row) => row.errors.map((error) => `${row.case} / ${error.length > errorCharsShown ? `${error.slice(0, errorCharsShown)}...` : error}`));
  if (errors.length) out.push('', 'errors (whole in the JSON file):', ...[...new Set(errors)].map((error) => `  ${error.replace(/\n/g, '\n    ')}`));
  return out.join('\n');
}

export function machineDescription() {
  const cpus = os.cpus();
  return {
    cpuModel: cpus[0]?.model,
    cpuCount: cpus.length,
    cpus: cpus.map((cpu) => ({ model: cpu.model, speedMHz: cpu.speed })),
    totalMemoryBytes: os.totalmem(),
    platform: os.platform(),
    release: os.release(),
    node: process.version,
    loadAverage: os.loadavg(),
  };
}

/** The base name of a run's files in the results directory: its start time, e.g. 2026-12-07T08-54-49-948Z. */
export function resultBaseName(startedAt: Date): string {
  return startedAt.toISOString().replace(/[:.]/g, '-');
}

/** Writes the result file benchmarks/results/<timestamp>.json and returns its path. */
export function writeResultFile(resultsDir: string, startedAt: Date, content: unknown): string {
  fs.mkdirSync(resultsDir, { recursive: true });
  const file = path.join(resultsDir, `${resultBaseName(startedAt)}.json`);
  fs.writeFileSync(file, `${JSON.stringify(content, null, 2)}\n`);
  return file;
}

/** Writes `svg` next to the result file (same base name, .svg) and returns its path. */
export function writeSvgNextTo(resultFile: string, svg: string): string {
  const file = resultFile.replace(/\.json$/, '') + '.svg';
  fs.writeFileSync(file, svg);
  return file;
}
