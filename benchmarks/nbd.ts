// Random writes through the agent's NBD export while drplane replicates them,
// against the same writes on the plain file, in the same run. fio (its nbd
// engine, libnbd) writes 4 KiB and 64 KiB blocks at queue depths 1 and 32 for
// a fixed time; the export is captured write-through and replicated (agent ->
// process server -> master target, real processes). For each job the
// benchmark reports IOPS, MB/s and write latency p50/p99 on both sides, the
// overhead of protection (plain / export), the RPO sampled from the process
// server during the job, the daemons' CPU seconds and each one's peak RSS.
// benchmarks/README.md explains the figures; docs/nbd.md the export.
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { unary } from '../shared/grpc';
import { writeRandomImage } from './images';
import { cpuDelta, DrplaneCluster } from './drplane-side';
import { bytesPerGibibyte, formatBytes, progress, runCommand, type PerDaemon } from './measure';
import { clockTicksPerSecond, roundCpu } from './process-usage';
import { formatPeakRssMiB, machineDescription, writeResultFile } from './report';
import { percentile } from './workload';
import { fail, positiveInteger, readOptions } from './options';

const repoRoot = path.resolve(__dirname, '..', '..');
const resultsDir = path.join(repoRoot, 'benchmarks', 'results');
const installScript = path.join(repoRoot, 'scripts', 'install-bench-deps.sh');
const diskId = 'bench-nbd';
/** How often the RPO is sampled during a job. */
const sampleIntervalMs = 250;
/** Give up waiting for the backlog to drain after a job after this long. */
const drainWaitMsMax = 120_000;
/** The floor: 64 KiB random writes at queue depth 32 through the export, replication on. */
const floor = { blockBytes: 64 * 1024, queueDepth: 32, bytesPerSecondMin: 200e6, rpoP99MsMax: 2_000 };

const usage = `Usage: npm run bench:nbd -- [options]
  --jobs LIST           block size:queue depth pairs (default 4k:1,4k:32,64k:1,64k:32)
  --seconds N           how long fio writes in each job (default 10)
  --size-mib N          size of the disk (default 1024)
  --crash-interval-ms N drplane closes a crash-consistent point at least this often (default 1000)
  --work-dir DIR        where the images go (default: the system temp dir)
  --keep                keep the work directory
  --seed N              seed of the image and of fio's offsets (default 1)
`;

interface Options {
  jobs: { blockBytes: number; queueDepth: number; label: string }[];
  seconds: number;
  diskBytes: number;
  crashIntervalMs: number;
  workParent: string;
  keep: boolean;
  seed: number;
}

function parseOptions(argv: string[]): Options {
  const { values, workParent, seed } = readOptions(
    argv,
    {
      jobs: { type: 'string', default: '4k:1,4k:32,64k:1,64k:32' },
      seconds: { type: 'string', default: '10' },
      'size-mib': { type: 'string', default: '1024' },
      'crash-interval-ms': { type: 'string', default: '1000' },
      keep: { type: 'boolean', default: false },
    },
    usage,
  );
  const jobs = values.jobs.split(',').map((text) => {
    const match = /^(\d+)k:(\d+)$/.exec(text.trim());
    if (!match || Number(match[1]) % 4 !== 0 || Number(match[2]) < 1) fail(`--jobs: ${text} is not SIZEk:DEPTH (SIZE a multiple of 4, DEPTH at least 1)`);
    return { blockBytes: Number(match[1]) * 1024, queueDepth: Number(match[2]), label: `${match[1]}k qd${match[2]}` };
  });
  return {
    jobs,
    seconds: positiveInteger('seconds', values.seconds),
    diskBytes: positiveInteger('size-mib', values['size-mib']) * 1024 * 1024,
    crashIntervalMs: positiveInteger('crash-interval-ms', values['crash-interval-ms']),
    workParent,
    keep: values.keep,
    seed,
  };
}

/** What fio reports for one job's writes. */
interface FioResult {
  engine: string;
  iops: number;
  bytesPerSecond: number;
  latencyP50Us: number;
  latencyP99Us: number;
  writtenBytes: number;
}

