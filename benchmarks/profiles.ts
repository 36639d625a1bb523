// CPU profiles of the daemons (--profile): where node writes them, a check that
// they exist, and a summary by function that can be read without Chrome.
import fs from 'node:fs';
import path from 'node:path';

/** The subset of a V8 .cpuprofile (Chrome DevTools format) that the summary reads. */
interface CpuProfile {
  nodes: { id: number; callFrame: { functionName: string; url: string; lineNumber: number; columnNumber: number } }[];
  /** Microseconds. */
  startTime: number;
  endTime: number;
  /** Node id of each sample, and the microseconds from the previous sample (the first: from startTime). */
  samples?: number[];
  timeDeltas?: number[];
}

export interface FunctionTime {
  name: string;
  /** url:line (1-based), relative to the working directory when it is under it; '' for V8's own entries. */
  location: string;
  selfMs: number;
}

export interface ProfileSummary {
  files: string[];
  /** Wall clock the profiles cover (summed over files). */
  durationMs: number;
  /** `(idle)`: the thread waited for events. */
  idleMs: number;
  /**
   * Self time of piscina's atomicsWaitLoop: an idle pool worker blocks in
   * Atomics.wait there, so the profiler sees JavaScript while the thread sleeps.
   */
  poolWaitMs: number;
  /** `(garbage collector)`. */
  garbageCollectorMs: number;
  /** Self time per function, highest first, V8's own entries ((program), (garbage collector), (idle)) included. */
  functions: FunctionTime[];
}

/** `CPU.<date>.<time>.<pid>.<thread id>.<sequence>.cpuprofile`: thread 0 is the main thread. */
export function threadOfProfile(file: string): string {
  const match = /^CPU\.\d+\.\d+\.(\d+)\.(\d+)\.\d+\.cpuprofile$/.exec(path.basename(file));
  if (!match) return 'unknown thread';
  return match[2] === '0' ? `pid ${match[1]}, main thread` : `pid ${match[1]}, worker thread ${match[2]}`;
}

/** Every .cpuprofile under `target` (a file or a directory, searched recursively), sorted. */
export function findProfiles(target: string): string[] {
  if (!fs.statSync(target).isDirectory()) return [target];
  return fs
    .readdirSync(target, { recursive: true, encoding: 'utf8' })
    .filter((name) => name.endsWith('.cpuprofile'))
    .map((name) => path.join(target, name))
    .sort();
}

/**
 * After the daemons exited (`exits`: how each ended): which daemon wrote which
 * profiles under <profileDir>/<daemon>/, as text for the operator, and the
 * daemons that wrote none.
 */
export function checkProfiles<Name extends string>(
  profileDir: string,
  exits: Record<Name, { code: number | null; signal: NodeJS.Signals | null }>,
): { text: string; missing: Name[] } {
  const lines = [`profiles in ${profileDir}`];
  const missing: Name[] = [];
  for (const daemon of Object.keys(exits) as Name[]) {
    const dir = path.join(profileDir, daemon);
    const files = fs.existsSync(dir) ? findProfiles(dir) : [];
    const threads = files.map(threadOfProfile).map((thread) => thread.replace(/^pid \d+, /, ''));
    if (files.length) {
      lines.push(`  ${daemon}: ${files.length} profile(s): ${threads.join(', ')}`);
    } else {
      missing.push(daemon);
      const { code, signal } = exits[daemon];
      // Node writes --cpu-prof profiles on its exit path (process.exit or an empty event loop); a fatal signal skips it.
      const why = signal
        ? `it was ended by signal ${signal}, and node writes a profile only when the process exits by itself (process.exit or an empty event loop)`
        : `it exited with code ${code}; see its stderr`;
      lines.push(`  ${daemon}: NO profile written: ${why}`);
    }
  }
  const relative = path.relative(process.cwd(), profileDir);
  lines.push(`  read them with: node dist/benchmarks/profile-summary.js ${relative.startsWith('..') ? profileDir : relative}`);
  return { text: lines.join('\n'), missing };
}

