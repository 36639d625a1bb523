// drplane's data path against cp and rsync, in the same run, on the same
// images. `npm run bench -- --help` for the flags; benchmarks/README.md for what
// each case does and how bytes on the wire are counted.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { changeImage, copyImage, sha256File, allocatedBytes, writeHalfEmptyImage, writeRandomImage, type Image } from './images';
import { RsyncDaemon, rsyncFlags, rsyncVersion, timeCp } from './peers';
import { DrplaneCluster } from './drplane-side';
import { flushDirtyPages, prepareMeasurement, progress, type Sample } from './measure';
import { throughputChart } from './plots';
import { checkProfiles } from './profiles';
import { clockTicksPerSecond } from './process-usage';
import { buildRows, formatTable, machineDescription, resultBaseName, writeResultFile, writeSvgNextTo, type CaseResult, type SideResult } from './report';
import { fail, parseList, positiveInteger, readOptions } from './options';

const repoRoot = path.resolve(__dirname, '..', '..');
const resultsDir = path.join(repoRoot, 'benchmarks', 'results');
const installScript = path.join(repoRoot, 'scripts', 'install-bench-deps.sh');

const caseNames = ['full', 'half-empty', 'delta1', 'delta10', 'nochange'] as const;
type CaseName = (typeof caseNames)[number];
const sideNames = ['peers', 'drplane'] as const;
type SideName = (typeof sideNames)[number];

/** The image drplane syncs once, untimed, before the first measurement. */
const warmupBytes = 16 * 1024 * 1024;
/** Share of 4 KiB blocks each delta case changes. */
const changedShareByCase = { delta1: 0.01, delta10: 0.1, nochange: 0 } as const;
type DeltaCaseName = keyof typeof changedShareByCase;

const usage = `Usage: npm run bench -- [options]
  --size-mib N      size of each image in MiB (default 2048)
  --work-dir DIR    where the images go (default: the system temp dir); a fresh
                    drplane-bench-* directory is made inside it
  --keep            keep that directory at the end
  --cases LIST      comma-separated, from ${caseNames.join(',')} (default: all)
  --repeat N        runs of each measurement; the median is reported (default 1)
  --sides LIST      peers,drplane (default both); one alone for development
  --seed N          seed of the images and of the changed blocks (default 1)
  --profile         run the daemons with node --cpu-prof; the profiles go to
                    benchmarks/results/<timestamp>-profiles/<daemon>/ (read them
                    with node dist/benchmarks/profile-summary.js DIR)
  -h, --help
`;

interface Options {
  sizeBytes: number;
  workParent: string;
  keep: boolean;
  cases: CaseName[];
  repeat: number;
  sides: SideName[];
  seed: number;
  profile: boolean;
}

function parseOptions(argv: string[]): Options {
  const { values, workParent, seed } = readOptions(
    argv,
    {
      'size-mib': { type: 'string', default: '2048' },
      keep: { type: 'boolean', default: false },
      cases: { type: 'string', default: caseNames.join(',') },
      repeat: { type: 'string', default: '1' },
      sides: { type: 'string', default: sideNames.join(',') },
      profile: { type: 'boolean', default: false },
    },
    usage,
  );
  const sizeMib = positiveInteger('size-mib', values['size-mib']);
  return {
    sizeBytes: sizeMib * 1024 * 1024,
    workParent,
    keep: values.keep,
    cases: parseList('cases', values.cases, caseNames),
    repeat: positiveInteger('repeat', values.repeat),
    sides: parseList('sides', values.sides, sideNames),
    seed,
    profile: values.profile,
  };
}

/** rsync is the peer; install it with the project's script when we may, else say how. */
function ensureRsync(): string {
  const found = rsyncVersion();
  if (found) return found;
  if (process.getuid?.() !== 0) fail(`rsync is not installed; run 'sudo ${installScript}' and try again (or pass --sides drplane)`);
  progress(`rsync is missing: running ${installScript}`);
  const result = spawnSync(installScript, [], { stdio: 'inherit' });
  const installed = rsyncVersion();
  if (result.status !== 0 || !installed) fail(`could not install rsync with ${installScript}; install it by hand and try again`);
  return installed;
}

function checkFreeSpace(dir: string, needBytes: number): void {
  const stats = fs.statfsSync(dir);
  const freeBytes = stats.bavail * stats.bsize;
  if (freeBytes < needBytes) fail(`${dir} has ${(freeBytes / 2 ** 30).toFixed(1)} GiB free; this run needs about ${(needBytes / 2 ** 30).toFixed(1)} GiB (lower --size-mib or choose --work-dir)`);
}

