// Three hosts in network namespaces for the multi-host tests (docs/multi-host.md):
//   cs     the configuration server
//   siteA  process server psA, master target mtA, agent agentA (the machine's home)
//   siteB  process server psB, master target mtB, agent agentB (the recovery site)
// Each host has one identity address on its loopback, which all its daemons
// listen on (ports 7100-7103), and point-to-point veth links to the other two
// hosts (cs<->siteA, cs<->siteB, siteA<->siteB) with a /32 route per peer, so
// traffic between the sites crosses only the siteA<->siteB link: cutting it
// leaves both sites' links to the configuration server up. No host has a
// default route, and the root namespace does not forward.
//
// The test process stays in the root namespace. It stands for the operator's
// workstation and for the machine's own workload (writes through agentA), so it
// reaches each host over a management veth of its own (a /32 route per host);
// the hosts have no route to one another through it. drctl runs on the CS host
// (`ip netns exec`), as an operator logged in there would.
//
// Everything speaks mutual TLS: a CA and a certificate per daemon (SAN IP = its
// host's address, its kind's role) and one for the operator (role operator),
// made with deploy/drplane-certs; the workload writes through agentA with
// agentA's own certificate (only the agent itself may Write). The
// file system is shared, so disks and datastores are folders under one temp dir.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Test } from 'tap';
import * as grpc from '@grpc/grpc-js';
import { setTransportSecurity, unary } from '../../shared/grpc';
import { loadTls, type TlsFiles } from '../../shared/tls';
import type { Job__Output } from '../../generated/drplane/v1/Job';
import type { Machine__Output } from '../../generated/drplane/v1/Machine';
import { configurationServerClient } from './clients';
import { repoRoot, startDaemon, tempDir, type DaemonName, type RunningDaemon } from './daemons';
import { installTestDeps, ip, isAlive, removeStaleNamespaces, run, runPrefix } from './netns';
import { spawnDrctl, type DrctlRun } from './stack';
import { drctlJsonOf, siteClients, waitForJob, type SiteClients } from './sites';

export type HostName = 'cs' | 'siteA' | 'siteB';
export type HostDaemon = 'cs' | 'psA' | 'mtA' | 'agentA' | 'psB' | 'mtB' | 'agentB';

const hostNames: HostName[] = ['cs', 'siteA', 'siteB'];
/** The test hosts' addresses come from 198.18.0.0/15 (RFC 2544, for network tests): a /24 per run. */
const subnetsMax = 512;
/** The last octet of each host's identity address, and of the root namespace's end of its management link. */
const hostOctet: Record<HostName, number> = { cs: 1, siteA: 2, siteB: 3 };
const managementOctet: Record<HostName, number> = { cs: 254, siteA: 253, siteB: 252 };
/** The veth links between hosts: [host, its device, peer host, the peer's device]. */
const links: [HostName, string, HostName, string][] = [
  ['cs', 'toA', 'siteA', 'toCS'],
  ['cs', 'toB', 'siteB', 'toCS'],
  ['siteA', 'toB', 'siteB', 'toA'],
];

/** The longest a drctl command (which watches its job to the end) may take. */
const drctlTimeoutMs = 150_000;

const daemonSpecs: Record<HostDaemon, { kind: DaemonName; host: HostName; port: number }> = {
  cs: { kind: 'configuration-server', host: 'cs', port: 7100 },
  psA: { kind: 'process-server', host: 'siteA', port: 7101 },
  mtA: { kind: 'master-target', host: 'siteA', port: 7102 },
  agentA: { kind: 'agent', host: 'siteA', port: 7103 },
  psB: { kind: 'process-server', host: 'siteB', port: 7101 },
  mtB: { kind: 'master-target', host: 'siteB', port: 7102 },
  agentB: { kind: 'agent', host: 'siteB', port: 7103 },
};