function location(url: string, lineNumber: number): string {
  if (!url) return '';
  let file = url.startsWith('file://') ? decodeURIComponent(url.slice('file://'.length)) : url;
  const relative = path.relative(process.cwd(), file);
  if (!relative.startsWith('..') && !path.isAbsolute(relative)) file = relative;
  return lineNumber >= 0 ? `${file}:${lineNumber + 1}` : file;
}

/** Self time by function over one or more profiles. */
export function summariseProfiles(files: string[]): ProfileSummary {
  const byFunction = new Map<string, FunctionTime>();
  let durationMs = 0;
  for (const file of files) {
    const profile = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
    durationMs += (profile.endTime - profile.startTime) / 1000;
    const nodes = new Map(profile.nodes.map((node) => [node.id, node]));
    const samples = profile.samples ?? [];
    const deltas = profile.timeDeltas ?? [];
    // Sample i lasts until the next one (DevTools' convention); the last one until endTime.
    let time = profile.startTime;
    const times = deltas.map((delta) => (time += delta));
    for (let index = 0; index < samples.length; index++) {
      const next = index + 1 < samples.length ? times[index + 1] : profile.endTime;
      const selfMs = Math.max(0, next - times[index]) / 1000;
      const frame = nodes.get(samples[index])?.callFrame;
      if (!frame) continue;
      const key = `${frame.functionName}\0${frame.url}\0${frame.lineNumber}\0${frame.columnNumber}`;
      let entry = byFunction.get(key);
      if (!entry) {
        entry = { name: frame.functionName || '(anonymous)', location: location(frame.url, frame.lineNumber), selfMs: 0 };
        byFunction.set(key, entry);
      }
      entry.selfMs += selfMs;
    }
  }
  const functions = [...byFunction.values()].sort((a, b) => b.selfMs - a.selfMs);
  const total = (name: string) => functions.filter((entry) => entry.name === name && entry.location === '').reduce((sum, entry) => sum + entry.selfMs, 0);
  const poolWaitMs = functions.filter(isPoolWait).reduce((sum, entry) => sum + entry.selfMs, 0);
  return { files, durationMs, idleMs: total('(idle)'), poolWaitMs, garbageCollectorMs: total('(garbage collector)'), functions };
}

function isPoolWait(entry: FunctionTime): boolean {
  return entry.name === 'atomicsWaitLoop' && entry.location.includes('piscina');
}

/**
 * The summary as text: totals, then the `top` functions by self time, with
 * their share of the busy time (neither idle nor a pool worker waiting for a task).
 */
export function formatProfileSummary(summary: ProfileSummary, top: number): string {
  const busyMs = summary.durationMs - summary.idleMs - summary.poolWaitMs;
  const percent = (ms: number) => (busyMs > 0 ? `${((100 * ms) / busyMs).toFixed(1)} %` : '-');
  const seconds = (ms: number) => `${(ms / 1000).toFixed(2)} s`;
  const out = [
    `profiled ${seconds(summary.durationMs)}: idle ${seconds(summary.idleMs)}` +
      (summary.poolWaitMs > 0 ? `, waiting for a task (piscina atomicsWaitLoop) ${seconds(summary.poolWaitMs)}` : '') +
      `, busy ${seconds(busyMs)}; garbage collector ${summary.garbageCollectorMs.toFixed(0)} ms (${percent(summary.garbageCollectorMs)} of busy)`,
  ];
  const rows = summary.functions
    .filter((entry) => entry.name !== '(idle)' && !isPoolWait(entry))
    .slice(0, top)
    .map((entry) => [entry.selfMs.toFixed(1), percent(entry.selfMs), entry.name, entry.location || '(V8)']);
  const header = ['self ms', '% busy', 'function', 'url:line'];
  const widths = header.map((title, column) => Math.max(title.length, ...rows.map((row) => row[column].length)));
  const render = (cells: string[]) =>
    cells
      .map((cell, column) => (column < 2 ? cell.padStart(widths[column]) : cell.padEnd(widths[column])))
      .join('  ')
      .trimEnd();
  out.push(render(header), ...rows.map(render));
  return out.join('\n');
}