/** Runs one side of one measurement, keeping its error instead of ending the run. */
async function measure(side: SideResult, run: () => Promise<Sample>): Promise<void> {
  if (side.error) return;
  try {
    side.samples.push(await run());
  } catch (error) {
    side.error = error instanceof Error ? error.message : String(error);
    progress(`${side.name} failed: ${side.error}`);
  }
}

function verifyCopy(what: string, file: string, expectedSha256: string): void {
  const actual = sha256File(file);
  if (actual !== expectedSha256) throw new Error(`${what}: ${file} does not equal the source (sha256 ${actual}, expected ${expectedSha256})`);
}

interface Context {
  options: Options;
  workDir: string;
  rsync?: RsyncDaemon;
  drplane?: DrplaneCluster;
  drplaneStartError?: string;
}

/** A full copy of `image`: cp, rsync --whole-file, and a drplane full sync into a new replica. */
async function runFullCase(context: Context, name: CaseName, image: Image, imageSha256: string, sparse: boolean): Promise<CaseResult> {
  const { options } = context;
  const rsyncPeer = sparse ? 'rsync --whole-file --sparse' : 'rsync --whole-file';
  const result: CaseResult = {
    name,
    description: sparse
      ? 'full sync of an image whose 4 MiB regions alternate random data and holes'
      : 'full sync of an all-random image',
    diskBytes: image.bytes,
    bytesToMove: image.dataBytes,
    peers: [],
    targets: sparse
      ? [{ peer: rsyncPeer, speedRatioMin: 2, text: 'far ahead of rsync (>= 2x)' }]
      : [{ peer: 'rsync --whole-file', speedRatioMin: 0.8, text: '>= 0.8x rsync --whole-file' }],
  };
  const cp: SideResult = { name: 'cp', samples: [] };
  const cpSync: SideResult = { name: 'cp + sync', samples: [] };
  const rsync: SideResult = { name: rsyncPeer, samples: [] };
  const drplane: SideResult = { name: 'drplane', samples: [], error: context.drplaneStartError };
  if (options.sides.includes('peers')) result.peers.push(rsync, cp, cpSync);
  if (options.sides.includes('drplane')) result.drplane = drplane;

  for (let repetition = 1; repetition <= options.repeat; repetition++) {
    const runPeers = async () => {
      if (!options.sides.includes('peers')) return;
      const cpTarget = path.join(context.workDir, 'cp', `${name}.img`);
      fs.mkdirSync(path.dirname(cpTarget), { recursive: true });
      progress(`${name} #${repetition}: cp`);
      try {
        const sourceCachedShare = await prepareMeasurement([image.path]);
        const timed = await timeCp(image.path, cpTarget);
        verifyCopy('cp', cpTarget, imageSha256);
        cp.samples.push({ ...timed.cp, details: { ...timed.cp.details, sourceCachedShare } });
        cpSync.samples.push({ ...timed.cpSync, details: { ...timed.cpSync.details, sourceCachedShare } });
      } catch (error) {
        cp.error = cpSync.error = (error as Error).message;
      }
      fs.rmSync(cpTarget, { force: true });

      progress(`${name} #${repetition}: ${rsyncPeer}`);
      const rsyncName = `${name}.img`;
      await measure(rsync, async () => {
        const sourceCachedShare = await prepareMeasurement([image.path]);
        const sample = await context.rsync!.transfer(image.path, rsyncName, sparse ? [...rsyncFlags.wholeFileSparse] : [...rsyncFlags.wholeFile], {
          verify: () => verifyCopy(rsyncPeer, context.rsync!.targetPath(rsyncName), imageSha256),
        });
        sample.details = { ...sample.details, sourceCachedShare, targetAllocatedBytes: allocatedBytes(context.rsync!.targetPath(rsyncName)) };
        return sample;
      });
      fs.rmSync(context.rsync!.targetPath(rsyncName), { force: true });
    };
    const runDrplane = async () => {
      if (!(options.sides.includes('drplane') && context.drplane)) return;
      const cluster = context.drplane;
      const diskId = `${name}-${repetition}`;
      let replicaPath: string | undefined;
      progress(`${name} #${repetition}: drplane full sync`);
      await measure(drplane, async () => {
        replicaPath = await cluster.createReplica(diskId, image.bytes);
        const sourceCachedShare = await prepareMeasurement([image.path]);
        const sample = await cluster.sync(diskId, image.path, 'SYNC_MODE_FULL', image.bytes);
        verifyCopy('drplane replica', replicaPath, imageSha256);
        sample.details = { ...sample.details, sourceCachedShare, replicaAllocatedBytes: allocatedBytes(replicaPath), cpuSecondsThroughVerify: cluster.cpuSecondsSinceLastSyncStart() };
        return sample;
      });
      // The replica stays known to the master target; only its bytes go, to spare the disk and the page cache.
      if (replicaPath) fs.rmSync(replicaPath, { force: true });
    };
    // Alternate which side goes first, so that neither always meets the machine in the same state.
    for (const run of repetition % 2 === 1 ? [runPeers, runDrplane] : [runDrplane, runPeers]) await run();
  }
  return result;
}

