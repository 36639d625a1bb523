// The daemons the all-in-one runs, as child processes: their logs forwarded
// (JSON as is, or one readable line per event on a terminal), "listening"
// awaited, and their exits watched.
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { daemonNodeFlags } from '../../shared/process';

/** How long a daemon may take to start listening. */
export const childStartTimeoutMs = 30_000;

export interface ChildSpec {
  /** Shown before each of its log lines, e.g. "ps1". */
  label: string;
  /** The daemon's folder under dist/daemons. */
  daemon: string;
  args: string[];
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export class Child {
  readonly process: ChildProcess;
  readonly exited: Promise<Exit>;
  address = '';
  private listening: ((address: string) => void) | undefined;

  constructor(
    readonly spec: ChildSpec,
    private readonly pretty: boolean,
  ) {
    const script = path.resolve(__dirname, '..', spec.daemon, 'main.js');
    // A process group of its own: a Ctrl-C reaches only us, and we stop the children in order.
    this.process = spawn(process.execPath, [...daemonNodeFlags, script, ...spec.args], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    this.exited = new Promise((resolve) => this.process.once('exit', (code, signal) => resolve({ code, signal })));
    readline.createInterface({ input: this.process.stdout! }).on('line', (line) => this.onLog(line));
    readline.createInterface({ input: this.process.stderr! }).on('line', (line) => process.stderr.write(`${spec.label.padEnd(labelWidth)} ! ${line}\n`));
  }

  /** Resolves with the bound address once the daemon logs "listening"; rejects if it exits first or takes too long. */
  waitListening(timeoutMs = childStartTimeoutMs): Promise<string> {
    if (this.address) return Promise.resolve(this.address);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.spec.label} did not start listening within ${timeoutMs} ms`)), timeoutMs);
      this.listening = (address) => {
        clearTimeout(timer);
        resolve(address);
      };
      void this.exited.then((exit) => {
        clearTimeout(timer);
        reject(new Error(`${this.spec.label} exited during start-up (${describeExit(exit)}); its error is above`));
      });
    });
  }

  signal(signal: NodeJS.Signals): void {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill(signal);
  }

  private onLog(line: string): void {
    let event: Record<string, unknown> | undefined;
    try {
      event = JSON.parse(line) as Record<string, unknown>;
    } catch {
      event = undefined;
    }
    if (event?.msg === 'listening' && typeof event.address === 'string' && !this.address) {
      this.address = event.address;
      this.listening?.(event.address);
    }
    if (!this.pretty) process.stdout.write(event ? `${line}\n` : `${JSON.stringify({ daemon: this.spec.label, msg: line })}\n`);
    else process.stdout.write(`${this.spec.label.padEnd(labelWidth)} ${event ? formatEvent(event) : line}\n`);
  }
}

const labelWidth = 21;
const levelNames: Record<number, string> = { 10: 'trace', 20: 'debug', 30: 'info', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const hiddenKeys = new Set(['level', 'time', 'daemon', 'pid', 'msg', 'hostname']);

/** "20:14:03 info  listening address=127.0.0.1:7100 ..." */
function formatEvent(event: Record<string, unknown>): string {
  const time = typeof event.time === 'string' ? event.time.slice(11, 19) : '';
  const level = (levelNames[Number(event.level)] ?? String(event.level ?? '')).padEnd(5);
  const rest = Object.entries(event)
    .filter(([key]) => !hiddenKeys.has(key))
    .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`)
    .join(' ');
  return `${time} ${level} ${String(event.msg ?? '')}${rest ? ` ${rest}` : ''}`;
}

export function describeExit(exit: Exit): string {
  return exit.signal ? `signal ${exit.signal}` : `exit code ${exit.code}`;
}
