// Goal: the installed units work under a real systemd, sandbox and all. The
// test boots systemd as PID 1 of its own namespaces over an overlay of this
// host's / (test/deploy/boot-systemd.sh: writes vanish with the namespaces),
// with certificates made by drplane-certs, and runs `deploy/install.sh --start`
// inside, as on a VM. Then: the installer keeps the operator's agent
// configuration; every daemon is active only once it serves (Type=notify,
// STATUS= line), as its user, and registers over mTLS; a machine replicates
// byte-exact into the master target's datastore, which its sandbox may write
// while /etc and /usr stay read-only; a killed daemon is restarted
// (Restart=on-failure); a bad configuration file leaves its unit failed after
// one line naming the key (exit 2, not restarted); `systemctl stop
// drplane.target` stops every daemon with exit 0, the process server first and
// the configuration server last; drplane-uninstall stops and removes the units
// and keeps the data.
//
// It needs root, unshare, nsenter, overlayfs and a cgroup2 mount, and a host
// not run by systemd itself (on such a host, run it in a VM); otherwise it is
// skipped with the reason.
import t from 'tap';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { distRoot, repoRoot, tempDir } from '../helpers/daemons';
import { until } from '../helpers/wait';

const daemons = ['configuration-server', 'process-server', 'master-target', 'agent'] as const;
const userOf = { 'configuration-server': 'drplane-cs', 'process-server': 'drplane-ps', 'master-target': 'drplane-mt', agent: 'root' } as const;
const portOf = { 'configuration-server': 7100, 'process-server': 7101, 'master-target': 7102, agent: 7103 } as const;

const has = (name: string) => spawnSync('sh', ['-c', `command -v ${name}`]).status === 0;
/** Where cgroup2 is mounted, and this process's cgroup in it. */
function cgroup2(): string | undefined {
  const mount = fs
    .readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((line) => line.split(' '))
    .find((fields) => fields[2] === 'cgroup2')?.[1];
  const own = fs
    .readFileSync('/proc/self/cgroup', 'utf8')
    .split('\n')
    .find((line) => line.startsWith('0::'))
    ?.slice(3);
  return mount && own !== undefined ? path.join(mount, own) : undefined;
}
const filesystems = fs.readFileSync('/proc/filesystems', 'utf8');
const skip =
  process.getuid?.() !== 0
    ? 'needs root (it mounts and boots systemd)'
    : fs.existsSync('/run/systemd/system')
      ? 'this host runs systemd itself: boot a VM for this test instead'
      : !['unshare', 'nsenter', 'chroot', 'openssl'].every(has) || !fs.existsSync('/lib/systemd/systemd')
        ? 'needs unshare, nsenter, chroot, openssl and /lib/systemd/systemd'
        : !/\toverlay\n/.test(filesystems) || !cgroup2()
          ? 'needs overlayfs and a cgroup2 mount'
          : false;

interface Booted {
  /** systemd's pid as this host sees it. */
  pid: number;
  console: string[];
  unshare: ChildProcess;
}

/** Runs a command inside the booted system (all its namespaces and its root). */
function inside(booted: Booted, command: string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync('nsenter', ['-t', String(booted.pid), '-m', '-p', '-n', '-u', '-i', '-r', '-w', ...command], { encoding: 'utf8', timeout: 60_000 });
  return { status: result.status, stdout: result.stdout ?? '', stderr: result.stderr ?? '' };
}
const show = (booted: Booted, unit: string, property: string) => inside(booted, ['systemctl', 'show', unit, '-p', property, '--value']).stdout.trim();
const journal = (booted: Booted, daemon: string) => inside(booted, ['journalctl', '-u', `drplane-${daemon}`, '-o', 'cat', '--no-pager']).stdout.split('\n');
const jsonLines = (lines: string[]) => lines.filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as Record<string, unknown>);

