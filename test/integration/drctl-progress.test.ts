// Goal: drctl's progress tells the truth during a real enable (scan capture,
// real daemons, a disk large enough to take a few seconds). On a terminal of
// 100 columns (a pseudo-terminal made by script), `drctl job watch` redraws one
// bar per step in place: the initial sync's bar moves through intermediate
// values without going back, shows the disk's size as its total and an ETA
// before the end, and no line reaches past the last column. Not on a
// terminal, it prints plain lines (no control characters) at the interval
// asked; with --json, one JSON event per line whose bytes add up the same way.
import { execFileSync } from 'node:child_process';
import { randomFillSync } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { distRoot, repoRoot } from '../helpers/daemons';
import { renderTerminal, runInTerminal } from '../helpers/terminal';
import { spawnDrctl, startStack, type Stack } from '../helpers/stack';
import { formatBytes } from '../../shared/sizes';

const MiB = 1024 * 1024;
/** Half random data, half holes: the scan's first pass reads it all and ships the data. */
const ttyDiskBytes = 1024 * MiB;
const plainDiskBytes = 512 * MiB;
const columns = 100;
const drctlMain = path.join(distRoot, 'daemons', 'drctl', 'main.js');

function haveScript(): boolean {
  const found = () => {
    try {
      execFileSync('sh', ['-c', 'command -v script'], { stdio: 'ignore' });
      return true;
    } catch {
      return false;
    }
  };
  if (found()) return true;
  try {
    execFileSync(path.join(repoRoot, 'scripts', 'install-test-deps.sh'), { stdio: 'ignore' });
  } catch {
    // Not root, or no apt-get: the test says what is missing.
  }
  return found();
}

/**
 * A sparse image, random data in every other 4 MiB region and holes between
 * (as createImage makes, but from the kernel's generator: a gigabyte in well
 * under a second; what the bytes are does not matter here, only that they
 * do not compress or dedupe).
 */
