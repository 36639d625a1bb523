// Continuous replication at fixed write rates. A workload writes random 4-64 KiB
// blocks at each rate for a fixed time; drplane captures them write-through on
// the agent and replicates them (agent -> process server -> master target, real
// processes); the peer is what operators do without drplane: rsync the image in
// a loop (delta transfer, --inplace) while the same workload writes to it. For
// each rate the benchmark reports the rate achieved, the RPO p50/p99 of both
// sides (and their ratio), whether drplane sustained the rate, and each
// daemon's memory. benchmarks/README.md explains the figures.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { spawnSync } from 'node:child_process';
import { unary } from '../shared/grpc';
import { WriteThroughClient } from '../daemons/agent/write-client';
import { writeRandomImage } from './images';
import { RsyncDaemon, rsyncFlags, rsyncVersion } from './peers';
import { DrplaneCluster } from './drplane-side';
import { formatBytes, progress, runCommand } from './measure';
import { machineDescription, writeResultFile } from './report';
import { percentile, runWorkload, type WorkloadResult } from './workload';

const repoRoot = path.resolve(__dirname, '..', '..');
const resultsDir = path.join(repoRoot, 'benchmarks', 'results');
const installScript = path.join(repoRoot, 'scripts', 'install-bench-deps.sh');
/** How often the RPO and memory are sampled. */
const sampleIntervalMs = 250;
/** A rate counts as sustained when at least this share of it was written... */
const sustainedShareMin = 0.95;
/** ...and the backlog drained within this long after the workload stopped. */
const drainAfterWorkloadMaxMs = 5_000;
/** Give up waiting for a drain after this long. */
const drainWaitMaxMs = 120_000;
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
}

function fail(message: string): never {
  process.stderr.write(`bench: ${message}\n`);
  process.exit(2);
}

function parseOptions(argv: string[]): Options {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        rates: { type: 'string', default: '20,50,100,200' },
        seconds: { type: 'string', default: '20' },
        'size-mib': { type: 'string', default: '1024' },
        'crash-interval-ms': { type: 'string', default: '1000' },
        sides: { type: 'string', default: 'peers,drplane' },
        'work-dir': { type: 'string' },
        keep: { type: 'boolean', default: false },
        seed: { type: 'string', default: '1' },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
    }));
  } catch (error) {
    fail(`${(error as Error).message}\n${usage}`);
  }
  if (values.help) {
    process.stdout.write(usage);
    process.exit(0);
  }
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
    workParent: path.resolve(values['work-dir'] ?? os.tmpdir()),
    keep: values.keep,
    seed: Number(values.seed),
  };
}

/** Resident memory of a process: now and its peak (VmHWM), in bytes. */
function memoryOf(pid: number): { rssBytes: number; peakBytes: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024;
  return { rssBytes: field('VmRSS'), peakBytes: field('VmHWM') };
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
  backlogMaxBytes: number;
  memoryPeakBytes: Record<string, number>;
  pointsMade: number;
}

interface PeerRate {
  workload: WorkloadResult;
  rpo: RpoSummary;
  passes: number;
  passSecondsP50: number;
}

