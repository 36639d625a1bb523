// drplane's side: the real agent, process server and master target, each a
// process on 127.0.0.1, driven over gRPC the way the configuration server would.
import fs from 'node:fs';
import path from 'node:path';
import { startDaemon, type RunningDaemon } from '../test/helpers/daemons';
import { createClient, unary } from '../shared/grpc';
import { v1, type MasterTargetClient, type ProcessServerClient } from '../shared/proto';
import type { SyncStatus__Output } from '../generated/drplane/v1/SyncStatus';
import { sha256File } from './images';
import { daemonNames, loadAverage, nowSeconds, type PerDaemon, type Sample } from './measure';
import { cpuTimes, memoryOf, resetPeakRss, roundCpu } from './process-usage';

/** How often the benchmark asks the process server how a sync is going. */
const pollIntervalMs = 50;
/** A sync slower than this is treated as hung (2 GiB at 10 MB/s is 215 s). */
const syncSlowestBytesPerSecond = 10e6;
const syncTimeoutMsMin = 120_000;
/** Every sync of the benchmark runs in the replica's first epoch. */
const epoch = 1;

export interface DrplaneSyncResult extends Sample {
  status: SyncStatus__Output;
  cpuSeconds: number;
  cpuSecondsByDaemon: PerDaemon;
  peakRssBytes: PerDaemon;
}

export interface DrplaneStartOptions {
  /**
   * Profile every daemon: node's --cpu-prof into <profileDir>/<daemon>/. Node
   * writes the profiles (one per thread, the hashing workers included) when the
   * daemon exits, i.e. at stop().
   */
  profileDir?: string;
  /** More arguments for the agent (e.g. --nbd-listen unix:PATH for the NBD benchmark). */
  agentArgs?: string[];
}

export class DrplaneCluster {
  private syncCounter = 0;
  /** The daemons' CPU seconds when the last sync() started. */
  private lastSyncCpuAtStart?: PerDaemon;
  /** Why the peak RSS could not be reset (then VmHWM is each daemon's lifetime peak); undefined when it could. */
  peakRssResetError?: string;

  private constructor(
    readonly agent: RunningDaemon,
    readonly processServer: RunningDaemon,
    readonly masterTarget: RunningDaemon,
    readonly datastoreRoot: string,
    readonly processServerClient: ProcessServerClient,
    private readonly masterTargetClient: MasterTargetClient,
  ) {}