export interface Hosts {
  dir: string;
  /** Source disks of site A, and the datastores: A for reverse replicas, B for forward replicas. */
  disksA: string;
  dsA: string;
  dsB: string;
  /** The namespace of each host, and its identity address. */
  netns: Record<HostName, string>;
  address: Record<HostName, string>;
  /** host:port of each daemon. */
  endpoint: Record<HostDaemon, string>;
  tls: { dir: string; caFile: string; operator: TlsFiles; daemon(name: HostDaemon): TlsFiles; credentials(name: HostDaemon): grpc.ChannelCredentials };
  daemons: Record<HostDaemon, RunningDaemon>;
  cs: ReturnType<typeof configurationServerClient>;
  client: SiteClients;
  /** Closes `client` before the hosts go away. */
  track<C extends { close(): void }>(client: C): C;
  /** drctl on the CS host with the operator's certificate (and --json). */
  drctl(...args: string[]): Promise<DrctlRun>;
  drctlJson<T = Record<string, unknown>>(...args: string[]): Promise<T>;
  /** drctl on the CS host with exactly the global options given (no certificate unless they name one). */
  drctlRaw(...args: string[]): Promise<DrctlRun>;
  machine(name: string): Promise<Machine__Output>;
  /** Waits for a job to end and answers it (throws on a job that did not succeed). */
  waitJob(jobId: string, options?: { timeoutMs?: number }): Promise<Job__Output>;
  /** The siteA<->siteB link: down at both ends (the routes through it go with it), and up again with its routes. */
  cutSites(): Promise<void>;
  restoreSites(): Promise<void>;
  /** Each site's end of the link between the sites. */
  siteLink: { siteA: { netns: string; device: string }; siteB: { netns: string; device: string } };
}

/** 198.(18|19).X: this run's /24, free in the root namespace (not routed, not addressed). */
async function chooseSubnet(): Promise<string> {
  const routes = (await ip('-4', 'route', 'show', 'table', 'all')).stdout + (await ip('-4', 'addr', 'show')).stdout;
  for (let attempt = 0; attempt < subnetsMax; attempt++) {
    const index = (process.pid + attempt) % subnetsMax;
    const prefix = `198.${18 + (index >> 8)}.${index & 255}`;
    if (!routes.includes(`${prefix}.`)) return prefix;
  }
  throw new Error('no free /24 left in 198.18.0.0/15 for the test hosts (stale routes? see `ip route show type unreachable`)');
}

/**
 * The root namespace keeps one `unreachable` route over a run's /24, tagged
 * with the run's pid as its metric: if a management link went away while a
 * client still dialled a host, nothing would leave through the default route.
 * Those of runs that are gone are removed here.
 */
async function removeStaleRoutes(): Promise<string[]> {
  const listed = JSON.parse((await ip('-4', '-j', 'route', 'show', 'type', 'unreachable')).stdout || '[]') as { dst: string; metric?: number }[];
  const removed: string[] = [];
  for (const route of listed) {
    if (!/^198\.1[89]\.\d+\.0\/24$/.test(route.dst) || !route.metric) continue;
    if (route.metric !== process.pid && isAlive(route.metric)) continue;
    await run('ip', ['route', 'del', 'unreachable', route.dst, 'metric', String(route.metric)], { allowFailure: true });
    removed.push(route.dst);
  }
  return removed;
}

/** The root namespace's end of a host's management link: `drp<pid>m` and c, a or b. */
const managementLinkName = (host: HostName, pid = process.pid) => `drp${pid}m${host === 'cs' ? 'c' : host === 'siteA' ? 'a' : 'b'}`;

/**
 * Deleting a namespace normally takes its veth links with it, but another
 * process's mount namespace made meanwhile (a container, `unshare --mount`)
 * may hold on to the namespace: the root ends are deleted by name.
 */
async function removeStaleManagementLinks(): Promise<string[]> {
  const removed: string[] = [];
  for (const line of (await ip('-o', 'link', 'show')).stdout.split('\n')) {
    const match = /^\d+: (drp(\d+)m[cab])@/.exec(line);
    if (!match || (Number(match[2]) !== process.pid && isAlive(Number(match[2])))) continue;
    await run('ip', ['link', 'delete', match[1]!], { allowFailure: true });
    removed.push(match[1]!);
  }
  return removed;
}

/** A run's folder is named after its pid, so that the next run can remove it if the run was killed. */
const folderPrefix = 'drplane-multihost-';

function removeStaleFolders(): string[] {
  const removed: string[] = [];
  for (const name of fs.readdirSync(os.tmpdir())) {
    const match = new RegExp(`^${folderPrefix}(\\d+)-`).exec(name);
    if (!match || (Number(match[1]) !== process.pid && isAlive(Number(match[1])))) continue;
    fs.rmSync(path.join(os.tmpdir(), name), { recursive: true, force: true });
    removed.push(name);
  }
  return removed;
}