/** Runs fio's random-write job and reads its JSON output. */
async function runFio(target: { engine: string; args: string[] }, job: Options['jobs'][number], options: Options, seed: number): Promise<FioResult> {
  const { stdout } = await runCommand('fio', [
    '--name=randwrite',
    `--ioengine=${target.engine}`,
    ...target.args,
    '--rw=randwrite',
    `--bs=${job.blockBytes}`,
    `--iodepth=${job.queueDepth}`,
    `--size=${options.diskBytes}`,
    '--time_based',
    `--runtime=${options.seconds}`,
    `--randseed=${seed}`,
    '--lat_percentiles=1',
    '--output-format=json',
  ]);
  const write = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0].write;
  const percentiles = write.lat_ns?.percentile ?? write.clat_ns?.percentile ?? {};
  return {
    engine: target.engine,
    iops: write.iops,
    bytesPerSecond: write.bw_bytes,
    latencyP50Us: (percentiles['50.000000'] ?? Number.NaN) / 1000,
    latencyP99Us: (percentiles['99.000000'] ?? Number.NaN) / 1000,
    writtenBytes: write.io_bytes,
  };
}

/** The plain file's engine: io_uring where the kernel allows it (a queue depth that means something for buffered writes), else psync. */
function plainFileEngine(file: string): string {
  const probe = spawnSync('fio', ['--name=probe', '--ioengine=io_uring', `--filename=${file}`, '--rw=write', '--bs=4k', '--size=4k', '--output-format=json'], { encoding: 'utf8' });
  return probe.status === 0 ? 'io_uring' : 'psync';
}

interface JobResult {
  job: string;
  blockBytes: number;
  queueDepth: number;
  plain?: FioResult;
  export?: FioResult & {
    rpo: { p50Ms: number; p99Ms: number; maxMs: number; samples: number };
    drainMs: number;
    /** The bytes fio wrote over the time from fio's start until the backlog drained: the rate replication sustained. */
    replicatedBytesPerSecond: number;
    pointsMade: number;
  };
  /** plain MB/s divided by the export's: what protection costs (1 = nothing). */
  overheadRatio?: number;
  drplaneCpuSeconds?: number;
  drplaneCpuSecondsByDaemon?: PerDaemon;
  drplaneCpuSecondsPerGiBWritten?: number;
  drplanePeakRssBytes?: PerDaemon;
  error?: string;
}

