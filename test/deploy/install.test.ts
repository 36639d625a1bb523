// Goal: deploy/install.sh, run into a scratch root that stands for a VM (the
// host's systemd units and a Node.js at /usr/bin/node), lays out exactly the
// files, owners, modes, users, units and enablement links deploy/README.md
// documents; every unit passes `systemd-analyze verify` there; the example
// configuration files pass the daemons' own validation; a second install keeps
// an edited configuration; drplane-reconfigure turns configured paths into
// ReadWritePaths=; uninstall keeps data, configuration and users.
import t, { type Test } from 'tap';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { distRoot, repoRoot, tempDir } from '../helpers/daemons';
import { loadConfig, type FlagSpec } from '../../shared/config';
import { loadTls } from '../../shared/tls';
import * as configurationServerConfig from '../../daemons/configuration-server/config';
import * as processServerConfig from '../../daemons/process-server/config';
import * as masterTargetConfig from '../../daemons/master-target/config';
import * as agentConfig from '../../daemons/agent/config';

const deploy = path.join(repoRoot, 'deploy');
const daemons = ['configuration-server', 'process-server', 'master-target', 'agent'] as const;
type Daemon = (typeof daemons)[number];
const userOf: Record<Daemon, string> = { 'configuration-server': 'drplane-cs', 'process-server': 'drplane-ps', 'master-target': 'drplane-mt', agent: 'root' };
const configModules: Record<Daemon, { schema: Parameters<typeof loadConfig>[0]; flags: FlagSpec; defaults: Record<string, unknown> }> = {
  'configuration-server': configurationServerConfig,
  'process-server': processServerConfig,
  'master-target': masterTargetConfig,
  agent: agentConfig,
};
const units = ['drplane.target', ...daemons.map((name) => `drplane-${name}.service`)];

