// Continuous replication at fixed write rates. A workload writes random 4-64 KiB
// blocks at each rate for a fixed time; drplane captures them write-through on
// the agent and replicates them (agent -> process server -> master target, real
// processes); the peer is what operators do without drplane: rsync the image in
// a loop (delta transfer, --inplace) while the same workload writes to it. For
// each rate the benchmark reports the rate achieved, the RPO p50/p99 of both
// sides (and their ratio), whether drplane sustained the rate, the CPU seconds
// of both sides and each daemon's peak memory, and draws RPO and backlog over
// time (an SVG next to the JSON). benchmarks/README.md explains the figures.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { unary } from '../shared/grpc';
import { WriteThroughClient } from '../daemons/agent/write-client';
import { writeRandomImage } from './images';
import { RsyncDaemon, rsyncFlags, rsyncVersion } from './peers';
import { cpuDelta, DrplaneCluster } from './drplane-side';
import { bytesPerGibibyte, formatBytes, progress, runCommand, type PerDaemon } from './measure';
import { continuousChart, type SeriesPoint } from './plots';
import { checkProfiles } from './profiles';
import { clockTicksPerSecond, reapedChildrenCpu, roundCpu } from './process-usage';
import { formatPeakRssMiB, machineDescription, resultBaseName, writeResultFile, writeSvgNextTo } from './report';
import { percentile, runWorkload, type WorkloadResult } from './workload';
import { fail, readOptions } from './options';

const repoRoot = path.resolve(__dirname, '..', '..');
const resultsDir = path.join(repoRoot, 'benchmarks', 'results');
const installScript = path.join(repoRoot, 'scripts', 'install-bench-deps.sh');
/** How often the RPO and memory are sampled. */
const sampleIntervalMs = 250;
/** A rate counts as sustained when at least this share of it was written... */
const sustainedShareMin = 0.95;
/** ...and the backlog drained within this long after the workload stopped. */
const drainAfterWorkloadMsMax = 5_000;
/** Give up waiting for a drain after this long. */
const drainWaitMsMax = 120_000;
const diskId = 'bench-disk';

const usage = `Usage: npm run bench:continuous -- [options]
  --rates LIST          write rates in MB/s, comma-separated (default 20,50,100,200)
  --seconds N           how long the workload runs at each rate (default 20)
  --size-mib N          size of the disk (default 1024)
  --crash-interval-ms N drplane closes a crash-consistent point at least this often (default 1000)
  --sides LIST          peers,drplane (default both)
  --work-dir DIR        where the images go (default: the system temp dir)
  --keep                keep the work directory
  --seed N              seed of the image and the writes (default 1)
  --profile             run the daemons with node --cpu-prof; the profiles go to
                        benchmarks/results/<timestamp>-profiles/<daemon>/ (read
                        them with node dist/benchmarks/profile-summary.js DIR)
`;

interface Options {
  rates: number[];
  seconds: number;
  diskBytes: number;
  crashIntervalMs: number;
  sides: string[];
  workParent: string;
  keep: boolean;
  seed: number;
  profile: boolean;
}

function parseOptions(argv: string[]): Options {
  const { values, workParent, seed } = readOptions(
    argv,
    {
      rates: { type: 'string', default: '20,50,100,200' },
      seconds: { type: 'string', default: '20' },
      'size-mib': { type: 'string', default: '1024' },
      'crash-interval-ms': { type: 'string', default: '1000' },
      sides: { type: 'string', default: 'peers,drplane' },
      keep: { type: 'boolean', default: false },
      profile: { type: 'boolean', default: false },
    },
    usage,
  );
  const number = (flag: string, text: string) => {
    const value = Number(text);
    if (!Number.isFinite(value) || value <= 0) fail(`--${flag} must be a positive number, got "${text}"`);
    return value;
  };
  const sides = values.sides.split(',').filter(Boolean);
  for (const side of sides) if (side !== 'peers' && side !== 'drplane') fail(`--sides: unknown "${side}"`);
  return {
    rates: values.rates.split(',').map((rate) => number('rates', rate)),
    seconds: number('seconds', values.seconds),
    diskBytes: Math.round(number('size-mib', values['size-mib'])) * 1024 * 1024,
    crashIntervalMs: Math.round(number('crash-interval-ms', values['crash-interval-ms'])),
    sides,
    workParent,
    keep: values.keep,
    seed,
    profile: values.profile,
  };
}