async function exportJob(cluster: DrplaneCluster, socketPath: string, job: Options['jobs'][number], options: Options, seed: number): Promise<Pick<JobResult, 'export' | 'drplaneCpuSeconds' | 'drplaneCpuSecondsByDaemon' | 'drplanePeakRssBytes'>> {
  const client = cluster.processServerClient;
  const before = await unary(client, client.getReplication, { diskId });
  cluster.resetPeakRss();
  const cpuAtStart = cluster.cpuSecondsByDaemon();
  const rpos: number[] = [];
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      const status = await unary(client, client.getReplication, { diskId });
      if (status.latestRecoveryPointTimeMs > 0) rpos.push(Date.now() - status.latestRecoveryPointTimeMs);
      await new Promise((resolve) => setTimeout(resolve, sampleIntervalMs));
    }
  })();
  let fio: FioResult;
  const fioStarted = Date.now();
  try {
    fio = await runFio({ engine: 'nbd', args: [`--uri=nbd+unix:///?socket=${socketPath}`] }, job, options, seed);
  } finally {
    sampling = false;
    await sampler;
  }
  const drainStarted = Date.now();
  for (;;) {
    const status = await unary(client, client.getReplication, { diskId });
    if (status.backlogBytes === 0 && status.appliedSequence >= status.receivedSequence) break;
    if (Date.now() - drainStarted > drainWaitMsMax) throw new Error(`the backlog did not drain within ${drainWaitMsMax} ms: ${JSON.stringify(status)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const drainMs = Date.now() - drainStarted;
  const cpu = cpuDelta(cpuAtStart, cluster.cpuSecondsByDaemon());
  const after = await unary(client, client.getReplication, { diskId });
  const sorted = rpos.sort((a, b) => a - b);
  return {
    export: {
      ...fio,
      rpo: { p50Ms: percentile(sorted, 0.5), p99Ms: percentile(sorted, 0.99), maxMs: sorted[sorted.length - 1] ?? Number.NaN, samples: sorted.length },
      drainMs,
      replicatedBytesPerSecond: fio.writtenBytes / ((Date.now() - fioStarted) / 1000),
      pointsMade: after.recoveryPoints - before.recoveryPoints,
    },
    drplaneCpuSeconds: cpu.total,
    drplaneCpuSecondsByDaemon: cpu.byDaemon,
    drplanePeakRssBytes: cluster.peakRssBytes(),
  };
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const startedAt = new Date();
  progress('checking the tools (scripts/install-bench-deps.sh)');
  await runCommand(installScript, []);
  const workDir = fs.mkdtempSync(path.join(options.workParent, 'drplane-nbd-'));
  const cleanup = () => {
    if (!options.keep) fs.rmSync(workDir, { recursive: true, force: true });
  };
  process.once('SIGINT', () => (cleanup(), process.exit(130)));
  const source = path.join(workDir, 'source.img');
  const plain = path.join(workDir, 'plain.img');
  const socketPath = path.join(workDir, 'nbd.sock');
  const results: JobResult[] = [];
  let cluster: DrplaneCluster | undefined;
  let plainEngine = '';
  try {
    progress(`writing a ${formatBytes(options.diskBytes)} random image and its plain copy`);
    writeRandomImage(source, options.diskBytes, options.seed);
    await runCommand('cp', [source, plain]);
    plainEngine = plainFileEngine(plain);
    cluster = await DrplaneCluster.start(workDir, [source], { agentArgs: ['--nbd-listen', `unix:${socketPath}`] });
    await cluster.createReplica(diskId, options.diskBytes);
    progress('drplane: initial sync under write-through capture (untimed)');
    await cluster.startReplication(diskId, source, options.crashIntervalMs);
    for (const [index, job] of options.jobs.entries()) {
      const entry: JobResult = { job: job.label, blockBytes: job.blockBytes, queueDepth: job.queueDepth };
      results.push(entry);
      const seed = options.seed * 100 + index;
      try {
        progress(`${job.label}: fio on the plain file (${plainEngine}), ${options.seconds} s`);
        await runCommand('sync', []);
        entry.plain = await runFio({ engine: plainEngine, args: [`--filename=${plain}`] }, job, options, seed);
        progress(`${job.label}: fio through the NBD export, replicated, ${options.seconds} s`);
        await runCommand('sync', []);
        Object.assign(entry, await exportJob(cluster, socketPath, job, options, seed));
        entry.overheadRatio = entry.plain.bytesPerSecond / entry.export!.bytesPerSecond;
        entry.drplaneCpuSecondsPerGiBWritten = roundCpu(entry.drplaneCpuSeconds! / (entry.export!.writtenBytes / bytesPerGibibyte));
      } catch (error) {
        entry.error = (error as Error).message;
        progress(`${job.label} failed: ${entry.error}`);
      }
    }
    progress('drplane: checking that the replica equals the source');
    await cluster.verifyReplica(diskId, source);
  } finally {
    await cluster?.stop();
    cleanup();
  }

  const mb = (bytesPerSecond: number | undefined) => (bytesPerSecond === undefined ? '-' : (bytesPerSecond / 1e6).toFixed(1));
  const us = (value: number | undefined) => (value === undefined || Number.isNaN(value) ? '-' : value >= 1000 ? `${(value / 1000).toFixed(1)} ms` : `${Math.round(value)} us`);
  const header = ['job', 'plain MB/s', 'IOPS', 'lat p50', 'p99', 'export MB/s', 'IOPS', 'lat p50', 'p99', 'overhead', 'RPO p50', 'RPO p99', 'drain', 'replicated MB/s', 'cpu s', 'RSS MiB a/ps/mt'];
  const rows = results.map((entry) => [
    entry.job,
    mb(entry.plain?.bytesPerSecond),
    entry.plain ? String(Math.round(entry.plain.iops)) : '-',
    us(entry.plain?.latencyP50Us),
    us(entry.plain?.latencyP99Us),
    mb(entry.export?.bytesPerSecond),
    entry.export ? String(Math.round(entry.export.iops)) : '-',
    us(entry.export?.latencyP50Us),
    us(entry.export?.latencyP99Us),
    entry.overheadRatio === undefined ? '-' : `${entry.overheadRatio.toFixed(2)}x`,
    entry.export ? `${(entry.export.rpo.p50Ms / 1000).toFixed(2)} s` : '-',
    entry.export ? `${(entry.export.rpo.p99Ms / 1000).toFixed(2)} s` : '-',
    entry.export ? `${(entry.export.drainMs / 1000).toFixed(2)} s` : '-',
    mb(entry.export?.replicatedBytesPerSecond),
    entry.drplaneCpuSeconds === undefined ? '-' : entry.drplaneCpuSeconds.toFixed(2),
    formatPeakRssMiB(entry.drplanePeakRssBytes),
  ]);
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column]!.length)));
  const render = (cells: string[]) => cells.map((cell, column) => cell.padEnd(widths[column]!)).join('  ').trimEnd();
  process.stdout.write(`${[render(header), render(widths.map((width) => '-'.repeat(width))), ...rows.map(render)].join('\n')}\n`);
  process.stdout.write(
    `plain: fio (${plainEngine}) on a copy of the image, buffered, as the export writes its source; export: fio's nbd engine on the agent's export, captured write-through and replicated; overhead: plain MB/s / export MB/s; RPO: sampled every ${sampleIntervalMs} ms while fio wrote; drain: from fio's end until the backlog was applied; replicated MB/s: what fio wrote over the time from its start until then (the rate replication sustained); cpu s: the three daemons from the job's start until its backlog drained\n`,
  );
  for (const entry of results) if (entry.error) process.stdout.write(`${entry.job}: error: ${entry.error}\n`);
  const floorJob = results.find((entry) => entry.blockBytes === floor.blockBytes && entry.queueDepth === floor.queueDepth && entry.export);
  const floorText = floorJob
    ? `${floorJob.export!.bytesPerSecond >= floor.bytesPerSecondMin && floorJob.export!.rpo.p99Ms <= floor.rpoP99MsMax ? 'met' : 'NOT met'}: ${mb(floorJob.export!.bytesPerSecond)} MB/s (floor ${floor.bytesPerSecondMin / 1e6}), RPO p99 ${(floorJob.export!.rpo.p99Ms / 1000).toFixed(2)} s (floor ${floor.rpoP99MsMax / 1000} s)`
    : 'not measured (no 64k:32 job)';
  process.stdout.write(`floor, 64 KiB random writes at queue depth 32 through the export: ${floorText}\n`);
  const file = writeResultFile(resultsDir, startedAt, {
    kind: 'nbd',
    startedAt,
    options: { ...options, jobs: options.jobs.map((job) => job.label) },
    machine: machineDescription(),
    clockTicksPerSecond: clockTicksPerSecond(),
    floor: { ...floor, result: floorText },
    notes: [
      'plain: fio on a copy of the image (buffered, no fsync), the same job and seed; export: fio --ioengine=nbd (libnbd) on the agent export over its Unix socket, while the agent captures every write and drplane replicates it.',
      'overheadRatio: plain bytesPerSecond / export bytesPerSecond. Latencies: fio lat_ns percentiles (submission to completion).',
      "export.replicatedBytesPerSecond: export.writtenBytes over the time from fio's start until the backlog drained (drainMs after fio's end): the rate replication sustained, which a job longer than the backlog's room would also see at fio.",
      "drplaneCpuSeconds: user + system CPU of the three daemons (every thread) from the job's start until its backlog drained; drplanePeakRssBytes: VmHWM of each daemon over the job, reset at its start.",
    ],
    results,
  });
  progress(`results in ${file}`);
}

main().catch((error: unknown) => {
  process.stderr.write(`bench: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
