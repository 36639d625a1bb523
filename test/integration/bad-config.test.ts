// Goal (must-show 5): a bad configuration file gives one clear line naming the
// key and the problem, and the daemon exits with code 2 without touching its
// data. Each of the four daemons first runs properly on its data directory (a
// registered site replicating a disk, so each holds real state: the
// configuration server's store and passphrase, the process server's journal
// and session records, the master target's replica and retention store), and
// stops on SIGTERM. Then each is started on the same data with bad files: a
// wrong type, a limit exceeded, an unknown or misspelt key, a TLS file that is
// missing, a certificate another CA signed (both CAs made by
// deploy/drplane-certs), and a file that is not JSON. Every file and directory
// of its data (path, size, mtime, sha256) must be as it was, and the daemon
// must not have written a single log line.
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import { once } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import { masterTargetClient, processServerClient, unary } from '../helpers/clients';
import { repoRoot, startDaemon, tempDir, type DaemonName, type RunningDaemon } from '../helpers/daemons';
import { createImage, seededRandom } from '../helpers/disks';
import { randomWrite } from '../helpers/write-log';
import { freePort, until } from '../helpers/wait';
import { whyNoOpenssl } from '../helpers/netns';

const MiB = 1024 * 1024;
const seed = Number(process.env.DRPLANE_SEED ?? 5);
const diskId = 'vm1-disk0';
// Small: the size is not what the test is about, and every case hashes the disk files (source and replica) again.
const diskBytes = 2 * MiB;

type Config = Record<string, unknown>;

/** Every file and directory under the roots: path, kind, size, mtime (ns), and a file's sha256. */
function snapshot(roots: string[]): string[] {
  const entries: string[] = [];
  const visit = (target: string) => {
    const stat = fs.lstatSync(target, { bigint: true });
    if (stat.isDirectory()) {
      entries.push(`${target} dir mtime=${stat.mtimeNs}`);
      for (const name of fs.readdirSync(target).sort()) visit(path.join(target, name));
    } else if (stat.isFile()) {
      const hash = crypto.createHash('sha256').update(fs.readFileSync(target)).digest('hex');
      entries.push(`${target} file size=${stat.size} mtime=${stat.mtimeNs} sha256=${hash}`);
    } else {
      entries.push(`${target} other mtime=${stat.mtimeNs}`);
    }
  };
  for (const root of roots) visit(root);
  return entries;
}

/** The exit, once stdout and stderr are read to their end too ('exit' may come before the last line). */
async function exitOf(daemon: RunningDaemon): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
  const exit = await daemon.exited;
  await Promise.all([daemon.process.stdout, daemon.process.stderr].map((stream) => (stream && !stream.closed ? once(stream, 'close') : undefined)));
  return exit;
}

