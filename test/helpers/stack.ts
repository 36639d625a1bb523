// A whole registered site for end-to-end tests: a configuration server, a
// process server, a master target and one or more agents, each a process on
// 127.0.0.1, plus drctl run as an operator would (a process, --json).
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { distRoot, startDaemon, tempDir, withoutTapHook, type RunningDaemon } from './daemons';
import { agentClient, configurationServerClient, masterTargetClient, processServerClient } from './clients';

export interface DrctlRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface AgentSpec {
  name: string;
  disks: string[];
  args?: string[];
  env?: NodeJS.ProcessEnv;
}

export interface Stack {
  dir: string;
  cs: RunningDaemon;
  ps: RunningDaemon;
  mt: RunningDaemon;
  agents: Map<string, RunningDaemon>;
  datastore: string;
  /** Arguments to start each daemon again at the same address with the same data. */
  restartArgs: Record<'cs' | 'ps' | 'mt', string[]>;
  csClient: ReturnType<typeof configurationServerClient>;
  psClient: ReturnType<typeof processServerClient>;
  mtClient: ReturnType<typeof masterTargetClient>;
  agentClientFor(name: string): ReturnType<typeof agentClient>;
  drctl(...args: string[]): Promise<DrctlRun>;
  /** drctl --json, expecting exit 0. */
  drctlJson<T = Record<string, unknown>>(...args: string[]): Promise<T>;
}

export interface StackOptions {
  agents: AgentSpec[];
  psArgs?: string[];
  mtArgs?: string[];
  csArgs?: string[];
  /** Environment of the configuration server (e.g. DRPLANE_FAILPOINTS). */
  csEnv?: Record<string, string>;
  /** A folder to use instead of a fresh temp dir (removed at the end either way). */
  dir?: string;
}

export async function startStack(t: Test, options: StackOptions): Promise<Stack> {
  const dir = options.dir ?? tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const datastore = path.join(dir, 'ds');
  const cs = await startDaemon('configuration-server', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'cs'), '--heartbeat-interval-ms', '500', ...(options.csArgs ?? [])], env: options.csEnv });
  t.teardown(() => cs.stop());
  const link = ['--configuration-server', cs.address, '--passphrase-file', path.join(dir, 'cs', 'passphrase')];
  const psArgs = ['--name', 'ps1', '--data-dir', path.join(dir, 'ps'), ...link, ...(options.psArgs ?? [])];
  const mtArgs = ['--name', 'mt1', '--data-dir', path.join(dir, 'mt'), '--datastore-root', datastore, ...link, ...(options.mtArgs ?? [])];
  const [ps, mt, ...agentList] = await Promise.all([
    startDaemon('process-server', { args: ['--listen', '127.0.0.1:0', ...psArgs] }),
    startDaemon('master-target', { args: ['--listen', '127.0.0.1:0', ...mtArgs] }),
    ...options.agents.map((spec) =>
      startDaemon('agent', { args: ['--name', spec.name, '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, `agent-${spec.name}`), ...spec.disks.flatMap((disk) => ['--disk', disk]), ...link, ...(spec.args ?? [])], env: spec.env }),
    ),
  ]);
  const agents = new Map<string, RunningDaemon>();
  options.agents.forEach((spec, index) => agents.set(spec.name, agentList[index]!));
  for (const daemon of [ps, mt, ...agentList]) {
    t.teardown(() => daemon.stop());
    await daemon.waitForLog((line) => line.msg === 'registered with the configuration server');
  }
  const clients: { close(): void }[] = [];
  const track = <C extends { close(): void }>(client: C) => (clients.push(client), client);
  t.teardown(() => clients.forEach((client) => client.close()));
  const agentClients = new Map<string, ReturnType<typeof agentClient>>();

  const drctl = (...args: string[]) => runDrctl(cs.address, '--json', ...args);

  return {
    dir,
    cs,
    ps,
    mt,
    agents,
    datastore,
    restartArgs: {
      cs: ['--listen', cs.address, '--data-dir', path.join(dir, 'cs'), '--heartbeat-interval-ms', '500', ...(options.csArgs ?? [])],
      ps: ['--listen', ps.address, ...psArgs],
      mt: ['--listen', mt.address, ...mtArgs],
    },
    csClient: track(configurationServerClient(cs.address)),
    psClient: track(processServerClient(ps.address)),
    mtClient: track(masterTargetClient(mt.address)),
    agentClientFor(name: string) {
      let client = agentClients.get(name);
      if (!client) {
        client = track(agentClient(agents.get(name)!.address));
        agentClients.set(name, client);
      }
      return client;
    },
    drctl,
    async drctlJson<T>(...args: string[]): Promise<T> {
      const run = await drctl(...args);
      if (run.code !== 0) throw new Error(`drctl ${args.join(' ')} exited ${run.code}: ${run.stderr}`);
      return JSON.parse(run.stdout) as T;
    },
  };
}

export interface DrctlOptions {
  /** Added to the test's environment (drctl's TLS options can come from it). */
  env?: NodeJS.ProcessEnv;
  /** Run inside this network namespace (ip netns exec). */
  netns?: string;
  /** Kill drctl and fail with what it printed if it runs longer (a job that never ends keeps `watch` going). */
  timeoutMs?: number;
  /** Sees drctl's process as it starts: its pid, its output as it comes (a test acts while drctl waits at a failpoint). */
  onSpawn?: (child: ChildProcess) => void;
}

/** Runs drctl with exactly these arguments, as an operator would; resolves with its exit code and output. */
export function spawnDrctl(args: string[], options: DrctlOptions = {}): Promise<DrctlRun> {
  return new Promise<DrctlRun>((resolve, reject) => {
    const node = withoutTapHook([process.execPath, path.join(distRoot, 'daemons', 'drctl', 'main.js'), ...args]);
    const [command, ...commandArgs] = options.netns ? ['ip', 'netns', 'exec', options.netns, ...node] : node;
    const child = spawn(command!, commandArgs, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...options.env } });
    options.onSpawn?.(child);
    let stdout = '';
    let stderr = '';
    const timer =
      options.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            child.kill('SIGKILL');
            reject(new Error(`drctl ${args.join(' ')} did not finish within ${options.timeoutMs} ms; it printed: ${stdout}${stderr}`));
          }, options.timeoutMs);
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Runs drctl as an operator would, against `server`; human tables unless the args say --json. */
export function runDrctl(server: string, ...args: string[]): Promise<DrctlRun> {
  return spawnDrctl(['--server', server, ...args]);
}

/** Polls `check` every `intervalMs` until it returns a value other than undefined, or fails after `timeoutMs`. */
export async function eventually<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 60_000, intervalMs = 200): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${(lastError as Error).message}` : ''}`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