/** drplane at one rate: the workload through the agent, the RPO sampled from the process server. */
async function drplaneAtRate(cluster: DrplaneCluster, source: string, options: Options, bytesPerSecond: number, seed: number): Promise<DrplaneRate> {
  const client = cluster.processServerClient;
  const writer = new WriteThroughClient(cluster.agent.address);
  const rpos: number[] = [];
  let backlogMaxBytes = 0;
  const memoryPeakBytes: Record<string, number> = {};
  const before = await unary(client, client.getReplication, { diskId });
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const status = await unary(client, client.getReplication, { diskId });
      if (status.latestRecoveryPointTimeMs > 0) rpos.push(Date.now() - status.latestRecoveryPointTimeMs);
      backlogMaxBytes = Math.max(backlogMaxBytes, status.backlogBytes);
      for (const daemon of [cluster.agent, cluster.processServer, cluster.masterTarget]) {
        memoryPeakBytes[daemon.name] = Math.max(memoryPeakBytes[daemon.name] ?? 0, memoryOf(daemon.process.pid!).peakBytes);
      }
      await new Promise((resolve) => setTimeout(resolve, sampleIntervalMs));
    }
  })();
  let workload: WorkloadResult;
  try {
    workload = await runWorkload(async (offset, data) => void (await writer.write(source, offset, data)), { diskBytes: options.diskBytes, bytesPerSecond, seconds: options.seconds, seed });
  } finally {
    sampling = false;
    await sampler;
    writer.close();
  }
  const drainStarted = Date.now();
  for (;;) {
    const status = await unary(client, client.getReplication, { diskId });
    if (status.backlogBytes === 0 && status.appliedSequence >= status.receivedSequence) break;
    if (Date.now() - drainStarted > drainWaitMaxMs) throw new Error(`the backlog did not drain within ${drainWaitMaxMs} ms: ${JSON.stringify(status)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const drainMs = Date.now() - drainStarted;
  const after = await unary(client, client.getReplication, { diskId });
  return {
    workload,
    rpo: summarise(rpos),
    drainMs,
    sustained: workload.achievedBytesPerSecond >= sustainedShareMin * bytesPerSecond && drainMs <= drainAfterWorkloadMaxMs,
    backlogMaxBytes,
    memoryPeakBytes,
    pointsMade: after.recoveryPoints - before.recoveryPoints,
  };
}

/** The peer at one rate: the workload writes the file directly while rsync copies it again and again. */
async function peerAtRate(rsync: RsyncDaemon, source: string, options: Options, bytesPerSecond: number, seed: number): Promise<PeerRate> {
  const fd = fs.openSync(source, 'r+');
  const rpos: number[] = [];
  const passSeconds: number[] = [];
  /** When the last completed pass started: the copy holds at best the source of that moment. */
  let copiedStateTimeMs = Date.now();
  let running = true;
  const loop = (async () => {
    while (running) {
      const startedMs = Date.now();
      const sample = await rsync.transfer(source, 'peer.img', [...rsyncFlags.delta]);
      passSeconds.push(sample.seconds);
      copiedStateTimeMs = startedMs;
    }
  })();
  const sampler = (async () => {
    while (running) {
      rpos.push(Date.now() - copiedStateTimeMs);
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
  passSeconds.sort((a, b) => a - b);
  return { workload, rpo: summarise(rpos), passes: passSeconds.length, passSecondsP50: percentile(passSeconds, 0.5) };
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
  const results: { rateMBps: number; drplane?: DrplaneRate; peer?: PeerRate; error?: string }[] = [];
  let cluster: DrplaneCluster | undefined;
  let rsync: RsyncDaemon | undefined;
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
      cluster = await DrplaneCluster.start(workDir, [source]);
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
          entry.drplane = await drplaneAtRate(cluster, source, options, bytesPerSecond, options.seed * 100 + index);
        }
        if (rsync) {
          progress(`rsync loop at ${rate} MB/s for ${options.seconds} s`);
          entry.peer = await peerAtRate(rsync, peerSource, options, bytesPerSecond, options.seed * 100 + index);
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
    await cluster?.stop();
    await rsync?.stop();
    cleanup();
  }

  const header = ['rate MB/s', 'drplane achieved', 'sustained', 'RPO p50', 'RPO p99', 'drain', 'points', 'rsync-loop RPO p50', 'RPO p99', 'RPO ratio (p50)', 'peak RSS agent/PS/MT'];
  const rows = results.map(({ rateMBps, drplane, peer, error }) => [
    String(rateMBps),
    drplane ? mb(drplane.workload.achievedBytesPerSecond) : '-',
    drplane ? (drplane.sustained ? 'yes' : 'no') : '-',
    drplane ? seconds(drplane.rpo.p50Ms) : '-',
    drplane ? seconds(drplane.rpo.p99Ms) : '-',
    drplane ? seconds(drplane.drainMs) : '-',
    drplane ? String(drplane.pointsMade) : '-',
    peer ? seconds(peer.rpo.p50Ms) : '-',
    peer ? seconds(peer.rpo.p99Ms) : '-',
    drplane && peer ? `${(peer.rpo.p50Ms / drplane.rpo.p50Ms).toFixed(1)}x` : '-',
    drplane ? ['agent', 'process-server', 'master-target'].map((name) => formatBytes(drplane.memoryPeakBytes[name])).join(' / ') : error ? `error: ${error.slice(0, 80)}` : '-',
  ]);
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column]!.length)));
  const render = (cells: string[]) => cells.map((cell, column) => cell.padEnd(widths[column]!)).join('  ').trimEnd();
  process.stdout.write(`${[render(header), render(widths.map((width) => '-'.repeat(width))), ...rows.map(render)].join('\n')}\n`);
  const sustained = results.filter((entry) => entry.drplane?.sustained).map((entry) => entry.rateMBps);
  process.stdout.write(`highest sustained rate: ${sustained.length ? `${Math.max(...sustained)} MB/s` : 'none'}\n`);
  const file = writeResultFile(resultsDir, startedAt, { kind: 'continuous', startedAt, options, machine: machineDescription(), results });
  progress(`results in ${file}`);
}

void main().catch((error: unknown) => {
  process.stderr.write(`bench: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