/**
 * A delta sync after `share` of the 4 KiB blocks changed. Each repetition starts
 * with both targets equal to the source, then changes the source and times
 * rsync's delta transfer and drplane's delta sync.
 */
async function runDeltaCase(context: Context, name: DeltaCaseName, source: Image): Promise<CaseResult> {
  const { options } = context;
  const share = changedShareByCase[name];
  const rsyncPeer = 'rsync delta';
  const result: CaseResult = {
    name,
    description: share === 0 ? 'delta sync with nothing changed' : `delta sync after ${share * 100} % of the 4 KiB blocks changed at random`,
    diskBytes: source.bytes,
    bytesToMove: 0,
    peers: [],
    targets: name === 'delta1' ? [{ peer: rsyncPeer, speedRatioMin: 5, wireRatioMax: 1.3, text: '>= 5x rsync delta, wire <= 1.3x changed' }] : [],
  };
  const rsync: SideResult = { name: rsyncPeer, samples: [] };
  const drplane: SideResult = { name: 'drplane', samples: [], error: context.drplaneStartError };
  if (options.sides.includes('peers')) result.peers.push(rsync);
  if (options.sides.includes('drplane')) result.drplane = drplane;
  const rsyncName = `${name}.img`;
  const cluster = options.sides.includes('drplane') ? context.drplane : undefined;
  let replicaPath = '';

  // drplane's replica starts as a full copy of the unchanged source (untimed).
  if (cluster) {
    progress(`${name}: drplane initial full sync (untimed)`);
    if (!drplane.error) {
      try {
        replicaPath = await cluster.createReplica(name, source.bytes);
        const initial = await cluster.sync(name, source.path, 'SYNC_MODE_FULL', source.bytes);
        drplane.setup = { initialFullSyncSeconds: initial.seconds, ...initial.details };
      } catch (error) {
        drplane.error = `initial full sync: ${(error as Error).message}`;
        progress(`drplane failed: ${drplane.error}`);
      }
    }
  }

  const changedBytes: number[] = [];
  for (let repetition = 1; repetition <= options.repeat; repetition++) {
    if (options.sides.includes('peers')) copyImage(source.path, context.rsync!.targetPath(rsyncName));
    const changed = share === 0 ? 0 : changeImage(source.path, share, options.seed * 1000 + repetition);
    changedBytes.push(changed);
    const expected = sha256File(source.path);

    const runPeers = async () => {
      if (!options.sides.includes('peers')) return;
      progress(`${name} #${repetition}: ${rsyncPeer}`);
      await measure(rsync, async () => {
        // rsync reads the source and its target (to checksum it).
        const sourceCachedShare = await prepareMeasurement([source.path, context.rsync!.targetPath(rsyncName)]);
        const sample = await context.rsync!.transfer(source.path, rsyncName, [...rsyncFlags.delta], {
          verify: () => verifyCopy(rsyncPeer, context.rsync!.targetPath(rsyncName), expected),
        });
        return { ...sample, details: { ...sample.details, sourceCachedShare, changedBytes: changed } };
      });
    };
    const runDrplane = async () => {
      if (!cluster) return;
      progress(`${name} #${repetition}: drplane delta sync`);
      await measure(drplane, async () => {
        // The agent reads the source; the master target may read its replica (before-images), as rsync's daemon reads its target.
        const sourceCachedShare = await prepareMeasurement([source.path, replicaPath]);
        const sample = await cluster.sync(name, source.path, 'SYNC_MODE_DELTA', source.bytes);
        verifyCopy('drplane replica', replicaPath, expected);
        return { ...sample, details: { ...sample.details, sourceCachedShare, changedBytes: changed, cpuSecondsThroughVerify: cluster.cpuSecondsSinceLastSyncStart() } };
      });
    };
    // Alternate which side goes first, so that neither always meets the machine in the same state.
    for (const run of repetition % 2 === 1 ? [runPeers, runDrplane] : [runDrplane, runPeers]) await run();
  }
  result.bytesToMove = changedBytes[Math.floor((changedBytes.length - 1) / 2)];
  if (options.sides.includes('peers')) fs.rmSync(context.rsync!.targetPath(rsyncName), { force: true });
  if (replicaPath) fs.rmSync(replicaPath, { force: true });
  return result;
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const startedAt = new Date();
  const rsyncVersionText = options.sides.includes('peers') ? ensureRsync() : rsyncVersion();
  fs.mkdirSync(options.workParent, { recursive: true });
  const deltaCases = options.cases.filter((name): name is DeltaCaseName => name in changedShareByCase);
  // Sources, plus at most one target per side at a time (each case removes its own).
  checkFreeSpace(options.workParent, options.sizeBytes * (2 + deltaCases.length + 2) + 256 * 2 ** 20);
  const workDir = fs.mkdtempSync(path.join(options.workParent, 'drplane-bench-'));
  const removeWorkDir = () => {
    if (!options.keep) fs.rmSync(workDir, { recursive: true, force: true });
  };
  process.once('exit', removeWorkDir);
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => process.exit(130));
  progress(`work dir ${workDir}${options.keep ? ' (kept)' : ''}; images of ${options.sizeBytes / 2 ** 20} MiB; cases ${options.cases.join(',')}; sides ${options.sides.join(',')}`);

  const sourcesDir = path.join(workDir, 'sources');
  fs.mkdirSync(sourcesDir, { recursive: true });
  progress('writing random.img');
  const random = writeRandomImage(path.join(sourcesDir, 'random.img'), options.sizeBytes, options.seed);
  const randomSha256 = sha256File(random.path);
  let halfEmpty: Image | undefined;
  let halfEmptySha256 = '';
  if (options.cases.includes('half-empty')) {
    progress('writing half-empty.img');
    halfEmpty = writeHalfEmptyImage(path.join(sourcesDir, 'half-empty.img'), options.sizeBytes, options.seed + 1);
    halfEmptySha256 = sha256File(halfEmpty.path);
  }
  const warmup = writeRandomImage(path.join(sourcesDir, 'warmup.img'), Math.min(warmupBytes, options.sizeBytes), options.seed + 2);
  // Each delta case gets its own copy of random.img as its source, made before the agent starts so it may read it.
  const deltaSources = new Map<DeltaCaseName, Image>();
  for (const name of deltaCases) {
    const file = path.join(sourcesDir, `${name}.img`);
    copyImage(random.path, file);
    deltaSources.set(name, { ...random, path: file });
  }
  await flushDirtyPages();

  const context: Context = { options, workDir };
  const cases: CaseResult[] = [];
  const profileDir = options.profile ? path.join(resultsDir, `${resultBaseName(startedAt)}-profiles`) : undefined;
  let profileReport: string | undefined;
  try {
    if (options.sides.includes('peers')) {
      context.rsync = await RsyncDaemon.start(path.join(workDir, 'rsyncd'), path.join(workDir, 'rsync-target'));
      progress(`rsync daemon on 127.0.0.1:${context.rsync.port}`);
    }
    if (options.sides.includes('drplane')) {
      try {
        const diskPaths = [warmup.path, random.path, ...(halfEmpty ? [halfEmpty.path] : []), ...[...deltaSources.values()].map((image) => image.path)];
        context.drplane = await DrplaneCluster.start(path.join(workDir, 'drplane'), diskPaths, { profileDir });
        if (profileDir) progress(`drplane: profiling the daemons into ${profileDir}`);
        progress(`drplane: agent ${context.drplane.agent.address}, process server ${context.drplane.processServer.address}, master target ${context.drplane.masterTarget.address}`);
        // The daemons are long-lived in production: connections, worker pools and JIT are warm before a real sync.
        progress('drplane: warm-up sync (untimed)');
        await context.drplane.createReplica('warmup', warmup.bytes);
        await context.drplane.sync('warmup', warmup.path, 'SYNC_MODE_FULL', warmup.bytes);
        await context.drplane.sync('warmup', warmup.path, 'SYNC_MODE_DELTA', warmup.bytes);
      } catch (error) {
        context.drplaneStartError = `${context.drplane ? 'the warm-up sync failed' : 'the daemons did not start'}: ${(error as Error).message}`;
        progress(context.drplaneStartError);
      }
    }

    for (const name of options.cases) {
      if (name === 'full') cases.push(await runFullCase(context, name, random, randomSha256, false));
      else if (name === 'half-empty') cases.push(await runFullCase(context, name, halfEmpty!, halfEmptySha256, true));
      else cases.push(await runDeltaCase(context, name, deltaSources.get(name)!));
    }
  } finally {
    await context.rsync?.stop();
    if (context.drplane) {
      const exits = await context.drplane.stop();
      // Node writes a daemon's profiles as it exits: check that they are there.
      if (profileDir) profileReport = checkProfiles(profileDir, exits).text;
    }
  }

  const rows = buildRows(cases);
  const table = formatTable(rows);
  const resultFile = writeResultFile(resultsDir, startedAt, {
    startedAt: startedAt.toISOString(),
    finishedAt: new Date().toISOString(),
    machine: machineDescription(),
    rsyncVersion: rsyncVersionText,
    options: { ...options, sizeMib: options.sizeBytes / 2 ** 20 },
    clockTicksPerSecond: clockTicksPerSecond(),
    profileDir,
    images: { random, halfEmpty },
    notes: [
      'Before every timed run: sync, then the files the run reads are read into page cache (sourceCachedShare: fincore of the source). Targets are written into page cache. drplane fdatasyncs each batch; cp and rsync do not sync (see "cp + sync").',
      'GB/s is disk bytes (1e9) per second of wall clock. drplane is timed from StartSync to the GetSync poll (every 50 ms) that sees COMPLETED.',
      'drplane wire bytes = process server bytes_sent (extents to the master target, after compression) + hash_bytes_exchanged; rsync wire bytes = Total bytes sent + received from --stats.',
      'cpuSeconds = user + system CPU (/proc stat, clock ticks) of every process of the side during the run: drplane, the three daemons (every thread) from StartSync to COMPLETED; cp, sync and the rsync client as reaped children of the benchmark; the rsync daemon with its per-connection children, read after the copy is verified. CPU per GiB divides by the disk size. drplanePeakRssBytes is the highest VmHWM of each daemon over the samples, reset (clear_refs 5) before each sync.',
      ...(options.profile ? ['--profile: the daemons ran with --cpu-prof, which slows them; do not compare these times with unprofiled runs.'] : []),
    ],
    cases,
    rows,
  });
  const loads = cases.flatMap((result) => [result.drplane, ...result.peers].flatMap((side) => side?.samples.map((sample) => sample.loadAverageAtStart) ?? []));
  const loadText = loads.length ? `; load average ${Math.min(...loads).toFixed(1)}-${Math.max(...loads).toFixed(1)} at the starts of the runs` : '';
  const chartSubtitle = `${options.sizeBytes / 2 ** 20} MiB images, median of ${options.repeat}, ${os.cpus().length} cores, node ${process.version}, ${startedAt.toISOString().slice(0, 16).replace('T', ' ')} UTC${options.profile ? ', PROFILED (slower)' : ''}`;
  const chartFile = writeSvgNextTo(resultFile, throughputChart(rows, chartSubtitle, Object.fromEntries(cases.map((result) => [result.name, result.description]))));
  const peakRssNote = context.drplane?.peakRssResetError ? `\nnote: ${context.drplane.peakRssResetError}` : '';
  process.stdout.write(
    `\ndrplane benchmark, ${options.sizeBytes / 2 ** 20} MiB images, median of ${options.repeat}, ${os.cpus().length} cores, node ${process.version}${loadText}${options.profile ? '; PROFILED: times are slower than without --profile' : ''}\n\n${table}\n` +
      `cpu s: CPU seconds (user + system) of the daemons / of the peer's processes; RSS MiB a/ps/mt: peak RSS of agent / process server / master target${peakRssNote}\n\nresults: ${resultFile}\nchart:   ${chartFile}\n${profileReport ? `${profileReport}\n` : ''}`,
  );
  if (rows.some((row) => row.errors.length)) process.exitCode = 1;
}

main().catch((error: unknown) => {
  process.stderr.write(`bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
});