interface Run {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(command: string, args: string[]): Run {
  const result = spawnSync(command, args, { encoding: 'utf8', timeout: 120_000 });
  return { status: result.status, stdout: result.stdout ?? '', stderr: result.stderr ?? String(result.error ?? '') };
}

/** Runs and asserts exit 0, printing the output when it is not. */
function runOk(t: Test, command: string, args: string[]): Run {
  const result = run(command, args);
  t.equal(result.status, 0, `${path.basename(command)} ${args.join(' ')}`, { stdout: result.stdout, stderr: result.stderr });
  return result;
}

const install = (t: Test, root: string, ...extra: string[]) => runOk(t, path.join(deploy, 'install.sh'), ['--root', root, '--from', distRoot, ...extra]);
const uninstall = (t: Test, root: string, ...extra: string[]) => runOk(t, path.join(deploy, 'uninstall.sh'), ['--root', root, ...extra]);
const reconfigure = (root: string) => run(path.join(deploy, 'drplane-reconfigure'), ['--root', root]);

const hasCommand = (name: string) => run('sh', ['-c', `command -v ${name}`]).status === 0;
const missing = ['systemd-analyze', 'systemd-sysusers', 'systemd-tmpfiles', 'systemctl', 'openssl', 'setpriv'].filter((name) => !hasCommand(name));
const skip = process.getuid?.() !== 0 ? 'the installer creates users and sets owners: run as root' : missing.length ? `not installed: ${missing.join(', ')}` : false;

/** A scratch root standing for a freshly made VM: systemd's units (verify resolves sysinit.target and friends there) and Node.js at /usr/bin/node. */
function makeVm(): string {
  const root = tempDir('drplane-deploy-');
  fs.chmodSync(root, 0o755); // the daemons' users must be able to walk in, as on a real /
  const hostUnits = ['/usr/lib/systemd/system', '/lib/systemd/system'].find((dir) => fs.existsSync(path.join(dir, 'sysinit.target')));
  if (!hostUnits) throw new Error('no systemd units on this host (sysinit.target)');
  fs.cpSync(hostUnits, path.join(root, 'usr/lib/systemd/system'), { recursive: true, verbatimSymlinks: true });
  fs.mkdirSync(path.join(root, 'usr/bin'), { recursive: true });
  fs.writeFileSync(path.join(root, 'usr/bin/node'), `#!/bin/sh\nexec ${process.execPath} "$@"\n`, { mode: 0o755 });
  return root;
}

/** Every path under root (relative, with a leading /; directories end with /). */
function walk(root: string, dir = '/'): string[] {
  const found: string[] = [];
  for (const entry of fs.readdirSync(path.join(root, dir), { withFileTypes: true })) {
    const relative = path.posix.join(dir, entry.name);
    if (entry.isDirectory()) found.push(`${relative}/`, ...walk(root, relative));
    else found.push(relative);
  }
  return found;
}

/** Users and groups of the target (its /etc/passwd and /etc/group, not the host's). */
function accounts(root: string) {
  const read = (file: string) =>
    fs
      .readFileSync(path.join(root, 'etc', file), 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((line) => line.split(':'));
  const passwd = read('passwd');
  const group = read('group');
  const uid = (name: string) => (name === 'root' ? 0 : Number(passwd.find((fields) => fields[0] === name)?.[2] ?? NaN));
  const gid = (name: string) => (name === 'root' ? 0 : Number(group.find((fields) => fields[0] === name)?.[2] ?? NaN));
  return { passwd, group, uid, gid };
}

interface Row {
  path: string;
  owner?: string;
  group?: string;
  mode?: number;
  link?: string;
  wholeTree: boolean;
}

/** The cells of the first table after a heading of deploy/README.md, header and separator left out. */
function documentedTable(heading: string): string[][] {
  const readme = fs.readFileSync(path.join(deploy, 'README.md'), 'utf8').split('\n');
  const start = readme.findIndex((line) => line.replace(/^#+ /, '') === heading);
  if (start < 0) throw new Error(`deploy/README.md has no heading "${heading}"`);
  const lines: string[] = [];
  for (const line of readme.slice(start + 1)) {
    if (line.startsWith('|')) lines.push(line);
    else if (lines.length) break;
  }
  return lines.slice(2).map((line) => line.slice(1, -1).split(' | ').map((cell) => cell.trim()));
}

/** The rows of a table of paths (| `/path` | owner:group | mode or → target | what |). */
function documentedRows(heading: string): Row[] {
  const rows: Row[] = [];
  for (const [cell, owner, mode, what] of documentedTable(heading)) {
    const file = /^`(\/[^`]*)`$/.exec(cell)?.[1];
    if (!file) continue;
    const row: Row = { path: file, wholeTree: what.includes('whole tree') };
    if (owner !== '(kept)') [row.owner, row.group] = owner.split(':');
    if (mode.startsWith('→')) row.link = mode.slice(1).trim();
    else if (mode !== '(kept)') row.mode = parseInt(mode, 8);
    rows.push(row);
  }
  if (rows.length === 0) throw new Error(`no table of paths after "${heading}" in deploy/README.md`);
  return rows;
}

/** Checks one documented row against the file; one assertion per row. */
function checkRow(t: Test, root: string, row: Row): void {
  const ids = accounts(root);
  const file = path.join(root, row.path);
  let stat: fs.Stats;
  try {
    stat = fs.lstatSync(file);
  } catch {
    t.fail(`${row.path} is missing`);
    return;
  }
  const found = {
    type: stat.isSymbolicLink() ? 'link' : stat.isDirectory() ? 'directory' : 'file',
    ...(row.link ? { target: fs.readlinkSync(file) } : {}),
    ...(row.owner ? { uid: stat.uid, gid: stat.gid } : {}),
    ...(row.mode !== undefined ? { mode: (stat.mode & 0o7777).toString(8) } : {}),
  };
  const expected = {
    type: row.link ? 'link' : row.path.endsWith('/') ? 'directory' : 'file',
    ...(row.link ? { target: row.link } : {}),
    ...(row.owner ? { uid: ids.uid(row.owner), gid: ids.gid(row.group!) } : {}),
    ...(row.mode !== undefined ? { mode: row.mode.toString(8) } : {}),
  };
  t.same(found, expected, `${row.path}: ${row.link ? `→ ${row.link}` : `${row.owner ?? ''}:${row.group ?? ''} ${row.mode?.toString(8) ?? ''}`}`);
}

/** `systemd-analyze verify --root` on every installed unit: exit 0 and not one line about drplane. */
function verifyUnits(t: Test, root: string, names: string[]): void {
  for (const unit of names) {
    const result = run('systemd-analyze', ['verify', `--root=${root}`, unit]);
    const complaints = `${result.stdout}${result.stderr}`.split('\n').filter((line) => /drplane/.test(line));
    t.same({ status: result.status, complaints }, { status: 0, complaints: [] }, `systemd-analyze verify ${unit}`, { output: `${result.stdout}${result.stderr}` });
  }
}

/** Reads a file as a daemon's user would (uid, primary group and supplementary groups of the target's accounts). */
function readableBy(root: string, user: string, file: string): boolean {
  const ids = accounts(root);
  if (user === 'root') return run('cat', [path.join(root, file)]).status === 0;
  const groups = ids.group.filter((fields) => fields[0] === user || (fields[3] ?? '').split(',').includes(user)).map((fields) => fields[2]);
  return run('setpriv', [`--reuid=${ids.uid(user)}`, `--regid=${ids.gid(user)}`, `--groups=${groups.join(',')}`, '--', 'cat', path.join(root, file)]).status === 0;
}

const dropIn = (root: string, name: Daemon) => fs.readFileSync(path.join(root, `etc/systemd/system/drplane-${name}.service.d/50-paths.conf`), 'utf8');
const settings = (text: string, key: string) => text.split('\n').filter((line) => line.startsWith(`${key}=`)).map((line) => line.slice(key.length + 1));

t.test('a full install lays out the VM as deploy/README.md documents', { skip }, async (t) => {
  const root = makeVm();
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  const before = new Set(walk(root));
  install(t, root);

  const rows = documentedRows('Files the installer writes');
  for (const row of rows) checkRow(t, root, row);

  // Nothing the README does not list: each written path is a row, inside a
  // whole-tree row, or a parent of a row. (/etc/.pwd.lock is systemd-sysusers'
  // lock file, left behind by the shadow tools' convention.)
  const documented = new Set(rows.map((row) => row.path));
  const parents = new Set(rows.flatMap((row) => row.path.split('/').slice(1, -1).map((_part, index, parts) => `/${parts.slice(0, index + 1).join('/')}/`)));
  const trees = rows.filter((row) => row.wholeTree).map((row) => row.path);
  const undocumented = walk(root).filter(
    (entry) => !before.has(entry) && !documented.has(entry) && !parents.has(entry) && !trees.some((tree) => entry.startsWith(tree)) && entry !== '/etc/.pwd.lock',
  );
  t.same(undocumented, [], 'the installer writes nothing deploy/README.md does not list');

  // The whole trees: root's, nothing group- or world-writable; the program without tests, benchmarks or dev packages.
  const program = walk(root, '/usr/lib/drplane/');
  const loose = program.filter((entry) => {
    const stat = fs.lstatSync(path.join(root, entry));
    return stat.uid !== 0 || stat.gid !== 0 || (!stat.isSymbolicLink() && (stat.mode & 0o022) !== 0);
  });
  t.same(loose, [], 'every file of /usr/lib/drplane is root:root and writable by root only');
  for (const name of [...daemons, 'drctl']) t.ok(fs.existsSync(path.join(root, `usr/lib/drplane/dist/daemons/${name}/main.js`)), `dist/daemons/${name}/main.js is installed`);
  t.ok(fs.existsSync(path.join(root, 'usr/lib/drplane/proto/drplane/v1/common.proto')), 'proto/ is installed (loaded at run time)');
  t.notOk(fs.existsSync(path.join(root, 'usr/lib/drplane/dist/test')), 'no compiled tests');
  const packageJson = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package.json'), 'utf8')) as { dependencies: Record<string, string> };
  t.same(Object.keys(packageJson.dependencies).filter((name) => !fs.existsSync(path.join(root, 'usr/lib/drplane/node_modules', name, 'package.json'))), [], 'every production dependency is installed');
  const lock = JSON.parse(fs.readFileSync(path.join(repoRoot, 'package-lock.json'), 'utf8')) as { packages: Record<string, { dev?: boolean }> };
  const devOnly = Object.keys(lock.packages).filter((key) => lock.packages[key].dev);
  t.ok(devOnly.includes('node_modules/tap'), 'package-lock.json marks tap dev');
  t.same(devOnly.filter((key) => fs.existsSync(path.join(root, 'usr/lib/drplane', key))), [], 'no package only development needs is installed');
  // A daemon loads all its modules (lmdb, lz4-napi, node-unix-socket) before it prints its usage.
  for (const name of daemons) {
    const result = run(process.execPath, [path.join(root, `usr/lib/drplane/dist/daemons/${name}/main.js`), '--help']);
    t.equal(result.status, 0, `the installed ${name} loads its modules`, { stderr: result.stderr });
  }

  // Units: as in deploy/systemd, and valid where they are installed.
  for (const unit of units) {
    t.equal(fs.readFileSync(path.join(root, 'usr/lib/systemd/system', unit), 'utf8'), fs.readFileSync(path.join(deploy, 'systemd', unit), 'utf8'), `${unit} is deploy/systemd/${unit}`);
  }
  verifyUnits(t, root, units);

  // Users, as the README's table says.
  const ids = accounts(root);
  const documentedUsers = documentedTable('Users').filter(([user]) => user.startsWith('`drplane-'));
  t.equal(documentedUsers.length, 3, 'deploy/README.md lists three users');
  for (const [cell, groups] of documentedUsers) {
    const user = cell.replace(/`/g, '');
    const [primary, ...supplementary] = groups.split(',').map((name) => name.trim());
    const entry = ids.passwd.find((fields) => fields[0] === user);
    t.ok(entry, `user ${user} exists`);
    t.equal(Number(entry?.[3]), ids.gid(primary), `${user}'s primary group is ${primary}`);
    t.match(entry?.[6], /nologin$/, `${user} cannot log in`);
    t.ok(Number(entry?.[2]) < 1000, `${user} is a system user`);
    for (const group of supplementary) t.ok((ids.group.find((fields) => fields[0] === group)?.[3] ?? '').split(',').includes(user), `${user} is in group ${group}`);
  }

  // Configuration: each file passes the daemon's own validation, as at start-up.
  for (const name of daemons) {
    const file = path.join(root, `etc/drplane/${name}.json`);
    const { schema, flags, defaults } = configModules[name];
    let config: Record<string, unknown> = {};
    t.doesNotThrow(() => {
      config = loadConfig(schema, ['--config', file], flags, defaults) as Record<string, unknown>;
    }, `/etc/drplane/${name}.json passes the ${name}'s validation`);
    t.same(
      { dataDir: config.dataDir, tls: config.tls, metricsListen: typeof config.metricsListen },
      { dataDir: `/var/lib/drplane/${name}`, tls: { caFile: '/etc/drplane/tls/ca.crt', certFile: `/etc/drplane/tls/${name}.crt`, keyFile: `/etc/drplane/tls/${name}.key` }, metricsListen: 'string' },
      `${name}: data directory, TLS files and metrics endpoint`,
    );
  }
  // Who may read what.
  for (const name of daemons) {
    t.ok(readableBy(root, userOf[name], `etc/drplane/${name}.json`), `${userOf[name]} reads its configuration`);
    t.ok(readableBy(root, userOf[name], 'etc/drplane/passphrase'), `${userOf[name]} reads the passphrase`);
  }
  t.notOk(readableBy(root, 'drplane-ps', 'etc/drplane/master-target.json'), "drplane-ps cannot read the master target's configuration");
  t.notOk(readableBy(root, 'drplane-mt', 'etc/drplane/agent.json'), "drplane-mt cannot read the agent's configuration");
  t.match(fs.readFileSync(path.join(root, 'etc/drplane/passphrase'), 'utf8'), /^[A-Za-z0-9_-]{32}\n$/, 'a generated passphrase of 32 characters');
  t.same(settings(dropIn(root, 'master-target'), 'ReadWritePaths'), ['/var/lib/drplane/datastore'], "the master target may write the example's datastore root");
});

t.test('certificates, a second install, drplane-reconfigure and uninstall', { skip }, async (t) => {
  const root = makeVm();
  const ca = tempDir('drplane-deploy-ca-');
  t.teardown(() => {
    fs.rmSync(root, { recursive: true, force: true });
    fs.rmSync(ca, { recursive: true, force: true });
  });
  install(t, root);
  const ids = accounts(root);

  // Certificates made with drplane-certs and copied in as deploy/README.md says; reconfigure gives each key to its daemon.
  runOk(t, path.join(deploy, 'drplane-certs'), ['init', ca]);
  for (const name of daemons) {
    runOk(t, path.join(deploy, 'drplane-certs'), ['issue', ca, name, '--role', name, '--ip', '127.0.0.1']);
    fs.copyFileSync(path.join(ca, `${name}.crt`), path.join(root, `etc/drplane/tls/${name}.crt`));
    fs.copyFileSync(path.join(ca, `${name}.key`), path.join(root, `etc/drplane/tls/${name}.key`));
  }
  fs.copyFileSync(path.join(ca, 'ca.crt'), path.join(root, 'etc/drplane/tls/ca.crt'));
  runOk(t, path.join(deploy, 'install.sh'), ['--reconfigure', '--root', root]);
  for (const row of documentedRows('Certificates')) checkRow(t, root, row);
  for (const name of daemons) {
    const config = JSON.parse(fs.readFileSync(path.join(root, `etc/drplane/${name}.json`), 'utf8')) as { tls: Record<string, string> };
    const files = { caFile: path.join(root, config.tls.caFile), certFile: path.join(root, config.tls.certFile), keyFile: path.join(root, config.tls.keyFile) };
    t.equal(loadTls(files).commonName, name, `${name}: the configured TLS files pass the start-up check`);
    t.ok(readableBy(root, userOf[name], `etc/drplane/tls/${name}.key`), `${userOf[name]} reads its key`);
  }
  t.notOk(readableBy(root, 'drplane-ps', 'etc/drplane/tls/master-target.key'), "drplane-ps cannot read the master target's key");
  t.notOk(readableBy(root, 'drplane-cs', 'etc/drplane/tls/agent.key'), "drplane-cs cannot read the agent's key");

  // A second install keeps an edited configuration and the passphrase, and applies the edit's paths.
  const edited = path.join(root, 'etc/drplane/process-server.json');
  const config = JSON.parse(fs.readFileSync(edited, 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(edited, `${JSON.stringify({ ...config, name: 'ps-site-a', cacheDir: '/srv/drplane-cache' }, null, 2)}\n`);
  const editedText = fs.readFileSync(edited, 'utf8');
  const passphrase = fs.readFileSync(path.join(root, 'etc/drplane/passphrase'), 'utf8');
  const second = install(t, root);
  t.match(second.stdout, /kept \/etc\/drplane\/process-server\.json/, 'the installer says it kept the file');
  t.equal(fs.readFileSync(edited, 'utf8'), editedText, 'the edited configuration is untouched');
  t.equal(fs.readFileSync(path.join(root, 'etc/drplane/passphrase'), 'utf8'), passphrase, 'the passphrase is untouched');
  t.doesNotThrow(() => loadConfig(processServerConfig.schema, ['--config', edited], processServerConfig.flags, processServerConfig.defaults), 'the edited file still passes validation');
  t.same(settings(dropIn(root, 'process-server'), 'ReadWritePaths'), ['/srv/drplane-cache'], 'the cache directory is writable');
  const cache = fs.statSync(path.join(root, 'srv/drplane-cache'));
  t.same({ uid: cache.uid, mode: (cache.mode & 0o7777).toString(8) }, { uid: ids.uid('drplane-ps'), mode: '700' }, 'and made, owned by drplane-ps');
  for (const row of documentedRows('Files the installer writes')) checkRow(t, root, row);
  for (const row of documentedRows('Certificates')) checkRow(t, root, row);

  // drplane-reconfigure: datastore roots made, a missing retention volume never made, agent paths.
  const masterTargetFile = path.join(root, 'etc/drplane/master-target.json');
  const masterTarget = JSON.parse(fs.readFileSync(masterTargetFile, 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(masterTargetFile, JSON.stringify({ ...masterTarget, datastoreRoots: ['/var/lib/drplane/datastore', '/srv/datastore2'], retentionDir: '/srv/retention' }));
  const agentFile = path.join(root, 'etc/drplane/agent.json');
  const agent = JSON.parse(fs.readFileSync(agentFile, 'utf8')) as Record<string, unknown>;
  fs.writeFileSync(agentFile, JSON.stringify({ ...agent, disks: ['/dev/vdb', '/srv/images/vm1.img'], diskRoots: ['/var/lib/drplane/datastore/recovered'] }));
  const reconfigured = reconfigure(root);
  t.equal(reconfigured.status, 0, 'drplane-reconfigure', { stderr: reconfigured.stderr });
  t.match(reconfigured.stdout, /retentionDir \/srv\/retention does not exist: mount the retention volume there/, 'a missing retention volume is named');
  t.same(
    { writable: settings(dropIn(root, 'master-target'), 'ReadWritePaths'), mounts: settings(dropIn(root, 'master-target'), 'RequiresMountsFor') },
    { writable: ['/var/lib/drplane/datastore', '/srv/datastore2', '-/srv/retention'], mounts: ['/var/lib/drplane/datastore', '/srv/datastore2', '/srv/retention'] },
    'master target: datastore roots and the retention volume (ignored while missing)',
  );
  t.notOk(fs.existsSync(path.join(root, 'srv/retention')), 'the retention volume is never made');
  const datastore2 = fs.statSync(path.join(root, 'srv/datastore2'));
  t.same({ uid: datastore2.uid, mode: (datastore2.mode & 0o7777).toString(8) }, { uid: ids.uid('drplane-mt'), mode: '700' }, 'a missing datastore root is made, owned by drplane-mt');
  t.same(settings(dropIn(root, 'agent'), 'ReadWritePaths'), ['-/srv/images/vm1.img', '/var/lib/drplane/datastore/recovered'], 'agent: file disks and disk roots, not /dev');
  const recovered = fs.statSync(path.join(root, 'var/lib/drplane/datastore/recovered'));
  t.equal(recovered.uid, ids.uid('drplane-mt'), "a disk root inside the master target's datastore stays the master target's");
  verifyUnits(t, root, units);

  const before = dropIn(root, 'configuration-server');
  const configurationServerFile = path.join(root, 'etc/drplane/configuration-server.json');
  const configurationServerText = fs.readFileSync(configurationServerFile, 'utf8');
  fs.writeFileSync(configurationServerFile, '{ "name": ');
  const broken = reconfigure(root);
  t.not(broken.status, 0, 'invalid JSON fails drplane-reconfigure');
  t.match(broken.stderr, /configuration-server\.json: not valid JSON/, 'with a line naming the file');
  t.equal(dropIn(root, 'configuration-server'), before, 'and leaves the drop-in as it was');
  fs.writeFileSync(configurationServerFile, configurationServerText);
  fs.writeFileSync(path.join(root, 'etc/drplane/process-server.json'), JSON.stringify({ ...config, cacheDir: '/srv/a b' }));
  const spaced = reconfigure(root);
  t.match(spaced.stderr, /config key cacheDir: "\/srv\/a b" holds a character a systemd unit cannot list/, 'a path a unit cannot hold is refused, naming the key');
  fs.writeFileSync(edited, editedText);

  // Uninstall: one daemon, then the rest; data, configuration and users stay.
  const marker = path.join(root, 'var/lib/drplane/master-target/marker');
  fs.writeFileSync(marker, 'replica data');
  fs.chownSync(marker, ids.uid('drplane-mt'), ids.gid('drplane-mt'));
  const configurations = Object.fromEntries(daemons.map((name) => [name, fs.readFileSync(path.join(root, `etc/drplane/${name}.json`), 'utf8')]));
  uninstall(t, root, '--daemons', 'agent');
  t.notOk(fs.existsSync(path.join(root, 'usr/lib/systemd/system/drplane-agent.service')), 'the agent unit is gone');
  t.notOk(fs.existsSync(path.join(root, 'etc/systemd/system/drplane.target.wants/drplane-agent.service')), 'and its enablement link');
  t.ok(fs.existsSync(path.join(root, 'usr/lib/drplane/dist/daemons/process-server/main.js')), 'the program stays for the other daemons');
  verifyUnits(t, root, units.filter((unit) => unit !== 'drplane-agent.service'));

  uninstall(t, root);
  const kept = ['/var/lib/drplane/', '/etc/drplane/', '/srv/'];
  const left = walk(root).filter((entry) => /drplane/.test(entry) && !kept.some((dir) => entry.startsWith(dir)));
  t.same(left, [], 'no unit, link, drop-in, sysusers.d or tmpfiles.d file, command or program is left');
  t.ok(fs.existsSync(path.join(root, 'srv/drplane-cache')), 'the cache directory is kept');
  t.equal(fs.readFileSync(marker, 'utf8'), 'replica data', 'data is kept');
  t.equal(fs.statSync(marker).uid, ids.uid('drplane-mt'), "and still the master target's");
  for (const name of daemons) t.equal(fs.readFileSync(path.join(root, `etc/drplane/${name}.json`), 'utf8'), configurations[name], `/etc/drplane/${name}.json is kept`);
  t.ok(fs.existsSync(path.join(root, 'etc/drplane/tls/process-server.key')), 'keys are kept');
  t.same(['drplane-cs', 'drplane-ps', 'drplane-mt'].map((user) => accounts(root).uid(user)), ['drplane-cs', 'drplane-ps', 'drplane-mt'].map((user) => ids.uid(user)), 'the users are kept');
  uninstall(t, root);
  uninstall(t, root, '--purge-config');
  t.notOk(fs.existsSync(path.join(root, 'etc/drplane')), '--purge-config removes /etc/drplane');
  t.ok(fs.existsSync(marker), 'but never data');
});

t.test('--daemons installs only those daemons', { skip }, async (t) => {
  const root = makeVm();
  t.teardown(() => fs.rmSync(root, { recursive: true, force: true }));
  install(t, root, '--daemons', 'process-server,agent');
  const installed = fs.readdirSync(path.join(root, 'usr/lib/systemd/system')).filter((unit) => unit.startsWith('drplane'));
  t.same(installed.sort(), ['drplane-agent.service', 'drplane-process-server.service', 'drplane.target'], 'their units and the target');
  t.same(fs.readdirSync(path.join(root, 'etc/drplane')).sort(), ['agent.json', 'process-server.json', 'tls'], 'their configuration, and no passphrase without the configuration server');
  t.same(accounts(root).passwd.map((fields) => fields[0]).filter((user) => user.startsWith('drplane')), ['drplane-ps'], 'only the process server user');
  t.same(fs.readdirSync(path.join(root, 'var/lib/drplane')).sort(), ['agent', 'process-server'], 'their data directories');
  verifyUnits(t, root, ['drplane.target', 'drplane-agent.service', 'drplane-process-server.service']);
  const refused = run(path.join(deploy, 'install.sh'), ['--root', root, '--from', distRoot, '--daemons', 'process-server,backup-server']);
  t.same({ status: refused.status, stderr: refused.stderr.trim() }, { status: 1, stderr: "install.sh: unknown daemon 'backup-server' in --daemons (one of: configuration-server process-server master-target agent)" }, 'an unknown daemon is refused with one line');
});