t.test('a bad configuration file: exit 2, one line naming the key, the data untouched', async (t) => {
  const noOpenssl = await whyNoOpenssl();
  // A plan of 0 marks the test skipped, with the reason.
  if (noOpenssl) return t.plan(0, noOpenssl);
  t.comment(`seed ${seed}`);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

  // Two deployment CAs, each with a certificate for 127.0.0.1.
  const certs = path.join(repoRoot, 'deploy', 'drplane-certs');
  const caDir = path.join(dir, 'ca'); // the deployment's
  const otherCaDir = path.join(dir, 'other-ca');
  for (const ca of [caDir, otherCaDir]) {
    execFileSync(certs, ['init', ca], { stdio: 'ignore' });
    execFileSync(certs, ['issue', ca, 'daemon', '--role', 'agent', '--ip', '127.0.0.1'], { stdio: 'ignore' });
  }
  // A viewer's certificate (no daemon may run with it), and one the CA signed without a role (by hand: drplane-certs always gives one).
  execFileSync(certs, ['issue', caDir, 'viewer', '--role', 'viewer', '--ip', '127.0.0.1'], { stdio: 'ignore' });
  // A process server's certificate of another name than the daemon's (ps1): the configuration server would refuse its registration.
  execFileSync(certs, ['issue', caDir, 'ps-other', '--role', 'process-server', '--ip', '127.0.0.1'], { stdio: 'ignore' });
  execFileSync('openssl', ['req', '-new', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-keyout', path.join(caDir, 'no-role.key'), '-out', path.join(caDir, 'no-role.csr'), '-subj', '/CN=no-role'], { stdio: 'ignore' });
  execFileSync('openssl', ['x509', '-req', '-in', path.join(caDir, 'no-role.csr'), '-CA', path.join(caDir, 'ca.crt'), '-CAkey', path.join(caDir, 'ca.key'), '-CAcreateserial', '-out', path.join(caDir, 'no-role.crt'), '-days', '30'], { stdio: 'ignore' });

  const aFile = path.join(dir, 'a-file');
  fs.writeFileSync(aFile, 'not a directory');
  const source = path.join(dir, 'source.img');
  createImage(source, diskBytes, seed, MiB);
  const datastore = path.join(dir, 'ds');
  const [csAddress, psAddress, mtAddress, agentAddress] = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
  const link = { address: csAddress, passphraseFile: path.join(dir, 'cs', 'passphrase') };
  const good: Record<DaemonName, Config> = {
    'configuration-server': { name: 'cs1', listen: csAddress, dataDir: path.join(dir, 'cs'), heartbeatIntervalMs: 500, statusPollIntervalMs: 500 },
    // One hashing thread each (the default is one per core): the earlier run starts fewer workers.
    'process-server': { name: 'ps1', listen: psAddress, dataDir: path.join(dir, 'ps'), batchBytesMax: 4 * MiB, cacheBytesMax: 64 * MiB, memoryQueueBytesMax: MiB, hashThreads: 1, configurationServer: link },
    'master-target': { name: 'mt1', listen: mtAddress, dataDir: path.join(dir, 'mt'), datastoreRoots: [datastore], pruneIntervalMs: 1000, hashThreads: 1, configurationServer: link },
    agent: { name: 'agent1', listen: agentAddress, dataDir: path.join(dir, 'agent'), disks: [source], hooks: { freeze: 'true', thaw: 'true' }, hookTimeoutMs: 5000, hashThreads: 1, configurationServer: link },
  };
  /** What each daemon owns: its data directory, and the master target's datastore and the agent's disk. */
  const owned: Record<DaemonName, string[]> = {
    'configuration-server': [path.join(dir, 'cs')],
    'process-server': [path.join(dir, 'ps')],
    'master-target': [path.join(dir, 'mt'), datastore],
    agent: [path.join(dir, 'agent'), source],
  };
  const configFile = (name: DaemonName, text: string, index?: number) => {
    const file = path.join(dir, index === undefined ? `${name}.json` : `${name}-${index}.json`);
    fs.writeFileSync(file, text);
    return file;
  };

  await t.test('an earlier run leaves real state in every data directory', async (t) => {
    const start = (name: DaemonName) => startDaemon(name, { args: ['--config', configFile(name, JSON.stringify(good[name], null, 2))] });
    const cs = await start('configuration-server');
    const [ps, mt, agent] = await Promise.all([start('process-server'), start('master-target'), start('agent')]);
    for (const daemon of [ps, mt, agent]) await daemon.waitForLog((line) => line.msg === 'registered with the configuration server');
    const psClient = processServerClient(ps.address);
    const mtClient = masterTargetClient(mt.address);
    const writer = new WriteThroughClient(agentAddress);
    try {
      await unary(mtClient, mtClient.createReplica, { diskId, path: path.join(datastore, `${diskId}.img`), diskBytes, epoch: 1 });
      await unary(psClient, psClient.startReplication, { diskId, epoch: 1, agentAddress, sourcePath: source, masterTargetAddress: mtAddress, captureMode: 'CAPTURE_WRITE_THROUGH', crashConsistentIntervalMs: 300 });
      await until('the capture', async () => (await unary(psClient, psClient.getReplication, { diskId })).captureId);
      const random = seededRandom(seed);
      for (let round = 0; round < 10; round++) await Promise.all(Array.from({ length: 8 }, () => randomWrite(random, diskBytes)).map((write) => writer.write(source, write.offset, write.data)));
      const flushed = await unary(psClient, psClient.flushReplication, { diskId, timeoutMs: 60_000 });
      t.ok(flushed.recoveryPoint?.id, `a recovery point after ${flushed.recoveryPoint?.changeSequence} changes`);
    } finally {
      await writer.close();
      psClient.close();
      mtClient.close();
    }
    const exits = await Promise.all([ps.stop(), mt.stop(), agent.stop()]);
    t.same(exits, [0, 0, 0].map((code) => ({ code, signal: null })), 'the process server, master target and agent stop on SIGTERM with exit 0');
    t.same(await cs.stop(), { code: 0, signal: null }, 'the configuration server stops on SIGTERM with exit 0');
    t.ok(fs.existsSync(path.join(dir, 'cs', 'passphrase')), 'the configuration server generated its passphrase');
    t.ok(fs.readdirSync(path.join(dir, 'ps', 'cache')).length > 0, 'the process server has a journal in its cache');
    t.ok(fs.readdirSync(path.join(dir, 'mt', 'retention')).length > 0, 'the master target has a retention store');
  });

  const tls = (ca: string, name = 'daemon') => ({ caFile: path.join(caDir, 'ca.crt'), certFile: path.join(ca, `${name}.crt`), keyFile: path.join(ca, `${name}.key`) });
  const without = (config: Config, key: string): Config => Object.fromEntries(Object.entries(config).filter(([name]) => name !== key));
  interface Case {
    what: string;
    /** The file's text. */
    text: string;
    /** The line after "<daemon>: ". */
    line: RegExp;
  }
  const common = (name: DaemonName): Case[] => [
    {
      what: 'tls naming a file that does not exist',
      text: JSON.stringify({ ...good[name], tls: { ...tls(caDir), caFile: path.join(dir, 'missing', 'ca.crt') } }),
      line: /^config key tls\.caFile: cannot read \/.*\/missing\/ca\.crt \(not found\)$/,
    },
    {
      what: 'tls with a certificate another CA signed',
      text: JSON.stringify({ ...good[name], tls: tls(otherCaDir) }),
      line: /^config key tls\.certFile: \/.*\/other-ca\/daemon\.crt was not signed by the CA in \/.*\/ca\/ca\.crt$/,
    },
    {
      what: 'tls with a certificate of another role',
      text: JSON.stringify({ ...good[name], tls: tls(caDir, 'viewer') }),
      line: new RegExp(`^config key tls\\.certFile: /.*/ca/viewer\\.crt has the role viewer; a ${name} needs one issued with --role ${name} \\(deploy/drplane-certs\\)$`),
    },
    {
      what: 'tls with a certificate without a role',
      text: JSON.stringify({ ...good[name], tls: tls(caDir, 'no-role') }),
      line: /^config key tls\.certFile: \/.*\/ca\/no-role\.crt \(CN=no-role\) cannot be used: it carries no drplane role \(a SAN URI drplane:\/\/role\/ROLE\)/,
    },
    {
      what: 'plaintext on an address that is not loopback',
      text: JSON.stringify({ ...good[name], listen: '0.0.0.0:0' }),
      line: /^config key listen: 0\.0\.0\.0:0 is not a loopback address and tls is not configured: .* --insecure-plaintext \(config key insecurePlaintext\)$/,
    },
    {
      what: 'a file that is not JSON (a trailing comma)',
      text: `${JSON.stringify(good[name]).slice(0, -1)},}`,
      line: /^config file \/.*\.json: not valid JSON: /,
    },
  ];
  const cases: Record<DaemonName, Case[]> = {
    'configuration-server': [
      { what: 'a wrong type', text: JSON.stringify({ ...good['configuration-server'], heartbeatIntervalMs: 'soon' }), line: /^config key heartbeatIntervalMs: heartbeatIntervalMs must be an integer from 100 to 5000, got "soon" \(milliseconds\)$/ },
      { what: 'a limit exceeded', text: JSON.stringify({ ...good['configuration-server'], heartbeatIntervalMs: 60_000 }), line: /^config key heartbeatIntervalMs: heartbeatIntervalMs must be an integer from 100 to 5000, got 60000/ },
      { what: 'a misspelt key', text: JSON.stringify({ ...without(good['configuration-server'], 'statusPollIntervalMs'), statusPollIntervalMS: 500 }), line: /^config key statusPollIntervalMS: unknown key \(docs\/configuration\.md lists every key\)$/ },
      { what: 'a link to another configuration server (it has none)', text: JSON.stringify({ ...good['configuration-server'], configurationServer: link }), line: /^config key configurationServer: unknown key/ },
      { what: 'a passphrase too short', text: JSON.stringify({ ...good['configuration-server'], passphrase: 'nineteen-characters' }), line: /^config key passphrase: the passphrase must have at least 20 characters$/ },
      ...common('configuration-server'),
    ],
    'process-server': [
      { what: 'a wrong type', text: JSON.stringify({ ...good['process-server'], memoryQueueBytesMax: 'lots' }), line: /^config key memoryQueueBytesMax: memoryQueueBytesMax must be an integer from 0 to 1073741824, got "lots" \(bytes\)$/ },
      { what: 'a boolean that is not one', text: JSON.stringify({ ...good['process-server'], compression: 'yes' }), line: /^config key compression: must be true or false, got "yes"$/ },
      { what: 'a limit exceeded', text: JSON.stringify({ ...good['process-server'], batchBytesMax: 1024 * MiB }), line: /^config key batchBytesMax: batchBytesMax must be an integer from 1048576 to 33554432, got 1073741824 \(bytes\)$/ },
      { what: 'a misspelt key', text: JSON.stringify({ ...without(good['process-server'], 'cacheBytesMax'), cacheBytesMaximum: 64 * MiB }), line: /^config key cacheBytesMaximum: unknown key/ },
      {
        what: 'tls with a certificate of another name than the daemon registers under',
        text: JSON.stringify({ ...good['process-server'], tls: tls(caDir, 'ps-other') }),
        line: /^config key name: ps1 is not the name in \/.*\/ca\/ps-other\.crt \(CN=ps-other\); the configuration server accepts a registration only under its certificate's name$/,
      },
      { what: 'a misspelt key in the link', text: JSON.stringify({ ...good['process-server'], configurationServer: { address: csAddress, passphrasefile: link.passphraseFile } }), line: /^config key configurationServer\.passphrasefile: unknown key/ },
      ...common('process-server'),
    ],
    'master-target': [
      { what: 'a wrong type', text: JSON.stringify({ ...good['master-target'], pruneIntervalMs: 'soon' }), line: /^config key pruneIntervalMs: pruneIntervalMs must be an integer from 10 to 60000, got "soon" \(milliseconds\)$/ },
      { what: 'a limit exceeded', text: JSON.stringify({ ...good['master-target'], disksMax: 1000 }), line: /^config key disksMax: disksMax must be an integer from 1 to 60, got 1000 \(replica disks\)$/ },
      {
        what: 'a misspelt required key',
        text: JSON.stringify({ ...without(good['master-target'], 'datastoreRoots'), datastoreRoot: [datastore] }),
        line: /^config key datastoreRoot: unknown key \(docs\/configuration\.md lists every key\) \(and 1 more: datastoreRoots\)$/,
      },
      {
        // The roots are made after the retention store is opened: the schema refuses a file first.
        what: 'a datastore root that is a file',
        text: JSON.stringify({ ...good['master-target'], datastoreRoots: [datastore, aFile] }),
        line: /^config key datastoreRoots\.1: \/.*\/a-file exists and is not a directory$/,
      },
      { what: 'a listen address that is not one', text: JSON.stringify({ ...good['master-target'], metricsListen: 'localhost' }), line: /^config key metricsListen: must be host:port/ },
      ...common('master-target'),
    ],
    agent: [
      { what: 'a wrong type', text: JSON.stringify({ ...good.agent, hookTimeoutMs: 'soon' }), line: /^config key hookTimeoutMs: hookTimeoutMs must be an integer from 100 to 30000, got "soon" \(milliseconds\)$/ },
      { what: 'a limit exceeded', text: JSON.stringify({ ...good.agent, heldBytesMax: 1024 * MiB }), line: /^config key heldBytesMax: heldBytesMax must be an integer from 1048576 to 268435456, got 1073741824 \(bytes\)$/ },
      { what: 'a misspelt nested key', text: JSON.stringify({ ...good.agent, hooks: { freez: 'true', thaw: 'true' } }), line: /^config key hooks\.freez: unknown key/ },
      { what: 'a misspelt required key', text: JSON.stringify({ ...without(good.agent, 'disks'), disk: [source] }), line: /^config key disk: unknown key .*\(and 1 more: disks\)$/ },
      { what: 'a log level that is not one', text: JSON.stringify({ ...good.agent, logLevel: 'verbose' }), line: /^config key logLevel: / },
      ...common('agent'),
    ],
  };

  for (const name of Object.keys(cases) as DaemonName[]) {
    await t.test(name, async (t) => {
      const before = snapshot(owned[name]);
      t.ok(before.length >= 2, `${before.length} files and directories of state`);
      // The cases start together (each with its own file), and each is checked once it has exited: the
      // snapshot taken then also covers whatever the cases still running did so far, and the one taken
      // after the last exit covers them all.
      const results = await Promise.all(
        cases[name].map(async ({ text }, index) => {
          const daemon = await startDaemon(name, { args: ['--config', configFile(name, text, index)], expectExit: true });
          const exit = await exitOf(daemon);
          return { daemon, exit, after: snapshot(owned[name]) };
        }),
      );
      cases[name].forEach(({ what, line }, index) => {
        const { daemon, exit, after } = results[index]!;
        t.same(exit, { code: 2, signal: null }, `${what}: exit code 2`);
        t.equal(daemon.stderr.length, 1, `${what}: one line on stderr`);
        const [prefix, rest] = [daemon.stderr[0]?.slice(0, name.length + 2), daemon.stderr[0]?.slice(name.length + 2) ?? ''];
        t.equal(prefix, `${name}: `, `${what}: the line starts with the daemon's name`);
        t.match(rest, line, `${what}: ${daemon.stderr[0]}`);
        t.same(daemon.logs, [], `${what}: not one log line (it stopped before its logger existed)`);
        t.same(after, before, `${what}: every file and directory of its data is as it was`);
      });
    });
  }
});
