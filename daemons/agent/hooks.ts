// Hooks: shell commands from the agent's own configuration (never from the
// network: a peer that could send commands could run anything on the protected
// machine). Each runs under /bin/sh -c with a timeout, in its own process
// group so a timeout kills everything it started.
import { spawn } from 'node:child_process';
import { hookErrorOutputBytesMax, hookOutputBytesMax } from '../../shared/limits';
import type { Logger } from '../../shared/log';

export const hookNames = ['freeze', 'thaw', 'snapshotCreate', 'snapshotRelease', 'shutdown'] as const;
export type HookName = (typeof hookNames)[number];
export type HookCommands = Partial<Record<HookName, string>>;

export interface HookEnvironment {
  /** The disks the hook acts on: DRPLANE_DISKS, space-separated. */
  disks: readonly string[];
  /** DRPLANE_TAG: the app-consistent point's tag (empty for snapshots). */
  tag?: string;
  /** DRPLANE_SNAPSHOT: for snapshotRelease, the path snapshotCreate printed. */
  snapshot?: string;
  /** DRPLANE_MACHINE: for shutdown, the machine the configuration server names. */
  machine?: string;
}

export interface HookResult {
  name: HookName;
  ok: boolean;
  exitCode: number | null;
  signal: NodeJS.Signals | null;
  timedOut: boolean;
  /** Set when the shell could not be started at all. */
  spawnError?: string;
  stdout: string;
  stderr: string;
  durationMs: number;
}

/** How a hook failed, for an operator: "exit 3", "timed out after 30000 ms". */
export function hookFailure(result: HookResult, timeoutMs: number): string {
  if (result.spawnError) return `could not start: ${result.spawnError}`;
  if (result.timedOut) return `timed out after ${timeoutMs} ms`;
  if (result.signal) return `killed by ${result.signal}`;
  return `exit ${result.exitCode}`;
}

/** stdout and stderr together, trimmed, for hook_output. */
export function hookOutput(result: HookResult): string {
  return [result.stdout.trim(), result.stderr.trim()].filter(Boolean).join('\n');
}

const cutMark = '[output cut] ';

/** The end of a hook's output, at most bytesMax characters with the mark of the cut: where a failing command usually says why. */
export function outputTail(output: string, bytesMax: number): string {
  return output.length > bytesMax ? `${cutMark}${output.slice(output.length - (bytesMax - cutMark.length))}` : output;
}

/**
 * "freeze hook failed (exit 3): <output>", short enough for a gRPC status
 * message: the head of the output, or its tail (keep: 'tail').
 */
export function hookError(result: HookResult, timeoutMs: number, keep: 'head' | 'tail' = 'head'): string {
  const output = hookOutput(result);
  let quoted = output;
  if (keep === 'tail') quoted = outputTail(output, hookErrorOutputBytesMax);
  else if (output.length > hookErrorOutputBytesMax) quoted = `${output.slice(0, hookErrorOutputBytesMax)} [output cut]`;
  return `${result.name} hook failed (${hookFailure(result, timeoutMs)}): ${quoted}`;
}

/** Keeps the first bytesMax bytes of a stream and counts the rest. */
class CappedOutput {
  private readonly chunks: Buffer[] = [];
  private kept = 0;
  private cut = 0;
  constructor(private readonly bytesMax: number) {}
  add(chunk: Buffer): void {
    const kept = chunk.subarray(0, Math.max(0, this.bytesMax - this.kept));
    if (kept.length) this.chunks.push(kept);
    this.kept += kept.length;
    this.cut += chunk.length - kept.length;
  }
  text(): string {
    const text = Buffer.concat(this.chunks).toString('utf8');
    return this.cut ? `${text}\n[${this.cut} more bytes of output cut]` : text;
  }
}

export class Hooks {
  constructor(
    private readonly commands: HookCommands,
    readonly timeoutMs: number,
    private readonly log: Logger,
  ) {}

  /** The configured hooks' names (the commands stay local). */
  get names(): HookName[] {
    return hookNames.filter((name) => this.has(name));
  }

  has(name: HookName): boolean {
    return Boolean(this.commands[name]);
  }

  run(name: HookName, environment: HookEnvironment): Promise<HookResult> {
    const command = this.commands[name];
    if (!command) throw new Error(`hook ${name} is not configured`);
    const started = Date.now();
    const stdout = new CappedOutput(hookOutputBytesMax);
    const stderr = new CappedOutput(hookOutputBytesMax);
    return new Promise<HookResult>((resolve) => {
      let timedOut = false;
      let settled = false;
      const child = spawn('/bin/sh', ['-c', command], {
        env: { ...process.env, DRPLANE_HOOK: name, DRPLANE_DISKS: environment.disks.join(' '), DRPLANE_TAG: environment.tag ?? '', DRPLANE_SNAPSHOT: environment.snapshot ?? '', DRPLANE_MACHINE: environment.machine ?? '' },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
      const finish = (exitCode: number | null, signal: NodeJS.Signals | null, spawnError?: string) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        clearTimeout(abandon);
        const result: HookResult = { name, ok: !timedOut && !spawnError && exitCode === 0, exitCode, signal, timedOut, spawnError, stdout: stdout.text(), stderr: stderr.text(), durationMs: Date.now() - started };
        const fields = { hook: name, exitCode, signal, timedOut, durationMs: result.durationMs, disks: environment.disks, tag: environment.tag, machine: environment.machine };
        if (result.ok) this.log.info(fields, 'hook ran');
        else this.log.warn({ ...fields, spawnError, output: hookOutput(result).slice(0, 1024) }, 'hook failed');
        resolve(result);
      };
      let abandon: NodeJS.Timeout | undefined;
      const timer = setTimeout(() => {
        timedOut = true;
        killGroup(child.pid);
        // A process that left the group may keep the pipes open: do not wait for it forever.
        abandon = setTimeout(() => {
          child.stdout.destroy();
          child.stderr.destroy();
          finish(null, 'SIGKILL');
        }, 1_000);
      }, this.timeoutMs);
      child.stdout.on('data', (chunk: Buffer) => stdout.add(chunk));
      child.stderr.on('data', (chunk: Buffer) => stderr.add(chunk));
      child.on('error', (error) => finish(null, null, error.message));
      // 'close' comes after the exit and the end of the output.
      child.on('close', (code, signal) => finish(code, signal));
    });
  }
}

function killGroup(pid: number | undefined): void {
  if (!pid) return;
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    // Already gone.
  }
}