interface RpoSummary {
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  samples: number;
}

function summarise(rpos: number[]): RpoSummary {
  const sorted = [...rpos].sort((a, b) => a - b);
  return { p50Ms: percentile(sorted, 0.5), p99Ms: percentile(sorted, 0.99), maxMs: sorted[sorted.length - 1] ?? Number.NaN, samples: sorted.length };
}

interface DrplaneRate {
  workload: WorkloadResult;
  rpo: RpoSummary;
  drainMs: number;
  sustained: boolean;
  backlogBytesMax: number;
  pointsMade: number;
  /** CPU seconds (user + system) of the three daemons from the workload's start until the backlog drained. */
  cpuSeconds: number;
  cpuSecondsByDaemon: PerDaemon;
  /** Each daemon's peak RSS over the same window (VmHWM, reset at the start of the rate), bytes. */
  peakRssBytes: PerDaemon;
  /** Every 250 ms from the workload's start until the backlog drained (the RPO summary uses the workload's part only). */
  series: SeriesPoint[];
}

interface PeerRate {
  workload: WorkloadResult;
  rpo: RpoSummary;
  passes: number;
  passSecondsP50: number;
  /** CPU seconds of the rsync clients and of the rsync daemon (with its per-connection processes) from the loop's start to the end of its last pass. */
  cpuSeconds: number;
  /** The rsync loop's RPO every 250 ms while the workload ran. */
  series: SeriesPoint[];
}

/** What the result file holds per rate; the top-level figures have the names and shapes of run.ts's rows. */
interface RateResult {
  rateMBps: number;
  drplaneCpuSeconds?: number;
  drplaneCpuSecondsByDaemon?: PerDaemon;
  /** drplaneCpuSeconds per GiB (2^30 bytes) the workload wrote. */
  drplaneCpuSecondsPerGiBWritten?: number;
  drplanePeakRssBytes?: PerDaemon;
  peerCpuSeconds?: number;
  peerCpuSecondsPerGiBWritten?: number;
  drplane?: Omit<DrplaneRate, 'cpuSeconds' | 'cpuSecondsByDaemon' | 'peakRssBytes'>;
  peer?: Omit<PeerRate, 'cpuSeconds'>;
  error?: string;
}

