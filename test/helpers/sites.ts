// Two sites on loopback for the failover and failback tests: one configuration
// server; site A (home) with process server psA, master target mtA and agent
// agentA; site B (recovery) with psB, mtB and agentB. Each is a real process.
// Layout under the test's folder:
//   A/disks   the machines' source disks (agentA's --disk-root; under mtA's datastore root A)
//   A/ds      mtA's datastores for reverse replicas (reprotect B -> A)
//   B/ds      mtB's datastores (forward replicas, and <datastore>/recovered: the machines' disks at B)
// agentA may read anything under A, agentB anything under B: after a failover
// the machine's disks live under the master target's datastore there.
import fs from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { unary } from '../../shared/grpc';
import type { Job__Output } from '../../generated/drplane/v1/Job';
import type { Machine__Output } from '../../generated/drplane/v1/Machine';
import { agentClient, configurationServerClient, masterTargetClient, processServerClient } from './clients';
import { startDaemon, tempDir, type RunningDaemon } from './daemons';
import { eventually, runDrctl, type DrctlRun } from './stack';
import { freePort } from './wait';
import { randomWrite } from './write-log';

export type SiteDaemon = 'cs' | 'psA' | 'mtA' | 'agentA' | 'psB' | 'mtB' | 'agentB';

/** Clients of both sites' master targets, process servers and agents. */
export interface SiteClients {
  mtA: ReturnType<typeof masterTargetClient>;
  mtB: ReturnType<typeof masterTargetClient>;
  psA: ReturnType<typeof processServerClient>;
  psB: ReturnType<typeof processServerClient>;
  agentA: ReturnType<typeof agentClient>;
  agentB: ReturnType<typeof agentClient>;
}

/** The clients of SiteClients at these addresses, each handed to `track` (closed with the others). */
export function siteClients(addresses: Record<keyof SiteClients, string>, track: <C extends { close(): void }>(client: C) => C): SiteClients {
  return {
    mtA: track(masterTargetClient(addresses.mtA)),
    mtB: track(masterTargetClient(addresses.mtB)),
    psA: track(processServerClient(addresses.psA)),
    psB: track(processServerClient(addresses.psB)),
    agentA: track(agentClient(addresses.agentA)),
    agentB: track(agentClient(addresses.agentB)),
  };
}

export interface SitesOptions {
  /** Extra flags per daemon (e.g. agentB: ['--shutdown-hook', ...]). */
  args?: Partial<Record<SiteDaemon, string[]>>;
}

export interface Sites {
  dir: string;
  /** Source disks of site A. */
  disksA: string;
  /** Datastores: A for reverse replicas, B for forward replicas. */
  dsA: string;
  dsB: string;
  daemons: Record<SiteDaemon, RunningDaemon>;
  cs: ReturnType<typeof configurationServerClient>;
  client: SiteClients;
  /** Stops (SIGKILL when `kill`; nothing when it is down already) and starts a daemon again at the same address with the same data. */
  restart(name: SiteDaemon, options?: { kill?: boolean; down?: () => Promise<void> }): Promise<RunningDaemon>;
  drctl(...args: string[]): Promise<DrctlRun>;
  drctlJson<T = Record<string, unknown>>(...args: string[]): Promise<T>;
  machine(name: string): Promise<Machine__Output>;
  /** Waits for a job to end and answers it (throws on a job that did not succeed unless `allowFailure`). */
  waitJob(jobId: string, options?: { allowFailure?: boolean; timeoutMs?: number }): Promise<Job__Output>;
}

/** Waits for a job to end and answers it; throws on a job that did not succeed unless `allowFailure`. */
export async function waitForJob(cs: ReturnType<typeof configurationServerClient>, jobId: string, options: { allowFailure?: boolean; timeoutMs?: number } = {}): Promise<Job__Output> {
  const job = await eventually(
    `job ${jobId} to end`,
    async () => {
      const current = await unary(cs, cs.getJob, { jobId });
      return current.state === 'JOB_SUCCEEDED' || current.state === 'JOB_FAILED' || current.state === 'JOB_STOPPED' ? current : undefined;
    },
    options.timeoutMs ?? 120_000,
  );
  if (!options.allowFailure && job.state !== 'JOB_SUCCEEDED') {
    throw new Error(`job ${jobId} (${job.kind}) ended ${job.state}: ${job.error}\n${job.steps.map((step) => `  ${step.name} ${step.state} ${step.message}`).join('\n')}`);
  }
  return job;
}

/** drctl --json's answer, parsed; throws with its stderr when it failed. */
export async function drctlJsonOf<T>(drctl: (...args: string[]) => Promise<DrctlRun>, args: string[]): Promise<T> {
  const run = await drctl(...args);
  if (run.code !== 0) throw new Error(`drctl ${args.join(' ')} exited ${run.code}: ${run.stderr}`);
  return JSON.parse(run.stdout) as T;
}

