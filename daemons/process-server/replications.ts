// The replication sessions of this process server, one per disk. Each is
// persisted in dataDir/replications/<disk>.json (with its journal in
// cacheDir/<disk>/) and resumed by itself when the daemon starts. For one disk:
// the same epoch is idempotent (the intervals and the tag may change), a newer
// epoch replaces the session and forgets its journal, an older one is refused.
import fs from 'node:fs';
import path from 'node:path';
import { Mutex } from 'async-mutex';
import { listenAddress } from '../../shared/config';
import { unary } from '../../shared/grpc';
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument, limitExceeded, notFound } from '../../shared/errors';
import {
  crashConsistentIntervalMsDefault,
  crashConsistentIntervalMsMax,
  crashConsistentIntervalMsMin,
  flushTimeoutMsMax,
  nameLengthMax,
  pathLengthMax,
  replicationsMax,
  scanIntervalMsDefault,
  scanIntervalMsMax,
  scanIntervalMsMin,
} from '../../shared/limits';
import type { StartReplicationRequest__Output } from '../../generated/drplane/v1/StartReplicationRequest';
import type { ReplicationStatus__Output } from '../../generated/drplane/v1/ReplicationStatus';
import type { FlushReplicationResponse } from '../../generated/drplane/v1/FlushReplicationResponse';
import { Replication } from './replication';
import { journalDir, type ReplicationContext, type ReplicationRecord, type ReplicationSpec } from './session';

const diskIdPattern = /^[A-Za-z0-9._-]+$/;
const stopCaptureTimeoutMs = 5_000;

/** Checks a StartReplication request field by field; the message names the proto field. */
export function validateStartReplication(request: StartReplicationRequest__Output): ReplicationSpec {
  const text = (field: string, value: string, max: number, required = true) => {
    if (required && !value) throw invalidArgument(`${field} is required`);
    if (value.length > max) throw invalidArgument(`${field} is longer than ${max} characters`);
  };
  text('disk_id', request.diskId, nameLengthMax);
  // The disk id names the journal's directory and the session's file.
  if (!diskIdPattern.test(request.diskId) || request.diskId === '.' || request.diskId === '..') throw invalidArgument(`disk_id ${JSON.stringify(request.diskId)} must be letters, digits, dot, dash or underscore`);
  text('source_path', request.sourcePath, pathLengthMax);
  text('tag', request.tag, nameLengthMax, false);
  if (!Number.isSafeInteger(request.epoch) || request.epoch < 1) throw invalidArgument(`epoch must be the disk's epoch from the configuration server (1 or more), got ${request.epoch}`);
  for (const [field, address] of [['agent_address', request.agentAddress], ['master_target_address', request.masterTargetAddress]] as const) {
    if (!listenAddress.safeParse(address).success) throw invalidArgument(`${field} must be host:port, got "${address}"`);
  }
  if (request.captureMode !== 'CAPTURE_WRITE_THROUGH' && request.captureMode !== 'CAPTURE_SCAN') throw invalidArgument(`capture_mode must be CAPTURE_WRITE_THROUGH or CAPTURE_SCAN, got ${request.captureMode}`);
  const interval = (field: string, value: number, fallback: number, min: number, max: number) => {
    if (value === 0) return fallback;
    if (value < min || value > max) throw invalidArgument(`${field} must be from ${min} to ${max} ms (0: ${fallback}), got ${value}`);
    return value;
  };
  const scanIntervalMs = interval('scan_interval_ms', request.scanIntervalMs, scanIntervalMsDefault, scanIntervalMsMin, scanIntervalMsMax);
  const crashConsistentIntervalMs = interval('crash_consistent_interval_ms', request.crashConsistentIntervalMs, crashConsistentIntervalMsDefault, crashConsistentIntervalMsMin, crashConsistentIntervalMsMax);
  if (!['SYNC_MODE_UNSPECIFIED', 'SYNC_MODE_FULL', 'SYNC_MODE_DELTA'].includes(request.initialSync)) throw invalidArgument(`initial_sync must be SYNC_MODE_FULL, SYNC_MODE_DELTA or unset, got ${request.initialSync}`);
  return {
    diskId: request.diskId,
    epoch: request.epoch,
    agentAddress: request.agentAddress,
    sourcePath: request.sourcePath,
    masterTargetAddress: request.masterTargetAddress,
    captureMode: request.captureMode,
    scanIntervalMs,
    crashConsistentIntervalMs,
    initialSync: request.initialSync === 'SYNC_MODE_UNSPECIFIED' ? '' : request.initialSync,
    tag: request.tag,
  };
}

export class Replications {
  private readonly sessions = new Map<string, Replication>();
  /** Start, stop and resync of sessions, one at a time (they replace sessions and journals). */
  private readonly lock = new Mutex();
  /** Bytes sent by sessions that were stopped or replaced. */
  private bytesSentRetired = 0;

  constructor(private readonly context: ReplicationContext) {}

