// The peers drplane is measured against: cp, and rsync through an rsync daemon
// on 127.0.0.1 (so that, like drplane, the bytes cross a socket).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { loadAverage, runCommand, type Sample } from './measure';
import { cpuTimes, reapedChildrenCpu, roundCpu, waitForNoChildren } from './process-usage';

/** How long the rsync daemon may take to accept connections. */
const rsyncDaemonStartMs = 10_000;
/** The rsync module the benchmark writes into. */
const rsyncModule = 'bench';

export function rsyncVersion(): string | undefined {
  const result = spawnSync('rsync', ['--version'], { encoding: 'utf8' });
  if (result.error || result.status !== 0) return undefined;
  return result.stdout.split('\n')[0].trim();
}

/**
 * cp alone (into page cache), and the fsync of the copy timed on its own, so both "cp" and "cp + sync" can be reported.
 * CPU seconds are those of the cp and sync processes (children of the benchmark, reaped when they exit).
 */
export async function timeCp(source: string, target: string): Promise<{ cp: Sample; cpSync: Sample }> {
  fs.rmSync(target, { force: true });
  const loadAverageAtStart = loadAverage();
  const cpCpu = reapedChildrenCpu();
  const copied = await runCommand('cp', [source, target]);
  const cpCpuSeconds = cpCpu();
  // `sync FILE` fsyncs that file only, not the other engineers' writes on this machine.
  const syncCpu = reapedChildrenCpu();
  const synced = await runCommand('sync', [target]);
  const syncCpuSeconds = syncCpu();
  return {
    cp: { seconds: copied.seconds, loadAverageAtStart, cpuSeconds: cpCpuSeconds, details: { command: `cp ${source} ${target}` } },
    cpSync: {
      seconds: copied.seconds + synced.seconds,
      loadAverageAtStart,
      cpuSeconds: roundCpu(cpCpuSeconds + syncCpuSeconds),
      details: { command: `cp ${source} ${target} && sync ${target}`, syncSeconds: synced.seconds, syncCpuSeconds },
    },
  };
}

/** The figures of `rsync --stats` (client side) that the report uses. */
export interface RsyncStats {
  totalBytesSent: number;
  totalBytesReceived: number;
  literalDataBytes?: number;
  matchedDataBytes?: number;
  totalFileSizeBytes?: number;
}

/** Parses `rsync --stats` output ("Total bytes sent: 1,234"); throws when the totals are missing. */
export function parseRsyncStats(output: string): RsyncStats {
  const figure = (label: string): number | undefined => {
    const match = new RegExp(`^${label}:\\s*([\\d,.]+)`, 'm').exec(output);
    return match ? Number(match[1].replace(/[,.]/g, '')) : undefined;
  };
  const totalBytesSent = figure('Total bytes sent');
  const totalBytesReceived = figure('Total bytes received');
  if (totalBytesSent === undefined || totalBytesReceived === undefined) {
    throw new Error(`rsync --stats output has no "Total bytes sent/received" lines:\n${output}`);
  }
  return {
    totalBytesSent,
    totalBytesReceived,
    literalDataBytes: figure('Literal data'),
    matchedDataBytes: figure('Matched data'),
    totalFileSizeBytes: figure('Total file size'),
  };
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => (socket.destroy(), resolve(true)));
    socket.once('error', () => resolve(false));
  });
}

/** An rsync daemon on 127.0.0.1 with one writable module, `bench`, pointing at `targetDir`. */
export class RsyncDaemon {
  private constructor(
    private readonly child: ChildProcess,
    readonly port: number,
    readonly targetDir: string,
    readonly logFile: string,
  ) {}