function randomSparseImage(file: string, bytes: number): void {
  const regionBytes = 4 * MiB;
  const data = Buffer.allocUnsafe(regionBytes);
  const fd = fs.openSync(file, 'w');
  try {
    fs.ftruncateSync(fd, bytes);
    for (let offset = 0; offset < bytes; offset += 2 * regionBytes) {
      const length = Math.min(regionBytes, bytes - offset);
      randomFillSync(data, 0, length);
      fs.writeSync(fd, data, 0, length, offset);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/** "215.0 MiB" -> bytes (approximately: the figure is rounded to one decimal). */
function parseSize(text: string): number {
  const match = /^([\d.]+) (B|KiB|MiB|GiB|TiB)$/.exec(text);
  if (!match) throw new Error(`not a size: ${text}`);
  const unit = { B: 1, KiB: 1024, MiB: MiB, GiB: 1024 * MiB, TiB: 1024 * 1024 * MiB }[match[2] as 'B'];
  return Number(match[1]) * unit;
}

let stack: Stack;
let ttyDisk: string;
let plainDisk: string;

t.before(async () => {
  const dir = fs.mkdtempSync(path.join(fs.realpathSync('/tmp'), 'drplane-progress-'));
  ttyDisk = path.join(dir, 'vm1-disk0.img');
  plainDisk = path.join(dir, 'vm2-disk0.img');
  randomSparseImage(ttyDisk, ttyDiskBytes);
  randomSparseImage(plainDisk, plainDiskBytes);
  stack = await startStack(t, { dir, agents: [{ name: 'agent1', disks: [ttyDisk, plainDisk] }] });
  await stack.drctlJson('policy', 'create', 'fast', '--rpo-threshold', '5m', '--retention', '1h', '--crash-interval', '1s', '--app-interval', '30m');
});

const scriptMissing = haveScript() ? false : 'script (util-linux, Debian package bsdutils) is missing: scripts/install-test-deps.sh installs it (as root)';

t.test('job watch on a terminal: one bar per step, in place, within the width', { skip: scriptMissing }, async (t) => {
  await stack.drctlJson('machine', 'add', 'vm1', '--agent', 'agent1', '--disk', ttyDisk);
  const job = await stack.drctlJson<{ jobId: string }>('enable', 'vm1', '--datastore', path.join(stack.datastore, 'vm1'), '--policy', 'fast', '--capture', 'scan', '--scan-interval', '1s', '--no-watch');
  const run = await runInTerminal([process.execPath, drctlMain, '--server', stack.cs.address, 'job', 'watch', job.jobId], columns);
  const { frames, overflows } = renderTerminal(run.output, columns);
  if (process.env.DRPLANE_TEST_ECHO) t.comment(JSON.stringify(run.output));
  t.equal(run.code, 0, 'job watch exits 0: the job succeeded');
  t.same(overflows, [], `no line reaches past column ${columns}`);
  t.ok(frames.some((frame) => frame.startsWith(`job ${job.jobId} (enable-replication) succeeded`)), 'the summary line follows the bars');

  const total = formatBytes(ttyDiskBytes);
  const bar = /^initial-sync \[[#-]+\]\s+(\d+)%\s+(\S+ \S+) of (\S+ \S+)\s+(-\/s|\S+ \S+\/s)\s+ETA (\S+)/;
  const states = frames.flatMap((frame) => {
    const match = bar.exec(frame);
    return match ? [{ frame, percent: Number(match[1]), done: parseSize(match[2]!), total: match[3]!, rate: match[4]!, eta: match[5]! }] : [];
  });
  t.ok(states.length >= 3, `the initial sync's bar was drawn (${states.length} times)`);
  t.ok(
    states.every((state) => state.total === total),
    `every state of the bar shows the disk's size as its total (${total}): ${[...new Set(states.map((state) => state.total))].join(', ')}`,
  );
  const backwards = states.findIndex((state, index) => index > 0 && (state.percent < states[index - 1]!.percent || state.done < states[index - 1]!.done));
  t.equal(backwards, -1, backwards < 0 ? 'the bar never goes back' : `the bar went back: "${states[backwards - 1]!.frame}" then "${states[backwards]!.frame}"`);
  const intermediate = new Set(states.filter((state) => state.percent > 0 && state.percent < 100).map((state) => state.percent));
  t.ok(intermediate.size >= 3, `the bar moves through intermediate values (${[...intermediate].join(', ')}%)`);
  const withEta = states.filter((state) => state.percent < 100 && /^\d+s$|^\d+m\d\ds$/.test(state.eta));
  t.ok(withEta.length >= 1, `an ETA is shown before the end (e.g. "${withEta[0]?.frame ?? 'none'}")`);
  t.ok(
    states.some((state) => state.rate !== '-/s'),
    'a rate is shown',
  );
  const last = states[states.length - 1]!;
  t.equal(last.percent, 100, `the bar ends full: "${last.frame}"`);
  for (const step of ['create-replicas', 'start-replication']) t.ok(frames.some((frame) => frame.startsWith(`${step} succeeded`)), `step ${step} has its own line`);
});

t.test('job watch without a terminal prints plain lines; --json streams events', async (t) => {
  await stack.drctlJson('machine', 'add', 'vm2', '--agent', 'agent1', '--disk', plainDisk);
  const job = await stack.drctlJson<{ jobId: string }>('enable', 'vm2', '--datastore', path.join(stack.datastore, 'vm2'), '--policy', 'fast', '--capture', 'scan', '--scan-interval', '1s', '--no-watch');
  const [plain, json] = await Promise.all([
    spawnDrctl(['--server', stack.cs.address, '--progress-interval', '300ms', 'job', 'watch', job.jobId]),
    spawnDrctl(['--server', stack.cs.address, '--json', 'job', 'watch', job.jobId]),
  ]);

  if (process.env.DRPLANE_TEST_ECHO) t.comment(`${plain.stderr}${plain.stdout}${json.stdout.split('\n').slice(-3).join('\n')}`);
  t.equal(plain.code, 0, `job watch exits 0 (${plain.stderr.slice(-300)})`);
  // eslint-disable-next-line no-control-regex
  t.notMatch(plain.stderr, /[\r\x1b]/, 'no carriage returns or escape sequences');
  const lines = plain.stderr.trim().split('\n');
  const total = formatBytes(plainDiskBytes);
  const progress = lines.filter((line) => new RegExp(`^\\d\\d:\\d\\d:\\d\\d ${job.jobId} initial-sync +\\d+% .* of ${total.replace('.', '\\.')} `).test(line));
  t.ok(progress.length >= 1, `periodic lines of the initial sync, in real units (${progress.length}): ${progress[0] ?? lines.join(' | ')}`);
  t.ok(lines.some((line) => line.includes(`${job.jobId} initial-sync succeeded ${total} of ${total}`)), 'the step\'s end is a line of its own');
  t.match(plain.stdout, new RegExp(`^job ${job.jobId} \\(enable-replication\\) succeeded`), 'the summary on stdout');

  t.equal(json.code, 0, `job watch --json exits 0 (${json.stderr})`);
  const events = json.stdout.trim().split('\n').map((line) => JSON.parse(line) as { event: string; state: string; step: { name: string; bytesDone: number; bytesTotal: number } | null; bytesDone: number; bytesTotal: number; etaMs: number; bytesPerSecond: number });
  t.ok(events.length >= 3, `one JSON object per line (${events.length})`);
  t.equal(events[events.length - 1]!.event, 'end', 'the last event is the end');
  t.equal(events[events.length - 1]!.state, 'JOB_SUCCEEDED', 'and says the job succeeded');
  t.ok(events.slice(0, -1).every((event) => event.event === 'progress'), 'the others are progress events');
  const sync = events.filter((event) => event.step?.name === 'initial-sync');
  t.ok(sync.length >= 2, 'events of the initial sync');
  t.ok(sync.every((event) => event.step!.bytesTotal === plainDiskBytes), 'their step total is the disk size, in bytes');
  const backwards = sync.findIndex((event, index) => index > 0 && event.step!.bytesDone < sync[index - 1]!.step!.bytesDone);
  t.equal(backwards, -1, 'bytes done never go back');
  t.ok(sync.some((event) => event.step!.bytesDone > 0 && event.step!.bytesDone < plainDiskBytes), 'intermediate values');
  t.ok(sync.some((event) => event.etaMs > 0 && event.bytesPerSecond > 0), 'a rate and an ETA before the end');
});

t.test('materialise and backup, which are not jobs, show progress too', { skip: scriptMissing }, async (t) => {
  // vm2 is protected by the test before: its newest point, 512 MiB, materialised under a terminal.
  const target = path.join(stack.datastore, 'restore', 'vm2.img');
  const run = await runInTerminal([process.execPath, drctlMain, '--server', stack.cs.address, 'materialise', 'vm2-disk0@latest-processed', target], columns);
  const { frames, overflows } = renderTerminal(run.output, columns);
  t.equal(run.code, 0, `materialise exits 0 (${frames.slice(-3).join(' | ')})`);
  // The result (a long path) wraps as any output does; the bar's lines are made to fit.
  t.same(overflows.filter((text) => !text.startsWith('materialised ')), [], `no line of the bar reaches past column ${columns}`);
  const bar = /^materialise \[[#-]+\]\s+(\d+)%\s+(\S+ \S+) of (\S+ \S+)/;
  const states = frames.flatMap((frame) => {
    const match = bar.exec(frame);
    return match ? [{ frame, percent: Number(match[1]), total: match[3]! }] : [];
  });
  t.ok(states.length >= 1, `the materialisation's bar was drawn (${states.length} times)`);
  t.ok(states.every((state) => state.total === formatBytes(plainDiskBytes)), 'its total is the disk size');
  t.equal(states.findIndex((state, index) => index > 0 && state.percent < states[index - 1]!.percent), -1, 'it never goes back');
  t.match(states[states.length - 1]?.frame ?? '', /^materialise \[#+\] 100% .* done, /, 'it ends full, done');
  t.ok(frames.some((frame) => frame.startsWith('materialised vm2-disk0@')), 'then the result');
  t.equal(fs.statSync(target).size, plainDiskBytes, 'the file is the disk size');

  const backup = await spawnDrctl(['--server', stack.cs.address, 'backup', path.join(stack.dir, 'config.backup')]);
  t.equal(backup.code, 0, backup.stderr);
  t.match(backup.stderr, /^backup 100% .* of .* \(written to .*config\.backup\)$/m, `a plain line for the backup: ${backup.stderr.trim()}`);
});