  /** Resumes every persisted session; journals without a session are deleted. */
  async load(): Promise<void> {
    const { log, recordsDir, cache } = this.context;
    await fs.promises.mkdir(recordsDir, { recursive: true });
    for (const name of (await fs.promises.readdir(recordsDir)).filter((entry) => entry.endsWith('.json'))) {
      const file = path.join(recordsDir, name);
      let record: ReplicationRecord;
      try {
        record = JSON.parse(await fs.promises.readFile(file, 'utf8')) as ReplicationRecord;
        if (!record.spec || !record.state || `${record.spec.diskId}.json` !== name) throw new Error('not a session record');
      } catch (error) {
        log.error({ file, err: (error as Error).message }, 'session record unreadable: that disk is not replicated until StartReplication is called again');
        continue;
      }
      const session = await Replication.open(record, this.context);
      this.sessions.set(record.spec.diskId, session);
      session.start();
    }
    for (const entry of await fs.promises.readdir(cache.dir, { withFileTypes: true })) {
      if (entry.isDirectory() && !this.sessions.has(entry.name)) {
        log.warn({ dir: path.join(cache.dir, entry.name) }, 'journal without a session deleted');
        await fs.promises.rm(path.join(cache.dir, entry.name), { recursive: true, force: true });
      }
    }
    if (this.sessions.size > 0) log.info({ sessions: [...this.sessions.keys()] }, 'replication sessions resumed');
  }

  async start(request: StartReplicationRequest__Output): Promise<ReplicationStatus__Output> {
    const spec = validateStartReplication(request);
    return this.lock.runExclusive(async () => {
      const current = this.sessions.get(spec.diskId);
      if (current) {
        if (spec.epoch < current.epoch) {
          throw new DrplaneError(ErrorCode.StaleEpoch, `disk ${spec.diskId} replicates at epoch ${current.epoch}; epoch ${spec.epoch} is older (another site owns the disk now)`);
        }
        if (spec.epoch === current.epoch) {
          const running = current.currentSpec;
          for (const field of ['agentAddress', 'sourcePath', 'masterTargetAddress', 'captureMode'] as const) {
            if (running[field] !== spec[field]) throw failedPrecondition(`disk ${spec.diskId} replicates at epoch ${spec.epoch} with ${field} ${running[field]}; changing it to ${spec[field]} needs a new epoch`);
          }
          await current.update(spec);
          return current.status();
        }
        this.context.log.info({ diskId: spec.diskId, from: current.epoch, to: spec.epoch }, 'a newer epoch replaces the replication session');
        await this.retire(current);
      }
      if (this.sessions.size >= replicationsMax) throw limitExceeded(`this process server runs ${replicationsMax} replication sessions, its most`);
      // A journal left by an older session of the disk holds nothing this one may send.
      await fs.promises.rm(journalDir(this.context.cache.dir, spec.diskId), { recursive: true, force: true });
      const session = await Replication.open(Replication.fresh(spec), this.context);
      this.sessions.set(spec.diskId, session);
      session.start();
      return session.status();
    });
  }

  get(diskId: string): ReplicationStatus__Output {
    return this.find(diskId).status();
  }

  list(): ReplicationStatus__Output[] {
    return [...this.sessions.values()].map((session) => session.status());
  }

  /** Ends the session and deletes its journal; the agent's capture is stopped too (best effort). */
  async stop(diskId: string): Promise<ReplicationStatus__Output> {
    return this.lock.runExclusive(async () => {
      const session = this.find(diskId);
      const { agentAddress, sourcePath } = session.currentSpec;
      await this.retire(session);
      const agent = this.context.peers.agent(agentAddress);
      await unary(agent, agent.stopCapture, { path: sourcePath }, { timeoutMs: stopCaptureTimeoutMs }).catch((error: unknown) =>
        this.context.log.warn({ diskId, err: (error as Error).message }, 'could not stop the capture on the agent; it overflows and starts over when its held records reach the bound'),
      );
      return session.status();
    });
  }

  async flush(diskId: string, timeoutMs: number): Promise<FlushReplicationResponse> {
    const session = this.find(diskId);
    const waitMs = timeoutMs === 0 ? flushTimeoutMsMax : Math.min(timeoutMs, flushTimeoutMsMax);
    const recoveryPoint = await session.flush(waitMs);
    return { recoveryPoint, status: session.status() };
  }

  async resync(diskId: string, full: boolean): Promise<ReplicationStatus__Output> {
    return this.lock.runExclusive(async () => {
      const session = this.find(diskId);
      await session.resync(full);
      return session.status();
    });
  }

  /** Stops every session; records and journals stay, so the next start resumes them. */
  async stopAll(): Promise<void> {
    await Promise.all([...this.sessions.values()].map((session) => session.stop()));
  }

  totals(): { replications: number; syncsRunning: number; cacheBytes: number; backlogBytes: number; bytesSent: number } {
    const sessions = [...this.sessions.values()];
    return {
      replications: sessions.length,
      syncsRunning: sessions.filter((session) => session.syncRunning).length,
      cacheBytes: this.context.cache.usedBytes,
      backlogBytes: sessions.reduce((total, session) => total + session.backlogBytes, 0),
      bytesSent: this.bytesSentRetired + sessions.reduce((total, session) => total + session.bytesSentTotal, 0),
    };
  }

  private async retire(session: Replication): Promise<void> {
    await session.remove();
    this.bytesSentRetired += session.bytesSentTotal;
    this.sessions.delete(session.diskId);
  }

  private find(diskId: string): Replication {
    if (!diskId) throw invalidArgument('disk_id is required');
    const session = this.sessions.get(diskId);
    if (!session) throw notFound(`this process server does not replicate disk ${diskId}: StartReplication first`);
    return session;
  }
}