  static async start(stateDir: string, targetDir: string): Promise<RsyncDaemon> {
    fs.mkdirSync(stateDir, { recursive: true });
    fs.mkdirSync(targetDir, { recursive: true });
    const port = await freePort();
    const configFile = path.join(stateDir, 'rsyncd.conf');
    const logFile = path.join(stateDir, 'rsyncd.log');
    const runAsRoot = process.getuid?.() === 0;
    fs.writeFileSync(
      configFile,
      [
        `pid file = ${path.join(stateDir, 'rsyncd.pid')}`,
        `log file = ${logFile}`,
        'use chroot = no',
        // As root, rsyncd would otherwise drop to "nobody", who cannot write the target directory.
        ...(runAsRoot ? ['uid = root', 'gid = root'] : []),
        `[${rsyncModule}]`,
        `  path = ${targetDir}`,
        '  read only = no',
        '',
      ].join('\n'),
    );
    const child = spawn('rsync', ['--daemon', '--no-detach', `--port=${port}`, '--address=127.0.0.1', `--config=${configFile}`], { stdio: ['ignore', 'ignore', 'pipe'] });
    const stderr: string[] = [];
    child.stderr?.on('data', (chunk: Buffer) => stderr.push(chunk.toString()));
    process.once('exit', () => child.kill('SIGKILL'));
    const deadline = Date.now() + rsyncDaemonStartMs;
    while (!(await canConnect(port))) {
      if (child.exitCode !== null || Date.now() > deadline) {
        child.kill('SIGKILL');
        const log = fs.existsSync(logFile) ? fs.readFileSync(logFile, 'utf8') : '';
        throw new Error(`rsync daemon did not start on 127.0.0.1:${port}: ${stderr.join('').trim()} ${log.trim()}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return new RsyncDaemon(child, port, targetDir, logFile);
  }

  url(name: string): string {
    return `rsync://127.0.0.1:${this.port}/${rsyncModule}/${name}`;
  }

  targetPath(name: string): string {
    return path.join(this.targetDir, name);
  }

  /**
   * CPU seconds the daemon has used, with those of the per-connection processes
   * it forked and reaped (each transfer runs in one).
   */
  cpuSeconds(): number {
    const times = cpuTimes(this.child.pid!);
    return times.ownSeconds + times.reapedChildrenSeconds;
  }

  /**
   * Waits until the daemon has reaped the processes of finished connections, so
   * that their CPU is in cpuSeconds(); throws when it does not within 5 s.
   */
  async settle(): Promise<void> {
    if (!(await waitForNoChildren(this.child.pid!))) throw new Error(`the rsync daemon (pid ${this.child.pid}) still has children 5 s after the transfer`);
  }

  /**
   * Copies `source` to the module as `name`. `--ignore-times` makes rsync transfer
   * even when size and mtime match, so the whole file is always compared.
   *
   * Unless `options.accountCpu` is false, the sample's cpuSeconds are the rsync
   * client's (with the processes it forks) plus the daemon's. The daemon's
   * connection process is reaped by the daemon a little after the client exits;
   * the daemon's figure is read after `options.verify` (which checks the copy and
   * takes seconds) and once the daemon has no child left.
   */
  async transfer(source: string, name: string, flags: string[], options: { verify?: () => void | Promise<void>; accountCpu?: boolean } = {}): Promise<Sample> {
    const args = ['--stats', '--ignore-times', ...flags, source, this.url(name)];
    const accountCpu = options.accountCpu ?? true;
    const loadAverageAtStart = loadAverage();
    const daemonCpuAtStart = accountCpu ? this.cpuSeconds() : 0;
    const clientCpu = reapedChildrenCpu();
    const result = await runCommand('rsync', args);
    const clientCpuSeconds = clientCpu();
    const stats = parseRsyncStats(result.stdout);
    await options.verify?.();
    const sample: Sample = {
      seconds: result.seconds,
      wireBytes: stats.totalBytesSent + stats.totalBytesReceived,
      loadAverageAtStart,
      details: { command: `rsync ${args.join(' ')}`, ...stats },
    };
    if (accountCpu) {
      await this.settle();
      const daemonCpuSeconds = roundCpu(this.cpuSeconds() - daemonCpuAtStart);
      sample.cpuSeconds = roundCpu(clientCpuSeconds + daemonCpuSeconds);
      sample.details = { ...sample.details, clientCpuSeconds, daemonCpuSeconds };
    }
    return sample;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  }
}

/** Flags of each rsync peer. */
export const rsyncFlags = {
  wholeFile: ['--whole-file'],
  /** The best rsync does for a sparse image: holes stay holes on the target. */
  wholeFileSparse: ['--whole-file', '--sparse'],
  /** Delta transfer with the default block size, writing into the existing target. */
  delta: ['--inplace', '--no-whole-file'],
} as const;