export async function startSites(t: Test, options: SitesOptions = {}): Promise<Sites> {
  const dir = tempDir('drplane-sites-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const disksA = path.join(dir, 'A', 'disks');
  const dsA = path.join(dir, 'A', 'ds');
  const dsB = path.join(dir, 'B', 'ds');
  for (const folder of [disksA, dsA, dsB]) fs.mkdirSync(folder, { recursive: true });
  const extra = options.args ?? {};
  const addresses = Object.fromEntries(await Promise.all((['cs', 'psA', 'mtA', 'agentA', 'psB', 'mtB', 'agentB'] as const).map(async (name) => [name, await freePort()]))) as Record<SiteDaemon, string>;
  const passphraseFile = path.join(dir, 'cs', 'passphrase');
  const link = ['--configuration-server', addresses.cs, '--passphrase-file', passphraseFile];
  const specs: Record<SiteDaemon, { kind: 'configuration-server' | 'process-server' | 'master-target' | 'agent'; args: string[] }> = {
    cs: { kind: 'configuration-server', args: ['--data-dir', path.join(dir, 'cs'), '--heartbeat-interval-ms', '500'] },
    psA: { kind: 'process-server', args: ['--name', 'psA', '--data-dir', path.join(dir, 'A', 'ps'), ...link] },
    mtA: { kind: 'master-target', args: ['--name', 'mtA', '--data-dir', path.join(dir, 'A', 'mt'), '--datastore-root', path.join(dir, 'A'), ...link] },
    agentA: { kind: 'agent', args: ['--name', 'agentA', '--data-dir', path.join(dir, 'A', 'agent'), '--disk-root', path.join(dir, 'A'), ...link] },
    psB: { kind: 'process-server', args: ['--name', 'psB', '--data-dir', path.join(dir, 'B', 'ps'), ...link] },
    mtB: { kind: 'master-target', args: ['--name', 'mtB', '--data-dir', path.join(dir, 'B', 'mt'), '--datastore-root', path.join(dir, 'B'), ...link] },
    agentB: { kind: 'agent', args: ['--name', 'agentB', '--data-dir', path.join(dir, 'B', 'agent'), '--disk-root', path.join(dir, 'B'), ...link] },
  };
  const start = (name: SiteDaemon) => startDaemon(specs[name].kind, { args: ['--listen', addresses[name], ...specs[name].args, ...(extra[name] ?? [])] });
  const daemons = {} as Record<SiteDaemon, RunningDaemon>;
  daemons.cs = await start('cs');
  const others = ['psA', 'mtA', 'agentA', 'psB', 'mtB', 'agentB'] as const;
  await Promise.all(
    others.map(async (name) => {
      daemons[name] = await start(name);
      await daemons[name].waitForLog((line) => line.msg === 'registered with the configuration server');
    }),
  );
  t.teardown(async () => {
    await Promise.all(Object.values(daemons).map((daemon) => daemon.stop()));
  });

  const clients: { close(): void }[] = [];
  const track = <C extends { close(): void }>(client: C) => (clients.push(client), client);
  t.teardown(() => clients.forEach((client) => client.close()));
  const cs = track(configurationServerClient(addresses.cs));
  const drctl = (...args: string[]) => runDrctl(addresses.cs, '--json', ...args);

  return {
    dir,
    disksA,
    dsA,
    dsB,
    daemons,
    cs,
    client: siteClients(addresses, track),
    async restart(name, restartOptions = {}) {
      const running = daemons[name].process.exitCode === null && daemons[name].process.signalCode === null;
      if (running && restartOptions.kill) await daemons[name].kill();
      else if (running) await daemons[name].stop();
      await restartOptions.down?.();
      daemons[name] = await start(name);
      if (name !== 'cs') await daemons[name].waitForLog((line) => line.msg === 'registered with the configuration server');
      return daemons[name];
    },
    drctl,
    drctlJson: <T>(...args: string[]) => drctlJsonOf<T>(drctl, args),
    async machine(name) {
      return unary(cs, cs.getMachine, { machine: name });
    },
    waitJob: (jobId, waitOptions) => waitForJob(cs, jobId, waitOptions),
  };
}

/** `count` random writes through the agent, spread over `paths`, 16 in flight. */
export async function writeThrough(writer: { write(path: string, offset: number, data: Buffer): Promise<unknown> }, paths: string[], diskBytes: number, count: number, random: () => number): Promise<void> {
  let pending: Promise<unknown>[] = [];
  for (let index = 0; index < count; index++) {
    const { offset, data } = randomWrite(random, diskBytes);
    pending.push(writer.write(paths[index % paths.length]!, offset, data));
    if (pending.length >= 16) {
      await Promise.all(pending);
      pending = [];
    }
  }
  await Promise.all(pending);
}

/** `count` random writes straight into the files (a machine running on its disks); answers the bytes written. */
export function writeDirect(paths: string[], diskBytes: number, count: number, random: () => number): number {
  let bytes = 0;
  for (let index = 0; index < count; index++) {
    const { offset, data } = randomWrite(random, diskBytes);
    const fd = fs.openSync(paths[index % paths.length]!, 'r+');
    try {
      fs.writeSync(fd, data, 0, data.length, offset);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    bytes += data.length;
  }
  return bytes;
}