/** drplane at one rate: the workload through the agent, the RPO sampled from the process server. */
async function drplaneAtRate(cluster: DrplaneCluster, source: string, options: Options, bytesPerSecond: number, seed: number): Promise<DrplaneRate> {
  const client = cluster.processServerClient;
  const writer = new WriteThroughClient(cluster.agent.address);
  const rpos: number[] = [];
  const series: SeriesPoint[] = [];
  let backlogBytesMax = 0;
  const before = await unary(client, client.getReplication, { diskId });
  cluster.resetPeakRss();
  const cpuAtStart = cluster.cpuSecondsByDaemon();
  const startedMs = Date.now();
  let workloadRunning = true;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const status = await unary(client, client.getReplication, { diskId });
      const now = Date.now();
      const rpoMs = status.latestRecoveryPointTimeMs > 0 ? now - status.latestRecoveryPointTimeMs : undefined;
      series.push({ tMs: now - startedMs, rpoMs, backlogBytes: status.backlogBytes });
      if (workloadRunning) {
        if (rpoMs !== undefined) rpos.push(rpoMs);
        backlogBytesMax = Math.max(backlogBytesMax, status.backlogBytes);
      }
      await new Promise((resolve) => setTimeout(resolve, sampleIntervalMs));
    }
  })();
  let workload: WorkloadResult;
  let drainMs: number;
  try {
    try {
      workload = await runWorkload(async (offset, data) => void (await writer.write(source, offset, data)), { diskBytes: options.diskBytes, bytesPerSecond, seconds: options.seconds, seed });
    } finally {
      workloadRunning = false;
      writer.close();
    }
    const drainStarted = Date.now();
    for (;;) {
      const status = await unary(client, client.getReplication, { diskId });
      if (status.backlogBytes === 0 && status.appliedSequence >= status.receivedSequence) break;
      if (Date.now() - drainStarted > drainWaitMsMax) throw new Error(`the backlog did not drain within ${drainWaitMsMax} ms: ${JSON.stringify(status)}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    drainMs = Date.now() - drainStarted;
  } finally {
    sampling = false;
    await sampler;
  }
  const cpu = cpuDelta(cpuAtStart, cluster.cpuSecondsByDaemon());
  const peakRssBytes = cluster.peakRssBytes();
  const after = await unary(client, client.getReplication, { diskId });
  // The drained state, so that the series ends where the drain ended.
  const now = Date.now();
  series.push({ tMs: now - startedMs, rpoMs: after.latestRecoveryPointTimeMs > 0 ? now - after.latestRecoveryPointTimeMs : undefined, backlogBytes: after.backlogBytes });
  return {
    workload,
    rpo: summarise(rpos),
    drainMs,
    sustained: workload.achievedBytesPerSecond >= sustainedShareMin * bytesPerSecond && drainMs <= drainAfterWorkloadMsMax,
    backlogBytesMax,
    pointsMade: after.recoveryPoints - before.recoveryPoints,
    cpuSeconds: cpu.total,
    cpuSecondsByDaemon: cpu.byDaemon,
    peakRssBytes,
    series,
  };
}

/** The peer at one rate: the workload writes the file directly while rsync copies it again and again. */
async function peerAtRate(rsync: RsyncDaemon, source: string, options: Options, bytesPerSecond: number, seed: number): Promise<PeerRate> {
  const fd = fs.openSync(source, 'r+');
  const rpos: number[] = [];
  const series: SeriesPoint[] = [];
  const passSeconds: number[] = [];
  // CPU over the whole loop: the rsync clients are this process's only children that exit meanwhile.
  const clientCpu = reapedChildrenCpu();
  const daemonCpuAtStart = rsync.cpuSeconds();
  const loopStartedMs = Date.now();
  /** When the last completed pass started: the copy holds at best the source of that moment. */
  let copiedStateTimeMs = loopStartedMs;
  let running = true;
  const loop = (async () => {
    while (running) {
      const startedMs = Date.now();
      const sample = await rsync.transfer(source, 'peer.img', [...rsyncFlags.delta], { accountCpu: false });
      passSeconds.push(sample.seconds);
      copiedStateTimeMs = startedMs;
    }
  })();
  const sampler = (async () => {
    while (running) {
      const now = Date.now();
      rpos.push(now - copiedStateTimeMs);
      series.push({ tMs: now - loopStartedMs, rpoMs: now - copiedStateTimeMs });
      await new Promise((resolve) => setTimeout(resolve, sampleIntervalMs));
    }
  })();
  let workload: WorkloadResult;
  try {
    workload = await runWorkload(
      (offset, data) =>
        new Promise<void>((resolve, reject) => fs.write(fd, data, 0, data.length, offset, (error) => (error ? reject(error) : resolve()))),
      { diskBytes: options.diskBytes, bytesPerSecond, seconds: options.seconds, seed },
    );
  } finally {
    running = false;
    await Promise.all([loop, sampler]);
    fs.closeSync(fd);
  }
  const clientCpuSeconds = clientCpu();
  await rsync.settle();
  const cpuSeconds = roundCpu(clientCpuSeconds + rsync.cpuSeconds() - daemonCpuAtStart);
  passSeconds.sort((a, b) => a - b);
  return { workload, rpo: summarise(rpos), passes: passSeconds.length, passSecondsP50: percentile(passSeconds, 0.5), cpuSeconds, series };
}

function ensureRsync(): void {
  if (rsyncVersion()) return;
  if (process.getuid?.() !== 0) fail(`rsync is not installed; run 'sudo ${installScript}' (or pass --sides drplane)`);
  const result = spawnSync(installScript, [], { stdio: 'inherit' });
  if (result.status !== 0 || !rsyncVersion()) fail(`could not install rsync with ${installScript}`);
}

const mb = (bytesPerSecond: number) => (bytesPerSecond / 1e6).toFixed(1);
const seconds = (ms: number) => (Number.isFinite(ms) ? `${(ms / 1000).toFixed(2)} s` : '-');

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const startedAt = new Date();
  if (options.sides.includes('peers')) ensureRsync();
  const workDir = fs.mkdtempSync(path.join(options.workParent, 'drplane-continuous-'));
  const cleanup = () => {
    if (!options.keep) fs.rmSync(workDir, { recursive: true, force: true });
  };
  process.once('SIGINT', () => (cleanup(), process.exit(130)));
  const results: RateResult[] = [];
  let cluster: DrplaneCluster | undefined;
  let rsync: RsyncDaemon | undefined;
  const profileDir = options.profile ? path.join(resultsDir, `${resultBaseName(startedAt)}-profiles`) : undefined;
  let profileReport: string | undefined;
  try {
    const source = path.join(workDir, 'source.img');
    const peerSource = path.join(workDir, 'peer-source.img');
    progress(`writing a ${formatBytes(options.diskBytes)} random image`);
    writeRandomImage(source, options.diskBytes, options.seed);
    if (options.sides.includes('peers')) {
      await runCommand('cp', ['--sparse=always', source, peerSource]);
      rsync = await RsyncDaemon.start(path.join(workDir, 'rsyncd'), path.join(workDir, 'rsync-target'));
      progress('rsync: first copy (untimed)');
      await rsync.transfer(peerSource, 'peer.img', ['--whole-file']);
    }
    if (options.sides.includes('drplane')) {
      cluster = await DrplaneCluster.start(workDir, [source], { profileDir });
      if (profileDir) progress(`drplane: profiling the daemons into ${profileDir}`);
      await cluster.createReplica(diskId, options.diskBytes);
      progress('drplane: initial sync under write-through capture (untimed)');
      await cluster.startReplication(diskId, source, options.crashIntervalMs);
    }
    for (const [index, rate] of options.rates.entries()) {
      const bytesPerSecond = rate * 1e6;
      const entry: (typeof results)[number] = { rateMBps: rate };
      results.push(entry);
      try {
        if (cluster) {
          progress(`drplane at ${rate} MB/s for ${options.seconds} s`);
          const { cpuSeconds, cpuSecondsByDaemon, peakRssBytes, ...drplane } = await drplaneAtRate(cluster, source, options, bytesPerSecond, options.seed * 100 + index);
          entry.drplaneCpuSeconds = cpuSeconds;
          entry.drplaneCpuSecondsByDaemon = cpuSecondsByDaemon;
          entry.drplaneCpuSecondsPerGiBWritten = roundCpu(cpuSeconds / (drplane.workload.bytes / bytesPerGibibyte));
          entry.drplanePeakRssBytes = peakRssBytes;
          entry.drplane = drplane;
        }
        if (rsync) {
          progress(`rsync loop at ${rate} MB/s for ${options.seconds} s`);
          const { cpuSeconds, ...peer } = await peerAtRate(rsync, peerSource, options, bytesPerSecond, options.seed * 100 + index);
          entry.peerCpuSeconds = cpuSeconds;
          entry.peerCpuSecondsPerGiBWritten = roundCpu(cpuSeconds / (peer.workload.bytes / bytesPerGibibyte));
          entry.peer = peer;
        }
      } catch (error) {
        entry.error = (error as Error).message;
        progress(`${rate} MB/s failed: ${entry.error}`);
      }
    }
    if (cluster) {
      progress('drplane: checking that the replica equals the source');
      await cluster.verifyReplica(diskId, source);
    }
  } finally {
    if (cluster) {
      const exits = await cluster.stop();
      // Node writes a daemon's profiles as it exits: check that they are there.
      if (profileDir) profileReport = checkProfiles(profileDir, exits).text;
    }
    await rsync?.stop();
    cleanup();
  }

  const header = ['rate MB/s', 'drplane achieved', 'sustained', 'RPO p50', 'RPO p99', 'drain', 'points', 'cpu s', 'RSS MiB a/ps/mt', 'rsync-loop RPO p50', 'RPO p99', 'rsync-loop cpu s', 'RPO ratio (p50)'];
  const cpuText = (value: number | undefined) => (value === undefined ? '-' : value.toFixed(2));
  const rows = results.map(({ rateMBps, drplane, peer, drplaneCpuSeconds, drplanePeakRssBytes, peerCpuSeconds }) => [
    String(rateMBps),
    drplane ? mb(drplane.workload.achievedBytesPerSecond) : '-',
    drplane ? (drplane.sustained ? 'yes' : 'no') : '-',
    drplane ? seconds(drplane.rpo.p50Ms) : '-',
    drplane ? seconds(drplane.rpo.p99Ms) : '-',
    drplane ? seconds(drplane.drainMs) : '-',
    drplane ? String(drplane.pointsMade) : '-',
    cpuText(drplaneCpuSeconds),
    formatPeakRssMiB(drplanePeakRssBytes),
    peer ? seconds(peer.rpo.p50Ms) : '-',
    peer ? seconds(peer.rpo.p99Ms) : '-',
    cpuText(peerCpuSeconds),
    drplane && peer ? `${(peer.rpo.p50Ms / drplane.rpo.p50Ms).toFixed(1)}x` : '-',
  ]);
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column]!.length)));
  const render = (cells: string[]) => cells.map((cell, column) => cell.padEnd(widths[column]!)).join('  ').trimEnd();
  process.stdout.write(`${[render(header), render(widths.map((width) => '-'.repeat(width))), ...rows.map(render)].join('\n')}\n`);
  process.stdout.write(
    "cpu s: CPU seconds (user + system) of the three daemons from the workload's start until the backlog drained; rsync-loop cpu s: the rsync clients and daemon over the loop; RSS MiB a/ps/mt: peak RSS of agent / process server / master target during the rate\n",
  );
  for (const { rateMBps, error } of results) if (error) process.stdout.write(`${rateMBps} MB/s: error: ${error}\n`);
  if (cluster?.peakRssResetError) process.stdout.write(`note: ${cluster.peakRssResetError}\n`);
  const sustained = results.filter((entry) => entry.drplane?.sustained).map((entry) => entry.rateMBps);
  process.stdout.write(`highest sustained rate: ${sustained.length ? `${Math.max(...sustained)} MB/s` : 'none'}\n`);
  const file = writeResultFile(resultsDir, startedAt, {
    kind: 'continuous',
    startedAt,
    options,
    machine: machineDescription(),
    clockTicksPerSecond: clockTicksPerSecond(),
    profileDir,
    notes: [
      "drplaneCpuSeconds: user + system CPU of the three daemons (every thread, /proc/<pid>/stat) from the workload's start until the backlog drained; peerCpuSeconds: the rsync clients (reaped children of the benchmark) and the rsync daemon with its per-connection processes, from the loop's start to the end of its last pass. Per GiB written: divided by the bytes the workload wrote.",
      'drplanePeakRssBytes: VmHWM of each daemon at the end of the rate, reset (clear_refs 5) at its start.',
      'series: every 250 ms, tMs since the workload started; drplane samples continue through the drain, the rsync loop stops with the workload.',
      ...(options.profile ? ['--profile: the daemons ran with --cpu-prof, which slows them.'] : []),
    ],
    results,
  });
  const chartFile = writeSvgNextTo(
    file,
    continuousChart(
      results.map((entry) => ({ rateMBps: entry.rateMBps, workloadEndMs: entry.drplane ? entry.drplane.workload.seconds * 1000 : undefined, drplane: entry.drplane?.series, peer: entry.peer?.series })),
      `${options.seconds} s per rate, ${formatBytes(options.diskBytes)} disk, ${os.cpus().length} cores, node ${process.version}, ${startedAt.toISOString().slice(0, 16).replace('T', ' ')} UTC${options.profile ? ', PROFILED (slower)' : ''}`,
    ),
  );
  progress(`results in ${file}`);
  progress(`chart in ${chartFile}`);
  if (profileReport) process.stdout.write(`${profileReport}\n`);
}

void main().catch((error: unknown) => {
  process.stderr.write(`bench: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
