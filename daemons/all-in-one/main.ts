// All-in-one (npm start): a configuration server, a process server and a
// master target on this host, like the default install of ASR's configuration
// server. Each runs as its own process; this one starts them in order, forwards
// their logs and signals, and stops them all if one of them dies.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { shutdownGraceMs } from '../../shared/limits';
import { Child, describeExit, type ChildSpec } from './children';

const usage = `Usage: npm start [-- --home DIR] [-- --with-agent DISK_PATH]
       node dist/daemons/all-in-one/main.js [--home DIR] [--with-agent DISK_PATH]

Runs a configuration server (127.0.0.1:7100), a process server (127.0.0.1:7101)
and a master target (127.0.0.1:7102), with their state under DIR (default
./data, or $DRPLANE_HOME).

  --home DIR              where the daemons keep their state
  --with-agent DISK_PATH  also run an agent (127.0.0.1:7103) that may read DISK_PATH
`;

const addresses = {
  configurationServer: '127.0.0.1:7100',
  processServer: '127.0.0.1:7101',
  masterTarget: '127.0.0.1:7102',
  agent: '127.0.0.1:7103',
};

function parse() {
  try {
    const { values } = parseArgs({
      options: { home: { type: 'string' }, 'with-agent': { type: 'string' }, help: { type: 'boolean', short: 'h' } },
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
  };
  const passphraseFile = path.join(dirs.configurationServer, 'passphrase');
  const agentDisk = options['with-agent'] ? path.resolve(options['with-agent']) : undefined;
  try {
    fs.mkdirSync(dirs.datastore, { recursive: true });
  } catch (error) {
    process.stderr.write(`all-in-one: cannot create ${dirs.datastore}: ${(error as Error).message}\n`);
    process.exit(2);
  }
  const link = ['--configuration-server', addresses.configurationServer, '--passphrase-file', passphraseFile];
  const specs: Record<'configurationServer' | 'processServer' | 'masterTarget' | 'agent', ChildSpec> = {
    configurationServer: { label: 'configuration-server', daemon: 'configuration-server', args: ['--listen', addresses.configurationServer, '--data-dir', dirs.configurationServer] },
    processServer: { label: 'ps1', daemon: 'process-server', args: ['--name', 'ps1', '--listen', addresses.processServer, '--data-dir', dirs.processServer, ...link] },
    masterTarget: {
      label: 'mt1',
      daemon: 'master-target',
      args: ['--name', 'mt1', '--listen', addresses.masterTarget, '--data-dir', dirs.masterTarget, '--datastore-root', dirs.datastore, ...link],
    },
    agent: { label: 'agent1', daemon: 'agent', args: ['--name', 'agent1', '--listen', addresses.agent, '--data-dir', dirs.agent, '--disk', agentDisk ?? '', ...link] },
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
    if (agentDisk) await start(specs.agent).waitListening();
  } catch (error) {
    if (stopping) return;
    process.stderr.write(`all-in-one: ${(error as Error).message}\n`);
    await stopAll(1);
    return;
  }
  process.stderr.write(banner({ home, dirs, passphraseFile, agentDisk }));
}

function banner(context: { home: string; dirs: Record<string, string>; passphraseFile: string; agentDisk: string | undefined }): string {
  const { home, dirs, passphraseFile, agentDisk } = context;
  const disk = agentDisk ?? '/path/to/disk.img';
  const drctl = 'node dist/daemons/drctl/main.js';
  const lines = [
    '',
    `drplane is running (state under ${home})`,
    `  configuration server  ${addresses.configurationServer}`,
    `  process server ps1    ${addresses.processServer}`,
    `  master target mt1     ${addresses.masterTarget}   datastore root ${dirs.datastore}`,
    ...(agentDisk ? [`  agent agent1          ${addresses.agent}   disk ${agentDisk}`] : []),
    `  passphrase file       ${passphraseFile}`,
    '',
    'Next:',
    ...(agentDisk
      ? []
      : [
          '  # on the machine to protect (here, for a demo), start an agent for its disk:',
          `  node dist/daemons/agent/main.js --name agent1 --listen ${addresses.agent} --data-dir ${dirs.agent} --disk ${disk} --configuration-server ${addresses.configurationServer} --passphrase-file ${passphraseFile}`,
        ]),
    `  ${drctl} servers`,
    `  ${drctl} machine add vm1 --agent agent1 --disk ${disk}`,
    `  ${drctl} enable vm1 --datastore ${path.join(dirs.datastore, 'vm1')}`,
    `  ${drctl} points vm1`,
    `  ${drctl} materialise vm1-disk0@latest ${path.join(dirs.datastore, 'restore', 'vm1-disk0.img')}`,
    '',
    'Ctrl-C stops everything.',
    '',
  ];
  return `${lines.join('\n')}\n`;
}

void main();
