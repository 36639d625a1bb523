// The peers drplane is measured against: cp, and rsync through an rsync daemon
// on 127.0.0.1 (so that, like drplane, the bytes cross a socket).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { loadAverage, runCommand, type Sample } from './measure';

/** How long the rsync daemon may take to accept connections. */
const rsyncDaemonStartMs = 10_000;
/** The rsync module the benchmark writes into. */
const rsyncModule = 'bench';

export function rsyncVersion(): string | undefined {
  const result = spawnSync('rsync', ['--version'], { encoding: 'utf8' });
  if (result.error || result.status !== 0) return undefined;
  return result.stdout.split('\n')[0].trim();
}

/** cp alone (into page cache), and the fsync of the copy timed on its own, so both "cp" and "cp + sync" can be reported. */
export async function timeCp(source: string, target: string): Promise<{ cp: Sample; cpSync: Sample }> {
  fs.rmSync(target, { force: true });
  const loadAverageAtStart = loadAverage();
  const copied = await runCommand('cp', [source, target]);
  // `sync FILE` fsyncs that file only, not the other engineers' writes on this machine.
  const synced = await runCommand('sync', [target]);
  return {
    cp: { seconds: copied.seconds, loadAverageAtStart, details: { command: `cp ${source} ${target}` } },
    cpSync: { seconds: copied.seconds + synced.seconds, loadAverageAtStart, details: { command: `cp ${source} ${target} && sync ${target}`, syncSeconds: synced.seconds } },
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
   * Copies `source` to the module as `name`. `--ignore-times` makes rsync transfer
   * even when size and mtime match, so the whole file is always compared.
   */
  async transfer(source: string, name: string, flags: string[]): Promise<Sample> {
    const args = ['--stats', '--ignore-times', ...flags, source, this.url(name)];
    const loadAverageAtStart = loadAverage();
    const result = await runCommand('rsync', args);
    const stats = parseRsyncStats(result.stdout);
    return {
      seconds: result.seconds,
      wireBytes: stats.totalBytesSent + stats.totalBytesReceived,
      loadAverageAtStart,
      details: { command: `rsync ${args.join(' ')}`, ...stats },
    };
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
