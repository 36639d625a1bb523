// The agent's NBD server in tests: real NBD clients (qemu-io, qemu-img,
// nbdinfo, nbdcopy, nbdfuse), installed by scripts/install-test-deps.sh where
// missing, and a collector of a disk's change records that replays them onto a
// copy of the disk, to prove the capture holds every write in order.
import * as grpc from '@grpc/grpc-js';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import type { ChangeBatch__Output } from '../../generated/drplane/v1/ChangeBatch';
import type { StreamChangesRequest } from '../../generated/drplane/v1/StreamChangesRequest';
import { agentClient } from './clients';
import { run, type CommandResult } from './netns';
import { repoRoot, startDaemon, type RunningDaemon } from './daemons';

export { run };

/**
 * An agent alone, serving `disks` over NBD on a Unix socket in `dir`
 * (nbd.sock), with its gRPC client; both are closed at the end of `t`.
 */
export async function startNbdAgent(t: { teardown(fn: () => unknown): void }, dir: string, disks: string[], args: string[] = []): Promise<{ agent: RunningDaemon; client: ReturnType<typeof agentClient>; socket: string }> {
  const socket = path.join(dir, 'nbd.sock');
  const agent = await startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'), ...disks.flatMap((disk) => ['--disk', disk]), '--nbd-listen', `unix:${socket}`, ...args] });
  const client = agentClient(agent.address);
  t.teardown(async () => {
    client.close();
    await agent.stop();
  });
  return { agent, client, socket };
}

/** The NBD clients the tests drive. */
export const nbdClients = ['qemu-io', 'qemu-img', 'nbdinfo', 'nbdcopy'] as const;

const absent = (commands: readonly string[]) => commands.filter((command) => spawnSync('sh', ['-c', `command -v ${command}`]).status !== 0);

/**
 * Installs the NBD clients where missing (scripts/install-test-deps.sh, as
 * root); answers why they cannot be had, or '' when they are there. Synchronous,
 * so a test file can pass it to `{ skip }` when it declares its tests.
 */
export function whyNoNbdClients(commands: readonly string[] = nbdClients): string {
  let missing = absent(commands);
  if (missing.length === 0) return '';
  if (process.getuid?.() !== 0) return `${missing.join(', ')} not installed, and installing them needs root (scripts/install-test-deps.sh)`;
  const script = path.join(repoRoot, 'scripts', 'install-test-deps.sh');
  const result = spawnSync('bash', [script], { encoding: 'utf8', timeout: 10 * 60_000 });
  missing = absent(commands);
  return missing.length ? `${missing.join(', ')} still missing after ${script} (exit ${result.status}): ${(result.stderr ?? '').slice(-500)}` : '';
}

/** The NBD URI of an export on a Unix socket (libnbd and qemu both take it). */
export function nbdUri(socketPath: string, exportName = ''): string {
  return `nbd+unix:///${encodeURIComponent(exportName)}?socket=${socketPath}`;
}

/** The socket address the agent logged at start-up. */
export function nbdAddressOf(logs: Record<string, unknown>[]): string {
  const line = logs.find((entry) => entry.msg === 'NBD server listening');
  if (!line) throw new Error('the agent logged no "NBD server listening" line');
  return String(line.nbdAddress);
}

/** qemu-io on an export with these commands (`-c` each); throws with its output when it fails or reports a failure. */
export async function qemuIo(uri: string, commands: string[]): Promise<string> {
  const result = await run('qemu-io', ['-f', 'raw', uri, ...commands.flatMap((command) => ['-c', command])], { allowFailure: true, timeoutMs: 120_000 });
  const output = result.stdout + result.stderr;
  // qemu-io exits 0 even when a command failed: its output says so.
  if (result.code !== 0 || /failed|Pattern verification|error/i.test(output)) throw new Error(`qemu-io ${commands.join(' ; ')} failed (exit ${result.code}):\n${output}`);
  return output;
}

export function mustSucceed(result: CommandResult, what: string): CommandResult {
  if (result.code !== 0) throw new Error(`${what} exited ${result.code}: ${result.stderr || result.stdout}`);
  return result;
}

/**
 * Collects a disk's change records from the agent (StreamChanges from
 * sequence 1 of its current capture), acknowledging them as they come, and
 * replays them, in order, onto a copy of the disk taken when the capture started.
 */
export class ChangeReplay {
  records = 0;
  /** Zero-run records (no data) among them, and the bytes they cover. */
  zeroRecords = 0;
  zeroBytes = 0;
  captureIds = new Set<string>();
  private readonly call: grpc.ClientDuplexStream<StreamChangesRequest, ChangeBatch__Output>;
  private readonly fd: number;
  private nextSequence = 1;
  private error: Error | undefined;

  constructor(
    client: ReturnType<typeof agentClient>,
    diskPath: string,
    /** A copy of the disk as it was when the capture started: the records are written onto it. */
    readonly replica: string,
  ) {
    this.fd = fs.openSync(replica, 'r+');
    this.call = client.streamChanges();
    this.call.on('data', (batch: ChangeBatch__Output) => {
      this.captureIds.add(batch.captureId);
      for (const record of batch.records) {
        if (Number(record.sequence) !== this.nextSequence) this.error ??= new Error(`record ${record.sequence} after ${this.nextSequence - 1}: the records are not consecutive`);
        this.nextSequence = Number(record.sequence) + 1;
        if (record.data.length) fs.writeSync(this.fd, record.data, 0, record.data.length, Number(record.offset));
        const zeroLength = Number(record.zeroLength);
        if (zeroLength) {
          fs.writeSync(this.fd, Buffer.alloc(zeroLength), 0, zeroLength, Number(record.offset));
          this.zeroRecords++;
          this.zeroBytes += zeroLength;
        }
        this.records++;
      }
      if (batch.records.length) this.call.write({ durableSequence: this.nextSequence - 1, captureId: batch.captureId });
    });
    this.call.on('error', (error: grpc.ServiceError) => {
      if (error.code !== grpc.status.CANCELLED) this.error ??= error;
    });
    this.call.write({ path: diskPath, fromSequence: 1 });
  }

  /** The sequence the next record will have (every record before it is replayed). */
  get replayedThrough(): number {
    return this.nextSequence - 1;
  }

  check(): void {
    if (this.error) throw this.error;
  }

  close(): void {
    this.call.cancel();
    fs.closeSync(this.fd);
  }
}