t.test('the units under a real systemd', { skip }, async (t) => {
  const work = tempDir('drplane-boot-');
  const group = path.join(cgroup2()!, `drplane-boot-${process.pid}`);
  fs.mkdirSync(group);
  const flags = ['--mount', '--pid', '--fork', '--net', '--uts', '--ipc', '--cgroup', '--propagation', 'private'];
  // The shell moves itself into a cgroup of its own first: the namespace's cgroup root, which systemd manages.
  const unshare = spawn('sh', ['-c', `echo $$ > ${group}/cgroup.procs && exec unshare ${flags.join(' ')} bash "$0" "$@"`, path.join(repoRoot, 'test/deploy/boot-systemd.sh'), work, repoRoot], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const consoleLines: string[] = [];
  for (const stream of [unshare.stdout!, unshare.stderr!]) readline.createInterface({ input: stream }).on('line', (line) => consoleLines.push(line));
  const exited = new Promise((resolve) => unshare.once('exit', resolve));
  /** The namespace's PID 1 (the boot script, then systemd), as this host sees it. */
  const namespaceInit = () => {
    try {
      return Number(fs.readFileSync(`/proc/${unshare.pid}/task/${unshare.pid}/children`, 'utf8').trim().split(' ')[0]) || undefined;
    } catch {
      return undefined;
    }
  };
  t.teardown(async () => {
    // PID 1 of the namespace: killing it ends every process there, and the mounts with them.
    const init = namespaceInit();
    if (init) process.kill(init, 'SIGKILL');
    unshare.kill('SIGKILL');
    await exited;
    await until(
      'the namespace cgroups to empty',
      async () => {
        for (const dir of walkDirs(group).reverse()) fs.rmdirSync(dir);
        return true;
      },
      30_000,
      100,
    );
    fs.rmSync(work, { recursive: true, force: true });
  });

  const handedOver = until('the boot script to hand over to systemd', async () => consoleLines.includes('booting'), 180_000);
  await Promise.race([handedOver, exited.then(() => Promise.reject(new Error(`the boot script failed:\n${consoleLines.join('\n')}`)))]);
  const pid = await until('systemd to run', async () => {
    const init = namespaceInit();
    return init !== undefined && fs.readlinkSync(`/proc/${init}/exe`).endsWith('systemd') && init;
  });
  const booted: Booted = { pid, console: consoleLines, unshare };
  const state = await until(
    'the boot to finish',
    async () => {
      const answer = inside(booted, ['systemctl', 'is-system-running']).stdout.trim();
      return ['running', 'degraded'].includes(answer) && answer;
    },
    120_000,
    250,
  );
  t.equal(state, 'running', 'systemd reached the test target with no failed unit', { failed: inside(booted, ['systemctl', '--failed', '--no-pager']).stdout });

  // Installed as on a VM: systemd runs, so the installer reloads it, enables and starts.
  const installed = inside(booted, [path.join(repoRoot, 'deploy/install.sh'), '--from', distRoot, '--start']);
  t.equal(installed.status, 0, 'install.sh --start inside the booted system', { stdout: installed.stdout, stderr: installed.stderr });
  t.match(installed.stdout, /kept \/etc\/drplane\/agent\.json/, "the operator's agent configuration is kept");
  t.match(installed.stdout, /started: drplane\.target drplane-configuration-server\.service/, 'and the daemons started');

  // Ready means serving: active, with the daemon's own status line, as its user.
  for (const daemon of daemons) {
    const unit = `drplane-${daemon}.service`;
    t.same(
      { active: show(booted, unit, 'ActiveState'), status: show(booted, unit, 'StatusText'), user: show(booted, unit, 'User') || 'root', watchdog: show(booted, unit, 'WatchdogUSec') },
      { active: 'active', status: `serving on 127.0.0.1:${portOf[daemon]} (mTLS)`, user: userOf[daemon], watchdog: '1min' },
      `${unit} is active once it serves, as ${userOf[daemon]}`,
    );
  }
  for (const daemon of ['process-server', 'master-target', 'agent'] as const) {
    const registered = await until(`${daemon} to register`, async () => jsonLines(journal(booted, daemon)).find((line) => line.msg === 'registered with the configuration server'));
    t.ok(registered, `${daemon} registered with the configuration server over mTLS (its log in the journal)`);
  }

  // A machine replicates into the datastore the master target's sandbox may write.
  const drctl = (...args: string[]) =>
    inside(booted, ['env', 'DRPLANE_SERVER=127.0.0.1:7100', 'DRPLANE_CA_FILE=/root/ca/ca.crt', 'DRPLANE_CERT_FILE=/root/ca/operator.crt', 'DRPLANE_KEY_FILE=/root/ca/operator.key', 'drctl', ...args]);
  for (const args of [
    ['policy', 'create', 'gold', '--rpo-threshold', '5m', '--retention', '2h', '--crash-interval', '2s', '--app-interval', '30m'],
    ['machine', 'add', 'vm1', '--agent', 'vm1', '--disk', '/srv/vm1.img'],
    ['enable', 'vm1', '--datastore', '/var/lib/drplane/datastore/vm1', '--policy', 'gold', '--capture', 'scan', '--scan-interval', '2s'],
  ]) {
    const result = drctl(...args);
    t.equal(result.status, 0, `drctl ${args.slice(0, 2).join(' ')}`, { stdout: result.stdout, stderr: result.stderr });
  }
  await until('a recovery point of vm1', async () => /vm1-disk0@\d+/.test(drctl('points', 'vm1').stdout), 60_000, 500);
  t.equal(inside(booted, ['cmp', '/srv/vm1.img', '/var/lib/drplane/datastore/vm1/vm1-disk0.img']).status, 0, 'the replica is byte-exact');
  const masterTarget = show(booted, 'drplane-master-target.service', 'MainPID');
  const inSandbox = (command: string) => inside(booted, ['nsenter', '-t', masterTarget, '-m', '-r', '-w', 'sh', '-c', command]);
  t.match(inSandbox('touch /etc/drplane/probe').stderr, /Read-only file system/, "the master target's sandbox cannot write /etc");
  t.match(inSandbox('touch /usr/lib/drplane/probe').stderr, /Read-only file system/, 'nor the program');
  t.equal(inSandbox('touch /var/lib/drplane/datastore/probe && rm /var/lib/drplane/datastore/probe').status, 0, 'but may write its datastore root');

  // A crash is restarted.
  const agentPid = show(booted, 'drplane-agent.service', 'MainPID');
  inside(booted, ['kill', '-KILL', agentPid]);
  await until('the agent to be restarted', async () => show(booted, 'drplane-agent.service', 'NRestarts') === '1' && show(booted, 'drplane-agent.service', 'ActiveState') === 'active', 60_000, 250);
  t.not(show(booted, 'drplane-agent.service', 'MainPID'), agentPid, 'a killed agent is restarted (Restart=on-failure)');

  // A bad configuration: one line naming the key, exit 2, not restarted.
  const config = inside(booted, ['cat', '/etc/drplane/process-server.json']).stdout;
  inside(booted, ['sh', '-c', `cat > /etc/drplane/process-server.json <<'EOF'\n${JSON.stringify({ ...JSON.parse(config), cacheDirr: '/srv/cache' })}\nEOF`]);
  inside(booted, ['systemctl', 'restart', 'drplane-process-server']);
  t.same(
    { active: show(booted, 'drplane-process-server.service', 'ActiveState'), status: show(booted, 'drplane-process-server.service', 'ExecMainStatus'), restarts: show(booted, 'drplane-process-server.service', 'NRestarts') },
    { active: 'failed', status: '2', restarts: '0' },
    'a bad configuration leaves the unit failed with exit 2, not restarted',
  );
  t.equal(journal(booted, 'process-server').filter(Boolean).at(-1), 'process-server: config key cacheDirr: unknown key (docs/configuration.md lists every key)', 'the journal says which key');
  inside(booted, ['sh', '-c', `cat > /etc/drplane/process-server.json <<'EOF'\n${config}\nEOF`]);
  t.equal(inside(booted, ['systemctl', 'start', 'drplane-process-server']).status, 0, 'fixed, it starts again');

  // Stop: every daemon exits 0, in reverse start order.
  inside(booted, ['systemctl', 'stop', 'drplane.target']);
  await until('every daemon to stop', async () => daemons.every((daemon) => show(booted, `drplane-${daemon}.service`, 'ActiveState') === 'inactive'), 60_000, 250);
  const stoppedAt = Object.fromEntries(daemons.map((daemon) => [daemon, Number(show(booted, `drplane-${daemon}.service`, 'InactiveEnterTimestampMonotonic'))]));
  for (const daemon of daemons) {
    // The lines of the run that was stopped (its pid), in any order: journald reads the daemon's stdout on its own
    // time, so its last lines may land after the unit is inactive, and pino's asynchronous writes may arrive out of order.
    const lastRun = () => {
      const lines = jsonLines(journal(booted, daemon));
      const pid = lines.filter((line) => line.msg === 'stopping').at(-1)?.pid;
      return lines.filter((line) => line.pid === pid).map((line) => String(line.msg));
    };
    await until(`${daemon}'s "stopped" line in the journal`, async () => lastRun().includes('stopped'), 10_000, 250).catch(() => undefined);
    t.same(
      {
        result: show(booted, `drplane-${daemon}.service`, 'Result'),
        status: show(booted, `drplane-${daemon}.service`, 'ExecMainStatus'),
        stopped: lastRun().includes('stopped'),
        hardExit: lastRun().some((msg) => msg.includes('did not finish in time')),
      },
      { result: 'success', status: '0', stopped: true, hardExit: false },
      `${daemon} stopped cleanly: exit 0 after finishing its work, not at the hard exit`,
      { journal: journal(booted, daemon).slice(-4) },
    );
  }
  t.ok(
    stoppedAt['process-server'] <= stoppedAt['master-target'] && stoppedAt['process-server'] <= stoppedAt.agent && stoppedAt['master-target'] <= stoppedAt['configuration-server'] && stoppedAt.agent <= stoppedAt['configuration-server'],
    'the process server stops first and the configuration server last',
    { stoppedAt },
  );

  // Uninstall on the running system: units stopped and gone, data and users kept.
  inside(booted, ['systemctl', 'start', 'drplane.target']);
  const uninstalled = inside(booted, ['drplane-uninstall']);
  t.equal(uninstalled.status, 0, 'drplane-uninstall', { stdout: uninstalled.stdout, stderr: uninstalled.stderr });
  t.same(
    {
      units: inside(booted, ['systemctl', 'list-units', 'drplane*', '--all', '--no-legend']).stdout.trim(),
      files: inside(booted, ['systemctl', 'list-unit-files', 'drplane*', '--no-legend']).stdout.trim(),
      replica: inside(booted, ['cmp', '/srv/vm1.img', '/var/lib/drplane/datastore/vm1/vm1-disk0.img']).status,
      user: inside(booted, ['getent', 'passwd', 'drplane-mt']).status,
    },
    { units: '', files: '', replica: 0, user: 0 },
    'no unit is loaded or installed; the replica and the users are kept',
  );
});

function walkDirs(dir: string): string[] {
  return [dir, ...fs.readdirSync(dir, { withFileTypes: true }).filter((entry) => entry.isDirectory()).flatMap((entry) => walkDirs(path.join(dir, entry.name)))];
}