async function makeCertificates(dir: string, address: Record<HostName, string>): Promise<Hosts['tls']> {
  const certs = path.join(repoRoot, 'deploy', 'drplane-certs');
  await run('bash', [certs, 'init', dir]);
  // Each daemon's certificate is named as the daemon registers (its CN is bound to that name) and has its kind's role.
  for (const [name, spec] of Object.entries(daemonSpecs)) await run('bash', [certs, 'issue', dir, name, '--role', spec.kind, '--ip', address[spec.host]]);
  await run('bash', [certs, 'issue', dir, 'operator', '--role', 'operator']);
  const files = (name: string): TlsFiles => ({ caFile: path.join(dir, 'ca.crt'), certFile: path.join(dir, `${name}.crt`), keyFile: path.join(dir, `${name}.key`) });
  const credentials = (name: string) => {
    const { caFile, certFile, keyFile } = files(name);
    return grpc.credentials.createSsl(fs.readFileSync(caFile), fs.readFileSync(keyFile), fs.readFileSync(certFile));
  };
  return { dir, caFile: path.join(dir, 'ca.crt'), operator: files('operator'), daemon: files, credentials };
}

export async function startHosts(t: Test): Promise<Hosts> {
  const started = Date.now();
  const installed = await installTestDeps();
  t.comment(installed);
  const stale = [...(await removeStaleNamespaces()), ...(await removeStaleManagementLinks()), ...(await removeStaleRoutes()), ...removeStaleFolders()];
  if (stale.length) t.comment(`removed what earlier runs left: ${stale.join(', ')}`);

  // Teardown in one place and in order: clients, daemons, then the network (a client must never outlive its route).
  const clients: { close(): void }[] = [];
  const daemons = {} as Record<HostDaemon, RunningDaemon>;
  const cleanups: (() => Promise<unknown>)[] = [];
  t.teardown(async () => {
    for (const client of clients) client.close();
    await Promise.all(Object.values(daemons).map((daemon) => daemon.stop()));
    for (const cleanup of cleanups.reverse()) await cleanup().catch(() => undefined);
  });
  const track = <C extends { close(): void }>(client: C) => (clients.push(client), client);

  const dir = tempDir(`${folderPrefix}${process.pid}-`);
  cleanups.push(async () => fs.rmSync(dir, { recursive: true, force: true }));
  const prefix = runPrefix();
  const netns = Object.fromEntries(hostNames.map((host) => [host, `${prefix}${host === 'cs' ? 'cs' : host === 'siteA' ? 'a' : 'b'}`])) as Record<HostName, string>;
  const subnet = await chooseSubnet();
  const address = Object.fromEntries(hostNames.map((host) => [host, `${subnet}.${hostOctet[host]}`])) as Record<HostName, string>;
  const management = Object.fromEntries(hostNames.map((host) => [host, `${subnet}.${managementOctet[host]}`])) as Record<HostName, string>;

  await ip('route', 'add', 'unreachable', `${subnet}.0/24`, 'metric', String(process.pid));
  cleanups.push(() => run('ip', ['route', 'del', 'unreachable', `${subnet}.0/24`, 'metric', String(process.pid)], { allowFailure: true }));
  for (const host of hostNames) {
    await ip('netns', 'add', netns[host]);
    // Deleting a namespace destroys its veth links (the root ends of management links are also deleted by name, below).
    cleanups.push(() => run('ip', ['netns', 'delete', netns[host]], { allowFailure: true }));
    await ip('-n', netns[host], 'link', 'set', 'lo', 'up');
    await ip('-n', netns[host], 'addr', 'add', `${address[host]}/32`, 'dev', 'lo');
  }
  const route = (host: HostName, to: string, device: string) => ip('-n', netns[host], 'route', 'replace', `${to}/32`, 'dev', device, 'src', address[host]);
  for (const [host, device, peer, peerDevice] of links) {
    await ip('link', 'add', device, 'netns', netns[host], 'type', 'veth', 'peer', 'name', peerDevice, 'netns', netns[peer]);
    await ip('-n', netns[host], 'link', 'set', device, 'up');
    await ip('-n', netns[peer], 'link', 'set', peerDevice, 'up');
    await route(host, address[peer], device);
    await route(peer, address[host], peerDevice);
  }
  for (const host of hostNames) {
    const rootEnd = managementLinkName(host);
    await ip('link', 'add', rootEnd, 'type', 'veth', 'peer', 'name', 'mgmt', 'netns', netns[host]);
    cleanups.push(() => run('ip', ['link', 'delete', rootEnd], { allowFailure: true }));
    await ip('addr', 'add', `${management[host]}/32`, 'dev', rootEnd);
    await ip('link', 'set', rootEnd, 'up');
    await ip('-n', netns[host], 'link', 'set', 'mgmt', 'up');
    await ip('route', 'add', `${address[host]}/32`, 'dev', rootEnd, 'src', management[host]);
    await route(host, management[host], 'mgmt');
  }
  t.comment(`hosts: cs ${address.cs} (${netns.cs}), siteA ${address.siteA} (${netns.siteA}), siteB ${address.siteB} (${netns.siteB}); links cs<->siteA, cs<->siteB, siteA<->siteB; test process on management links`);

  const tls = await makeCertificates(path.join(dir, 'tls'), address);
  // This process (the operator's tools and the workload) speaks TLS with the operator's certificate.
  setTransportSecurity(loadTls(tls.operator));

  const disksA = path.join(dir, 'A', 'disks');
  const dsA = path.join(dir, 'A', 'ds');
  const dsB = path.join(dir, 'B', 'ds');
  for (const folder of [disksA, dsA, dsB]) fs.mkdirSync(folder, { recursive: true });
  const endpoint = Object.fromEntries(Object.entries(daemonSpecs).map(([name, spec]) => [name, `${address[spec.host]}:${spec.port}`])) as Record<HostDaemon, string>;
  const passphraseFile = path.join(dir, 'cs', 'passphrase');
  const link = ['--configuration-server', endpoint.cs, '--passphrase-file', passphraseFile];
  const args: Record<HostDaemon, string[]> = {
    cs: ['--data-dir', path.join(dir, 'cs'), '--heartbeat-interval-ms', '500'],
    psA: ['--name', 'psA', '--data-dir', path.join(dir, 'A', 'ps'), ...link],
    mtA: ['--name', 'mtA', '--data-dir', path.join(dir, 'A', 'mt'), '--datastore-root', path.join(dir, 'A'), ...link],
    agentA: ['--name', 'agentA', '--data-dir', path.join(dir, 'A', 'agent'), '--disk-root', path.join(dir, 'A'), ...link],
    psB: ['--name', 'psB', '--data-dir', path.join(dir, 'B', 'ps'), ...link],
    mtB: ['--name', 'mtB', '--data-dir', path.join(dir, 'B', 'mt'), '--datastore-root', path.join(dir, 'B'), ...link],
    agentB: ['--name', 'agentB', '--data-dir', path.join(dir, 'B', 'agent'), '--disk-root', path.join(dir, 'B'), ...link],
  };
  const start = (name: HostDaemon) => {
    const files = tls.daemon(name);
    const spec = daemonSpecs[name];
    return startDaemon(spec.kind, {
      netns: netns[spec.host],
      args: ['--listen', endpoint[name], '--advertise', endpoint[name], '--tls-ca-file', files.caFile, '--tls-cert-file', files.certFile, '--tls-key-file', files.keyFile, ...args[name]],
    });
  };
  daemons.cs = await start('cs');
  await Promise.all(
    (['psA', 'mtA', 'agentA', 'psB', 'mtB', 'agentB'] as const).map(async (name) => {
      daemons[name] = await start(name);
      await daemons[name].waitForLog((line) => line.msg === 'registered with the configuration server');
    }),
  );
  t.comment(`seven daemons up and registered over mTLS in ${Date.now() - started} ms (including the network and the certificates)`);

  const cs = track(configurationServerClient(endpoint.cs));
  const drctlRaw = (...drctlArgs: string[]) => spawnDrctl(['--server', endpoint.cs, ...drctlArgs], { netns: netns.cs, timeoutMs: drctlTimeoutMs });
  const drctl = (...drctlArgs: string[]) => drctlRaw('--ca-file', tls.operator.caFile, '--cert-file', tls.operator.certFile, '--key-file', tls.operator.keyFile, '--json', ...drctlArgs);
  const siteLink = { siteA: { netns: netns.siteA, device: 'toB' }, siteB: { netns: netns.siteB, device: 'toA' } };

  return {
    dir,
    disksA,
    dsA,
    dsB,
    netns,
    address,
    endpoint,
    tls,
    daemons,
    cs,
    client: siteClients(endpoint, track),
    track,
    drctl,
    drctlRaw,
    drctlJson: <T>(...drctlArgs: string[]) => drctlJsonOf<T>(drctl, drctlArgs),
    async machine(name) {
      return unary(cs, cs.getMachine, { machine: name });
    },
    waitJob: (jobId, waitOptions) => waitForJob(cs, jobId, waitOptions),
    async cutSites() {
      await ip('-n', netns.siteA, 'link', 'set', 'toB', 'down');
      await ip('-n', netns.siteB, 'link', 'set', 'toA', 'down');
    },
    async restoreSites() {
      await ip('-n', netns.siteA, 'link', 'set', 'toB', 'up');
      await ip('-n', netns.siteB, 'link', 'set', 'toA', 'up');
      // A link that goes down takes its routes with it.
      await route('siteA', address.siteB, 'toB');
      await route('siteB', address.siteA, 'toA');
    },
    siteLink,
  };
}
