// StartMachine: the master target's start hook, the shell command that stands
// where a hypervisor would start the failed-over machine (docs/failover.md,
// start-target). The command comes only from the master target's own
// configuration, never from the network: a peer that could send commands could
// run anything on this host. It runs under /bin/sh -c with a timeout, in its
// own process group so a timeout (or the daemon stopping) kills everything it
// started. Calls for one machine run one after another; a hook should be
// idempotent (a job step that is resumed runs it again).
import { spawn, type ChildProcess } from 'node:child_process';
import { Mutex } from 'async-mutex';
import { ErrorCode, failedPrecondition, invalidArgument, limitExceeded } from '../../shared/errors';
import { disksPerMachineMax, hookErrorOutputBytesMax, nameLengthMax, startHookOutputBytesMax, startMachineCallsMax } from '../../shared/limits';
import type { Logger } from '../../shared/log';
import type { Datastores } from './datastore';

const machinePattern = /^[A-Za-z0-9._-]+$/;
/** "<disk_id>@<sequence>", the form of every recovery point id. */
const pointIdPattern = /^[A-Za-z0-9._-]+@[0-9]+$/;
const pointIdLengthMax = nameLengthMax + 1 + String(Number.MAX_SAFE_INTEGER).length;

export interface StartMachineRequest {
  machine: string;
  diskPaths: string[];
  epoch: number;
  recoveryPointIds: string[];
}

/** Keeps the last bytesMax bytes of everything added (stdout and stderr interleaved as they arrive). */
class OutputTail {
  private chunks: Buffer[] = [];
  private kept = 0;
  private cut = 0;
  constructor(private readonly bytesMax: number) {}
  add(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.kept += chunk.length;
    while (this.kept - this.chunks[0].length >= this.bytesMax) {
      this.kept -= this.chunks[0].length;
      this.cut += this.chunks.shift()!.length;
    }
  }
  /** The tail in at most bytesMax bytes, a note of what was cut before it included. */
  text(bytesMax = this.bytesMax): string {
    const all = Buffer.concat(this.chunks);
    if (this.cut === 0 && all.length <= bytesMax) return all.toString('utf8').trim();
    const noteBytesMax = 48;
    const tail = all.subarray(Math.max(0, all.length - (bytesMax - noteBytesMax)));
    return `[${this.cut + all.length - tail.length} earlier bytes of output cut]\n${tail.toString('utf8').trim()}`;
  }
}

export class StartHook {
  private readonly machines = new Map<string, Mutex>();
  private readonly children = new Set<ChildProcess>();
  private calls = 0;

  constructor(
    /** The command, or undefined: no hook (the operator starts machines). */
    private readonly command: string | undefined,
    readonly timeoutMs: number,
    private readonly datastores: Datastores,
    private readonly log: Logger,
  ) {}

  get configured(): boolean {
    return Boolean(this.command);
  }