  /** Starts the three daemons with their own data directories under `dir`; the agent may read `diskPaths` only. */
  static async start(dir: string, diskPaths: string[], options: DrplaneStartOptions = {}): Promise<DrplaneCluster> {
    const datastoreRoot = path.join(dir, 'replicas');
    fs.mkdirSync(datastoreRoot, { recursive: true });
    // info unless DRPLANE_LOG_LEVEL says otherwise: a debug line per batch would be part of the measurement.
    const env = { DRPLANE_LOG_LEVEL: process.env.DRPLANE_LOG_LEVEL ?? 'info' };
    const common = (name: string) => ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, name), '--name', `bench-${name}`];
    const nodeArgs = (name: string) => (options.profileDir ? ['--cpu-prof', '--cpu-prof-dir', path.join(options.profileDir, name)] : []);
    const started: RunningDaemon[] = [];
    try {
      const agent = await startDaemon('agent', { env, nodeArgs: nodeArgs('agent'), args: [...common('agent'), ...diskPaths.flatMap((disk) => ['--disk', disk]), ...(options.agentArgs ?? [])] });
      started.push(agent);
      const processServer = await startDaemon('process-server', { env, nodeArgs: nodeArgs('process-server'), args: common('process-server') });
      started.push(processServer);
      const masterTarget = await startDaemon('master-target', { env, nodeArgs: nodeArgs('master-target'), args: [...common('master-target'), '--datastore-root', datastoreRoot] });
      started.push(masterTarget);
      return new DrplaneCluster(
        agent,
        processServer,
        masterTarget,
        datastoreRoot,
        createClient(v1.ProcessServer, processServer.address),
        createClient(v1.MasterTarget, masterTarget.address),
      );
    } catch (error) {
      await Promise.all(started.map((daemon) => daemon.stop()));
      throw error;
    }
  }

  /** The three daemons by name. */
  get daemons(): Record<(typeof daemonNames)[number], RunningDaemon> {
    return { agent: this.agent, 'process-server': this.processServer, 'master-target': this.masterTarget };
  }

  /** CPU seconds (utime + stime, every thread) each daemon has used since it started. */
  cpuSecondsByDaemon(): PerDaemon {
    const daemons = this.daemons;
    return Object.fromEntries(daemonNames.map((name) => [name, cpuTimes(daemons[name].process.pid!).ownSeconds])) as PerDaemon;
  }

  /** Resets each daemon's peak RSS to its current RSS; keeps the reason in peakRssResetError when it cannot. */
  resetPeakRss(): void {
    for (const daemon of Object.values(this.daemons)) {
      const error = resetPeakRss(daemon.process.pid!);
      if (error) this.peakRssResetError ??= `cannot reset the peak RSS (${error}); VmHWM is each daemon's peak since it started`;
    }
  }

  /** Each daemon's peak RSS (VmHWM) since the last resetPeakRss(), bytes. */
  peakRssBytes(): PerDaemon {
    const daemons = this.daemons;
    return Object.fromEntries(daemonNames.map((name) => [name, memoryOf(daemons[name].process.pid!).peakBytes])) as PerDaemon;
  }

  /** The daemons' CPU seconds from the start of the last sync() until now (e.g. after its replica was verified). */
  cpuSecondsSinceLastSyncStart(): number | undefined {
    if (!this.lastSyncCpuAtStart) return undefined;
    return cpuDelta(this.lastSyncCpuAtStart, this.cpuSecondsByDaemon()).total;
  }

  /** Creates an empty replica for `diskId` under the datastore root; returns its path. */
  async createReplica(diskId: string, diskBytes: number): Promise<string> {
    const replicaPath = path.join(this.datastoreRoot, `${diskId}.img`);
    const replica = await unary(this.masterTargetClient, this.masterTargetClient.createReplica, { diskId, path: replicaPath, diskBytes, epoch });
    return path.resolve(this.datastoreRoot, replica.path || replicaPath);
  }

  /**
   * Runs one sync of `sourcePath` into the replica of `diskId` and times it from
   * StartSync to COMPLETED; the daemons' CPU seconds and peak RSS are taken over
   * the same span.
   */
  async sync(diskId: string, sourcePath: string, mode: 'SYNC_MODE_FULL' | 'SYNC_MODE_DELTA', diskBytes: number): Promise<DrplaneSyncResult> {
    const syncId = `bench-${process.pid}-${++this.syncCounter}`;
    const timeoutMs = Math.max(syncTimeoutMsMin, (diskBytes / syncSlowestBytesPerSecond) * 1000);
    const loadAverageAtStart = loadAverage();
    this.resetPeakRss();
    const cpuAtStart = this.cpuSecondsByDaemon();
    this.lastSyncCpuAtStart = cpuAtStart;
    const started = nowSeconds();
    await unary(this.processServerClient, this.processServerClient.startSync, {
      diskId,
      syncId,
      mode,
      epoch,
      agentAddress: this.agent.address,
      sourcePath,
      masterTargetAddress: this.masterTarget.address,
      tag: 'benchmark',
    });
    for (;;) {
      const status = await unary(this.processServerClient, this.processServerClient.getSync, { diskId });
      if (status.syncId === syncId && status.state === 'SYNC_STATE_COMPLETED') {
        const seconds = nowSeconds() - started;
        const cpu = cpuDelta(cpuAtStart, this.cpuSecondsByDaemon());
        const peakRssBytes = this.peakRssBytes();
        return {
          seconds,
          wireBytes: status.bytesSent + status.hashBytesExchanged,
          loadAverageAtStart,
          cpuSeconds: cpu.total,
          cpuSecondsByDaemon: cpu.byDaemon,
          peakRssBytes,
          status,
          details: {
            ...(this.peakRssResetError ? { peakRssNote: this.peakRssResetError } : {}),
            syncId,
            mode,
            // The process server's own view of the duration, free of the polling interval.
            processServerSeconds: status.updatedTimeMs && status.startedTimeMs ? (status.updatedTimeMs - status.startedTimeMs) / 1000 : undefined,
            bytesChanged: status.bytesChanged,
            bytesSent: status.bytesSent,
            hashBytesExchanged: status.hashBytesExchanged,
            zeroBytesSkipped: status.zeroBytesSkipped,
            bytesScanned: status.bytesScanned,
            batchesAcked: status.batchesAcked,
            reconnects: status.reconnects,
          },
        };
      }
      if (status.syncId === syncId && (status.state === 'SYNC_STATE_FAILED' || status.state === 'SYNC_STATE_STOPPED')) {
        throw new Error(`drplane ${mode} sync of ${diskId} ended ${status.state}: ${status.error || '(no error message)'}${this.recentDaemonErrors()}`);
      }
      if (nowSeconds() - started > timeoutMs / 1000) {
        throw new Error(`drplane ${mode} sync of ${diskId} did not complete within ${Math.round(timeoutMs / 1000)} s; last status ${JSON.stringify(status)}${this.recentDaemonErrors()}`);
      }
      await new Promise((resolve) => setTimeout(resolve, pollIntervalMs));
    }
  }

  /**
   * Starts continuous replication of `sourcePath` with write-through capture
   * (initial full sync under the capture) and waits for its first point.
   */
  async startReplication(diskId: string, sourcePath: string, crashConsistentIntervalMs: number): Promise<void> {
    const client = this.processServerClient;
    await unary(client, client.startReplication, {
      diskId,
      epoch,
      agentAddress: this.agent.address,
      sourcePath,
      masterTargetAddress: this.masterTarget.address,
      captureMode: 'CAPTURE_WRITE_THROUGH',
      crashConsistentIntervalMs,
      initialSync: 'SYNC_MODE_FULL',
      tag: 'benchmark',
    });
    const deadline = Date.now() + syncTimeoutMsMin * 5;
    for (;;) {
      const status = await unary(client, client.getReplication, { diskId });
      if (status.state === 'REPLICATION_REPLICATING' && status.latestRecoveryPointId) return;
      if (status.state === 'REPLICATION_FAILED') throw new Error(`replication of ${diskId} failed: ${status.stateReason}${this.recentDaemonErrors()}`);
      if (Date.now() > deadline) throw new Error(`replication of ${diskId} did not start: ${JSON.stringify(status)}${this.recentDaemonErrors()}`);
      await new Promise((resolve) => setTimeout(resolve, pollIntervalMs));
    }
  }

  /** Drains the process server (FlushReplication), then checks that the replica equals the source. */
  async verifyReplica(diskId: string, sourcePath: string): Promise<void> {
    const client = this.processServerClient;
    await unary(client, client.flushReplication, { diskId, timeoutMs: 0 }, { timeoutMs: 11 * 60_000 });
    const replica = await unary(this.masterTargetClient, this.masterTargetClient.getReplica, { diskId });
    const replicaPath = path.resolve(this.datastoreRoot, replica.path);
    const [actual, expected] = [sha256File(replicaPath), sha256File(sourcePath)];
    if (actual !== expected) throw new Error(`replica ${replicaPath} (sha256 ${actual}) does not equal the source ${sourcePath} (${expected})`);
  }

  /** The daemons' last warnings and errors, to put in a failure message. */
  recentDaemonErrors(): string {
    const lines: string[] = [];
    for (const daemon of [this.agent, this.processServer, this.masterTarget]) {
      for (const line of daemon.logs.filter((entry) => Number(entry.level) >= 40).slice(-5)) lines.push(`[${daemon.name}] ${JSON.stringify(line)}`);
      for (const line of daemon.stderr.slice(-5)) lines.push(`[${daemon.name} stderr] ${line}`);
      if (daemon.process.exitCode !== null || daemon.process.signalCode !== null) lines.push(`[${daemon.name}] exited (code ${daemon.process.exitCode}, signal ${daemon.process.signalCode})`);
    }
    return lines.length ? `\ndaemon logs:\n${lines.join('\n')}` : '';
  }

  /** SIGTERM to the three daemons; resolves with how each exited. */
  async stop(): Promise<Record<(typeof daemonNames)[number], { code: number | null; signal: NodeJS.Signals | null }>> {
    this.processServerClient.close();
    this.masterTargetClient.close();
    const [agent, processServer, masterTarget] = await Promise.all([this.agent.stop(), this.processServer.stop(), this.masterTarget.stop()]);
    return { agent, 'process-server': processServer, 'master-target': masterTarget };
  }
}

/** CPU seconds used between two readings of cpuSecondsByDaemon(). */
export function cpuDelta(before: PerDaemon, after: PerDaemon): { total: number; byDaemon: PerDaemon } {
  const byDaemon = Object.fromEntries(daemonNames.map((name) => [name, roundCpu(after[name] - before[name])])) as PerDaemon;
  return { total: roundCpu(daemonNames.reduce((sum, name) => sum + byDaemon[name], 0)), byDaemon };
}
