// All-in-one (npm start): a configuration server, a process server and a
// master target on this host, like the default install of ASR's configuration
// server; with --site-b also a second site's process server and master target,
// so failover and failback can be tried on one machine. Each runs as its own
// process; this one starts them in order, forwards their logs and signals, and
// stops them all if one of them dies.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { shutdownGraceMs } from '../../shared/limits';
import { Child, describeExit, type ChildSpec } from './children';

const usage = `Usage: npm start [-- --home DIR] [-- --with-agent DISK_PATH] [-- --site-b]
       node dist/daemons/all-in-one/main.js [--home DIR] [--with-agent DISK_PATH] [--site-b]

Runs a configuration server (127.0.0.1:7100), a process server (127.0.0.1:7101)
and a master target (127.0.0.1:7102), with their state under DIR (default
./data, or $DRPLANE_HOME). Each serves Prometheus metrics at GET /metrics
(docs/metrics.md): configuration server 127.0.0.1:9710, process server
127.0.0.1:9711, master target 127.0.0.1:9712, agent 127.0.0.1:9713, site B's
process server 127.0.0.1:9714 and master target 127.0.0.1:9715.

  --home DIR              where the daemons keep their state
  --with-agent DISK_PATH  also run an agent agent1 (127.0.0.1:7103) that may read DISK_PATH
  --site-b                also run a second site (also DRPLANE_SITE_B=1): process server
                          ps2 (127.0.0.1:7104) and master target mt2 (127.0.0.1:7105,
                          datastore root DIR/site-b/datastore), state under DIR/site-b;
                          mt1 then also serves DIR/site-a (site A's own disks, where a
                          failback lands); fail over to mt2, then fail back
`;

const addresses = {
  configurationServer: '127.0.0.1:7100',
  processServer: '127.0.0.1:7101',
  masterTarget: '127.0.0.1:7102',
  agent: '127.0.0.1:7103',
  processServerB: '127.0.0.1:7104',
  masterTargetB: '127.0.0.1:7105',
};

/** Where each daemon serves GET /metrics (metricsListen); the same ports as the deploy configs (docs/metrics.md). */
const metricsAddresses: Record<keyof typeof addresses, string> = {
  configurationServer: '127.0.0.1:9710',
  processServer: '127.0.0.1:9711',
  masterTarget: '127.0.0.1:9712',
  agent: '127.0.0.1:9713',
  processServerB: '127.0.0.1:9714',
  masterTargetB: '127.0.0.1:9715',
};