  /** Checks the request, then runs the hook (if one is configured) and answers its output tail. */
  async start(request: StartMachineRequest): Promise<{ hookRan: boolean; output: string }> {
    const { machine, diskPaths, epoch, recoveryPointIds } = request;
    if (!machine) throw invalidArgument('machine is empty');
    if (machine.length > nameLengthMax || !machinePattern.test(machine)) throw invalidArgument(`machine ${JSON.stringify(machine.slice(0, nameLengthMax))} must be 1-${nameLengthMax} letters, digits, dot, dash or underscore`);
    if (diskPaths.length > disksPerMachineMax) throw invalidArgument(`${diskPaths.length} disk paths, at most ${disksPerMachineMax} (the disks of one machine)`);
    for (const diskPath of diskPaths) {
      // DRPLANE_DISKS is space-separated, so a path with white space would split.
      if (/\s/.test(diskPath)) throw invalidArgument(`disk path ${JSON.stringify(diskPath.slice(0, 256))} contains white space: DRPLANE_DISKS separates paths by spaces`);
      this.datastores.checkUnderRoots(diskPath, ErrorCode.InvalidArgument);
    }
    if (!Number.isSafeInteger(epoch) || epoch < 0) throw invalidArgument(`epoch ${epoch} is not an epoch`);
    if (recoveryPointIds.length > disksPerMachineMax) throw invalidArgument(`${recoveryPointIds.length} recovery point ids, at most ${disksPerMachineMax} (one per disk)`);
    for (const pointId of recoveryPointIds) {
      if (pointId.length > pointIdLengthMax || !pointIdPattern.test(pointId)) throw invalidArgument(`recovery point id ${JSON.stringify(pointId.slice(0, pointIdLengthMax))} is not of the form <disk_id>@<sequence>`);
    }
    if (!this.command) return { hookRan: false, output: '' };
    if (this.calls >= startMachineCallsMax) throw limitExceeded(`${this.calls} StartMachine calls are running or waiting, the most at once (${startMachineCallsMax}): try again when they have finished`);
    this.calls++;
    let mutex = this.machines.get(machine);
    if (!mutex) this.machines.set(machine, (mutex = new Mutex()));
    try {
      return await mutex.runExclusive(() => this.run(this.command!, request));
    } finally {
      this.calls--;
      if (!mutex.isLocked()) this.machines.delete(machine);
    }
  }

  private run(command: string, request: StartMachineRequest): Promise<{ hookRan: boolean; output: string }> {
    const started = Date.now();
    const output = new OutputTail(startHookOutputBytesMax);
    return new Promise((resolve, reject) => {
      let timedOut = false;
      let settled = false;
      const child = spawn('/bin/sh', ['-c', command], {
        env: {
          ...process.env,
          DRPLANE_HOOK: 'start',
          DRPLANE_MACHINE: request.machine,
          DRPLANE_DISKS: request.diskPaths.join(' '),
          DRPLANE_EPOCH: String(request.epoch),
          DRPLANE_POINTS: request.recoveryPointIds.join(' '),
        },
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
      this.children.add(child);
      let abandon: NodeJS.Timeout | undefined;
      const finish = (exitCode: number | null, signal: NodeJS.Signals | null, spawnError?: string) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        clearTimeout(abandon);
        this.children.delete(child);
        const durationMs = Date.now() - started;
        const fields = { hook: 'start', machine: request.machine, epoch: request.epoch, disks: request.diskPaths, exitCode, signal, timedOut, durationMs };
        if (!timedOut && !spawnError && exitCode === 0) {
          this.log.info(fields, 'start hook ran');
          resolve({ hookRan: true, output: output.text() });
          return;
        }
        const how = spawnError ? `could not start: ${spawnError}` : timedOut ? `timed out after ${this.timeoutMs} ms` : signal ? `killed by ${signal}` : `exit ${exitCode}`;
        this.log.warn({ ...fields, spawnError, output: output.text(1024) }, 'start hook failed');
        reject(failedPrecondition(`start hook for machine ${request.machine} failed (${how}): ${output.text(hookErrorOutputBytesMax)}`));
      };
      const timer = setTimeout(() => {
        timedOut = true;
        killGroup(child.pid);
        // A process that left the group may keep the pipes open: do not wait for it forever.
        abandon = setTimeout(() => {
          child.stdout?.destroy();
          child.stderr?.destroy();
          finish(null, 'SIGKILL');
        }, 1_000);
      }, this.timeoutMs);
      child.stdout?.on('data', (chunk: Buffer) => output.add(chunk));
      child.stderr?.on('data', (chunk: Buffer) => output.add(chunk));
      child.on('error', (error) => finish(null, null, error.message));
      // 'close' comes after the exit and the end of the output.
      child.on('close', (code, signal) => finish(code, signal));
    });
  }

  /** The daemon stops: hooks still running are killed with their process groups. */
  stop(): void {
    for (const child of this.children) killGroup(child.pid);
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
