// Starts the real daemons as separate processes on loopback, for integration
// and fault tests. Each gets port 0 (a free port) and reports the port it bound
// in its "listening" log line.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { daemonNodeFlags } from '../../shared/process';

/** The compiled tree this file belongs to (dist/, or another --outDir). */
export const distRoot = path.resolve(__dirname, '..', '..');
/** The repository: the nearest folder above the compiled tree with a package.json. */
export const repoRoot = (() => {
  for (let dir = path.dirname(distRoot); ; dir = path.dirname(dir)) {
    if (fs.existsSync(path.join(dir, 'package.json'))) return dir;
    if (dir === path.dirname(dir)) throw new Error(`no package.json above ${distRoot}`);
  }
})();

/**
 * `command` (node and its arguments) run outside tap's process-info hook. tap
 * puts `--import=@tapjs/processinfo` into NODE_OPTIONS, and its spawn
 * wrappers add it back to every child's environment; under that hook every
 * module load of a daemon or drctl passes through an ESM loader thread, and a
 * start costs about twice the CPU it costs in production. Coverage is off
 * (.taprc), so nothing reads what the hook records. `env` sets NODE_OPTIONS
 * without it just before node starts, and execs: the child's pid is node's.
 */
export function withoutTapHook(command: string[]): string[] {
  const kept = (process.env.NODE_OPTIONS ?? '').split(/\s+/).filter((option) => option !== '' && !option.includes('@tapjs/processinfo'));
  return ['env', `NODE_OPTIONS=${kept.join(' ')}`, ...command];
}

export type DaemonName = 'configuration-server' | 'process-server' | 'master-target' | 'agent';

export interface RunningDaemon {
  name: DaemonName;
  process: ChildProcess;
  address: string;
  /** Every JSON log line the daemon wrote so far. */
  logs: Record<string, unknown>[];
  stderr: string[];
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM and wait for the exit. */
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGKILL and wait for the exit. */
  kill(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Resolves with the first log line that matches. */
  waitForLog(match: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
}

export interface StartOptions {
  args?: string[];
  env?: NodeJS.ProcessEnv;
  /** Do not wait for "listening" (for start-up failures). */
  expectExit?: boolean;
  timeoutMs?: number;
  /** Extra node flags (e.g. --cpu-prof for profiling). */
  nodeArgs?: string[];
  /**
   * Run inside this network namespace (test/helpers/netns.ts): spawned as
   * `ip netns exec NS node ...`, which execs node in place, so the child's pid
   * is node's and stop/kill signal the daemon itself.
   */
  netns?: string;
  /** Run under this address-space limit (RLIMIT_AS, as systemd's LimitAS=): `prlimit --as=N`, which execs node in place. */
  addressSpaceBytes?: number;
}

export async function startDaemon(name: DaemonName, options: StartOptions = {}): Promise<RunningDaemon> {
  const command = withoutTapHook([process.execPath, ...daemonNodeFlags, ...(options.nodeArgs ?? []), path.join(distRoot, 'daemons', name, 'main.js'), ...(options.args ?? [])]);
  if (options.addressSpaceBytes !== undefined) command.unshift('prlimit', `--as=${options.addressSpaceBytes}`, '--');
  if (options.netns) command.unshift('ip', 'netns', 'exec', options.netns);
  const child = spawn(command[0]!, command.slice(1), {
    env: { ...process.env, DRPLANE_LOG_LEVEL: process.env.DRPLANE_LOG_LEVEL ?? 'info', ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Record<string, unknown>[] = [];
  const stderr: string[] = [];
  const waiters: { match: (line: Record<string, unknown>) => boolean; resolve: (line: Record<string, unknown>) => void }[] = [];
  readline.createInterface({ input: child.stdout! }).on('line', (text) => {
    let line: Record<string, unknown>;
    try {
      line = JSON.parse(text) as Record<string, unknown>;
    } catch {
      line = { msg: text };
    }
    logs.push(line);
    for (const waiter of [...waiters]) {
      if (waiter.match(line)) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(line);
      }
    }
    if (process.env.DRPLANE_TEST_ECHO) process.stdout.write(`[${name}] ${text}\n`);
  });
  readline.createInterface({ input: child.stderr! }).on('line', (text) => {
    stderr.push(text);
    if (process.env.DRPLANE_TEST_ECHO) process.stderr.write(`[${name}!] ${text}\n`);
  });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));

  const waitForLog = (match: (line: Record<string, unknown>) => boolean, timeoutMs = 30_000) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const found = logs.find(match);
      if (found) return resolve(found);
      const timer = setTimeout(() => reject(new Error(`${name}: no matching log line within ${timeoutMs} ms; stderr: ${stderr.join('\n')}`)), timeoutMs);
      waiters.push({ match, resolve: (line) => (clearTimeout(timer), resolve(line)) });
      void exited.then(({ code, signal }) => reject(new Error(`${name} exited (code ${code}, signal ${signal}) before the log line; stderr: ${stderr.join('\n')}`)));
    });

  let address = '';
  if (!options.expectExit) {
    const listening = await waitForLog((line) => line.msg === 'listening', options.timeoutMs ?? 30_000);
    address = String(listening.address);
  }
  const daemon: RunningDaemon = {
    name,
    process: child,
    address,
    logs,
    stderr,
    exited,
    waitForLog,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      return exited;
    },
  };
  running.add(daemon);
  void exited.then(() => running.delete(daemon));
  return daemon;
}

const running = new Set<RunningDaemon>();
// A test that fails must not leave daemons behind.
process.on('exit', () => {
  for (const daemon of running) daemon.process.kill('SIGKILL');
});

/** A fresh temporary directory, removed by the caller (t.teardown). */
export function tempDir(prefix = 'drplane-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}