function parse() {
  try {
    const { values } = parseArgs({
      options: { home: { type: 'string' }, 'with-agent': { type: 'string' }, 'site-b': { type: 'boolean' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: false,
      strict: true,
    });
    return values;
  } catch (error) {
    process.stderr.write(`all-in-one: ${(error as Error).message}\n${usage}`);
    process.exit(2);
  }
}

async function main(): Promise<void> {
  const options = parse();
  if (options.help) {
    process.stdout.write(usage);
    return;
  }
  const home = path.resolve(options.home ?? process.env.DRPLANE_HOME ?? 'data');
  const dirs = {
    configurationServer: path.join(home, 'configuration-server'),
    processServer: path.join(home, 'process-server'),
    masterTarget: path.join(home, 'master-target'),
    datastore: path.join(home, 'datastore'),
    agent: path.join(home, 'agent'),
    processServerB: path.join(home, 'site-b', 'process-server'),
    masterTargetB: path.join(home, 'site-b', 'master-target'),
    datastoreB: path.join(home, 'site-b', 'datastore'),
    // Site A's machines' own disks: mt1 writes a failback onto them, so with a second site they are a datastore root too.
    siteA: path.join(home, 'site-a'),
  };
  const siteB = Boolean(options['site-b']) || process.env.DRPLANE_SITE_B === '1';
  const passphraseFile = path.join(dirs.configurationServer, 'passphrase');
  const agentDisk = options['with-agent'] ? path.resolve(options['with-agent']) : undefined;
  for (const datastore of [dirs.datastore, ...(siteB ? [dirs.datastoreB, dirs.siteA] : [])]) {
    try {
      fs.mkdirSync(datastore, { recursive: true });
    } catch (error) {
      process.stderr.write(`all-in-one: cannot create ${datastore}: ${(error as Error).message}\n`);
      process.exit(2);
    }
  }
  const link = ['--configuration-server', addresses.configurationServer, '--passphrase-file', passphraseFile];
  const metrics = (daemon: keyof typeof addresses) => ['--metrics-listen', metricsAddresses[daemon]];
  const specs: Record<'configurationServer' | 'processServer' | 'masterTarget' | 'agent' | 'processServerB' | 'masterTargetB', ChildSpec> = {
    configurationServer: { label: 'configuration-server', daemon: 'configuration-server', args: ['--listen', addresses.configurationServer, '--data-dir', dirs.configurationServer, ...metrics('configurationServer')] },
    processServer: { label: 'ps1', daemon: 'process-server', args: ['--name', 'ps1', '--listen', addresses.processServer, '--data-dir', dirs.processServer, ...metrics('processServer'), ...link] },
    masterTarget: {
      label: 'mt1',
      daemon: 'master-target',
      args: ['--name', 'mt1', '--listen', addresses.masterTarget, '--data-dir', dirs.masterTarget, '--datastore-root', dirs.datastore, ...(siteB ? ['--datastore-root', dirs.siteA] : []), ...metrics('masterTarget'), ...link],
    },
    agent: { label: 'agent1', daemon: 'agent', args: ['--name', 'agent1', '--listen', addresses.agent, '--data-dir', dirs.agent, '--disk', agentDisk ?? '', ...metrics('agent'), ...link] },
    processServerB: { label: 'ps2', daemon: 'process-server', args: ['--name', 'ps2', '--listen', addresses.processServerB, '--data-dir', dirs.processServerB, ...metrics('processServerB'), ...link] },
    masterTargetB: {
      label: 'mt2',
      daemon: 'master-target',
      args: ['--name', 'mt2', '--listen', addresses.masterTargetB, '--data-dir', dirs.masterTargetB, '--datastore-root', dirs.datastoreB, ...metrics('masterTargetB'), ...link],
    },
  };

  const pretty = Boolean(process.stdout.isTTY);
  const children: Child[] = [];
  let stopping = false;

  const stopAll = async (code: number) => {
    if (stopping) return;
    stopping = true;
    // Agents and process servers first, the configuration server last: nobody loses its control plane mid-call.
    for (const child of [...children].reverse()) child.signal('SIGTERM');
    const killer = setTimeout(() => children.forEach((child) => child.signal('SIGKILL')), shutdownGraceMs + 5_000);
    killer.unref();
    await Promise.all(children.map((child) => child.exited));
    process.exit(code);
  };
  const start = (spec: ChildSpec): Child => {
    const child = new Child(spec, pretty);
    children.push(child);
    void child.exited.then((exit) => {
      if (stopping) return;
      process.stderr.write(`all-in-one: ${spec.label} exited (${describeExit(exit)}); stopping the others\n`);
      void stopAll(1);
    });
    return child;
  };
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.on(signal, () => {
      if (stopping) {
        // A second Ctrl-C: do not wait any longer.
        children.forEach((child) => child.signal('SIGKILL'));
        return;
      }
      process.stderr.write(`all-in-one: ${signal}: stopping the daemons\n`);
      void stopAll(0);
    });
  }
  // If we die without stopping them, they must not outlive us.
  process.on('exit', () => children.forEach((child) => child.signal('SIGKILL')));

  try {
    await start(specs.configurationServer).waitListening();
    // Process server and master target register with the passphrase the configuration server wrote on its first start.
    if (!fs.existsSync(passphraseFile)) throw new Error(`the configuration server did not write ${passphraseFile}`);
    await Promise.all([start(specs.processServer).waitListening(), start(specs.masterTarget).waitListening()]);
    // Site B after site A: on a fresh home its servers then register second (ps-2, mt-2), which reads better.
    if (siteB) await Promise.all([start(specs.processServerB).waitListening(), start(specs.masterTargetB).waitListening()]);
    if (agentDisk) await start(specs.agent).waitListening();
  } catch (error) {
    if (stopping) return;
    process.stderr.write(`all-in-one: ${(error as Error).message}\n`);
    await stopAll(1);
    return;
  }
  process.stderr.write(banner({ home, dirs, passphraseFile, agentDisk, siteB }));
}

function banner(context: { home: string; dirs: Record<string, string>; passphraseFile: string; agentDisk: string | undefined; siteB: boolean }): string {
  const { home, dirs, passphraseFile, agentDisk, siteB } = context;
  const disk = agentDisk ?? '/path/to/disk.img';
  const drctl = 'node dist/daemons/drctl/main.js';
  // With two sites, vm1 replicates from site A (ps1) to site B (mt2), where it fails over to.
  const targetDatastore = siteB ? dirs.datastoreB : dirs.datastore;
  const lines = [
    '',
    `drplane is running (state under ${home})`,
    `  configuration server  ${addresses.configurationServer}`,
    `  process server ps1    ${addresses.processServer}`,
    `  master target mt1     ${addresses.masterTarget}   datastore root ${dirs.datastore}${siteB ? ` and ${dirs.siteA} (site A's disks: failbacks land there)` : ''}`,
    ...(agentDisk ? [`  agent agent1          ${addresses.agent}   disk ${agentDisk}`] : []),
    ...(siteB
      ? [`  process server ps2    ${addresses.processServerB}   (site B)`, `  master target mt2     ${addresses.masterTargetB}   datastore root ${dirs.datastoreB} (site B)`]
      : []),
    `  passphrase file       ${passphraseFile}`,
    `  metrics               http://${metricsAddresses.configurationServer}/metrics (and ports ${[metricsAddresses.processServer, metricsAddresses.masterTarget, ...(agentDisk ? [metricsAddresses.agent] : []), ...(siteB ? [metricsAddresses.processServerB, metricsAddresses.masterTargetB] : [])].map((address) => address.split(':')[1]).join(', ')})`,
    '',
    'Next:',
    ...(agentDisk
      ? []
      : [
          '  # on the machine to protect (here, for a demo), start an agent for its disk:',
          `  node dist/daemons/agent/main.js --name agent1 --listen ${addresses.agent} --data-dir ${dirs.agent} --disk ${disk} --metrics-listen ${metricsAddresses.agent} --configuration-server ${addresses.configurationServer} --passphrase-file ${passphraseFile}`,
        ]),
    `  ${drctl} servers`,
    `  ${drctl} machine add vm1 --agent agent1 --disk ${disk}`,
    siteB
      ? `  ${drctl} enable vm1 --process-server ps1 --master-target mt2 --datastore ${path.join(targetDatastore, 'vm1')}`
      : `  ${drctl} enable vm1 --datastore ${path.join(targetDatastore, 'vm1')}`,
    `  ${drctl} points vm1`,
    `  ${drctl} materialise vm1-disk0@latest ${path.join(targetDatastore, 'restore', 'vm1-disk0.img')}`,
    ...(siteB ? ['  # then fail vm1 over to site B, commit, reprotect it toward mt1 and fail it back (docs/failover.md)'] : []),
    '',
    'Ctrl-C stops everything.',
    '',
  ];
  return `${lines.join('\n')}\n`;
}

void main();
