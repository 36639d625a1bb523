// Recovery points live on the master target that holds each replica; the
// configuration server knows which one that is and asks it. Choosing a point by
// selector is done here too: LATEST drains the process server first
// (FlushReplication), every other selector is the master target's.
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument, notFound } from '../../../shared/errors';
import { unary } from '../../../shared/grpc';
import { pathLengthMax } from '../../../shared/limits';
import type { Logger } from '../../../shared/log';
import type { PointSelector__Output } from '../../../generated/drplane/v1/PointSelector';
import type { RecoveryPoint__Output } from '../../../generated/drplane/v1/RecoveryPoint';
import type { RecoveryPointKind__Output } from '../../../generated/drplane/v1/RecoveryPointKind';
import type { MaterialiseMachinePointResponse } from '../../../generated/drplane/v1/MaterialiseMachinePointResponse';
import type { MaterialiseProgress__Output } from '../../../generated/drplane/v1/MaterialiseProgress';
import type { Machines } from './machines';
import { callPeer, peerName, type Peers } from './peers';
import type { Servers } from './servers';
import type { DiskRecord, MachineRecord, ServerRecord } from '../store/records';

/** Materialising copies a whole replica and writes back before-images: allow for large disks. */
export const materialiseTimeoutMs = 60 * 60_000;
/** How long the process server may take to drain a disk for LATEST (FlushReplication's own maximum). */
export const flushTimeoutMs = 10 * 60_000;
/** Deadline of a call that lists or selects points. */
export const pointCallTimeoutMs = 30_000;

export interface PointChoice {
  selector: PointSelector__Output;
  /** BY_ID: "<disk_id>@<sequence>". */
  pointId: string;
  /** AT_OR_BEFORE: unix milliseconds. */
  timeMs: number;
}

/** The words after "@" in a point reference, and the selector each stands for. */
const selectorWords: Record<string, PointSelector__Output> = {
  latest: 'LATEST',
  'latest-processed': 'LATEST_PROCESSED',
  'latest-app-consistent': 'LATEST_APP_CONSISTENT',
  'latest-crash-consistent': 'LATEST_CRASH_CONSISTENT',
};

export const pointReferenceHelp =
  '<disk_id>@<sequence> (drctl points MACHINE lists them), <disk_id>@latest, @latest-processed, @latest-app-consistent, @latest-crash-consistent, or @<=TIME (the newest point at or before TIME: ISO 8601 or unix milliseconds)';

/**
 * Parses "<disk_id>@<what>": a sequence (that point), a selector word, or
 * "<=TIME" with TIME in ISO 8601 or unix milliseconds. Throws INVALID_ARGUMENT.
 */
export function parsePointReference(reference: string): { diskId: string; choice: PointChoice } {
  const at = reference.indexOf('@');
  const diskId = at > 0 ? reference.slice(0, at) : '';
  const what = at > 0 ? reference.slice(at + 1) : '';
  const bad = () => invalidArgument(`recovery_point_id: must be ${pointReferenceHelp}, got ${JSON.stringify(reference.slice(0, pathLengthMax))}`);
  if (!diskId || !what) throw bad();
  if (/^\d+$/.test(what)) return { diskId, choice: { selector: 'BY_ID', pointId: reference, timeMs: 0 } };
  const selector = selectorWords[what];
  if (selector) return { diskId, choice: { selector, pointId: '', timeMs: 0 } };
  if (what.startsWith('<=')) {
    const timeMs = parseTime(what.slice(2));
    if (timeMs === undefined) throw bad();
    return { diskId, choice: { selector: 'AT_OR_BEFORE', pointId: '', timeMs } };
  }
  throw bad();
}

/** The batch sequence in a point id "<disk>@<sequence>" (0 for none). */
export function pointSequence(pointId: string): number {
  const at = pointId.lastIndexOf('@');
  return at < 0 ? 0 : Number(pointId.slice(at + 1)) || 0;
}

/** Unix milliseconds from "1714567890123" or an ISO 8601 time; undefined if neither. */
export function parseTime(text: string): number | undefined {
  if (/^\d+$/.test(text)) {
    const ms = Number(text);
    return Number.isSafeInteger(ms) && ms > 0 ? ms : undefined;
  }
  if (!/^\d{4}-\d{2}-\d{2}/.test(text)) return undefined;
  const ms = Date.parse(text);
  return Number.isNaN(ms) || ms <= 0 ? undefined : ms;
}

export class RecoveryPoints {
  constructor(
    private readonly machines: Machines,
    private readonly servers: Servers,
    private readonly peers: Peers,
    private readonly log: Logger,
  ) {}

  async list(request: { machine: string; diskId: string }): Promise<RecoveryPoint__Output[]> {
    const machine = this.machines.get(request.machine);
    const disks = this.disksOf(machine, request.diskId);
    const points: RecoveryPoint__Output[] = [];
    for (const disk of disks) {
      try {
        points.push(...(await this.listDisk(machine, disk.diskId)));
      } catch (error) {
        // A disk whose replica is not created yet (initial sync pending) simply has no points.
        if (request.diskId || !(error instanceof DrplaneError) || error.code !== ErrorCode.NotFound) throw error;
      }
    }
    return points;
  }

  /** One point per disk (or the one disk asked, or the disk of a BY_ID point), chosen by selector. */
  async select(request: { machine: string; selector: PointSelector__Output; pointId: string; timeMs: number; diskId: string }): Promise<RecoveryPoint__Output[]> {
    const machine = this.machines.get(request.machine);
    const choice: PointChoice = { selector: request.selector, pointId: request.pointId, timeMs: request.timeMs };
    let diskId = request.diskId;
    switch (choice.selector) {
      case 'POINT_SELECTOR_UNSPECIFIED':
        throw invalidArgument('selector: required (LATEST, LATEST_PROCESSED, LATEST_APP_CONSISTENT, LATEST_CRASH_CONSISTENT, BY_ID or AT_OR_BEFORE)');
      case 'BY_ID': {
        if (!choice.pointId) throw invalidArgument('point_id: required with BY_ID (<disk_id>@<sequence>; drctl points MACHINE lists them)');
        const parsed = parsePointReference(choice.pointId);
        if (parsed.choice.selector !== 'BY_ID') throw invalidArgument(`point_id: must be <disk_id>@<sequence>, got ${JSON.stringify(choice.pointId)}`);
        if (diskId && diskId !== parsed.diskId) throw invalidArgument(`point_id ${choice.pointId} is not a point of disk ${diskId}`);
        diskId = parsed.diskId;
        break;
      }
      case 'AT_OR_BEFORE':
        if (!(choice.timeMs > 0)) throw invalidArgument('time_ms: required with AT_OR_BEFORE (unix milliseconds)');
        break;
      default:
        break;
    }
    const disks = this.disksOf(machine, diskId);
    return Promise.all(disks.map((disk) => this.selectDisk(machine, disk.diskId, choice)));
  }

  /** A disk's point by selector: LATEST drains the process server first, the rest is asked of the master target. */
  async selectDisk(machine: MachineRecord, diskId: string, choice: PointChoice): Promise<RecoveryPoint__Output> {
    if (choice.selector === 'LATEST') {
      if (!machine.processServerId) throw failedPrecondition(`machine ${machine.name} is not replicated: drctl enable ${machine.name} --datastore DIR first`);
      const processServer = this.servers.require(machine.processServerId, 'process server');
      const client = this.peers.processServer(processServer);
      const started = Date.now();
      const response = await callPeer(processServer, () => unary(client, client.flushReplication, { diskId, timeoutMs: flushTimeoutMs }, { timeoutMs: flushTimeoutMs + pointCallTimeoutMs }));
      if (!response.recoveryPoint) throw new DrplaneError(ErrorCode.Internal, `${peerName(processServer)} flushed ${diskId} but named no recovery point`);
      this.log.info({ diskId, recoveryPointId: response.recoveryPoint.id, durationMs: Date.now() - started }, 'flushed for the latest point');
      return response.recoveryPoint;
    }
    const masterTarget = this.servers.require(this.replicatedTo(machine), 'master target');
    const client = this.peers.masterTarget(masterTarget);
    return callPeer(masterTarget, () => unary(client, client.selectRecoveryPoint, { diskId, selector: choice.selector, pointId: choice.pointId, timeMs: choice.timeMs }, { timeoutMs: pointCallTimeoutMs }));
  }

  async materialise(request: { recoveryPointId: string; path: string }): Promise<MaterialiseMachinePointResponse> {
    const { diskId, choice } = parsePointReference(request.recoveryPointId);
    if (!request.path) throw invalidArgument('path: required (a new file on the master target, under one of its datastore roots)');
    if (request.path.length > pathLengthMax) throw invalidArgument(`path: at most ${pathLengthMax} characters`);
    const { machine } = this.machines.findDisk(diskId);
    const masterTarget = this.servers.require(this.replicatedTo(machine), 'master target');
    const client = this.peers.masterTarget(masterTarget);
    let recoveryPointId = request.recoveryPointId;
    if (choice.selector !== 'BY_ID') recoveryPointId = (await this.selectDisk(machine, diskId, choice)).id;
    const response = await callPeer(masterTarget, () =>
      unary(client, client.materialiseRecoveryPoint, { recoveryPointId, path: request.path }, { timeoutMs: materialiseTimeoutMs }),
    );
    this.log.info({ recoveryPointId, path: response.path, beforeImageBytes: response.beforeImageBytes, durationMs: response.durationMs }, 'recovery point materialised');
    return {
      path: response.path,
      recoveryPoint: response.recoveryPoint ?? undefined,
      beforeImageBytes: response.beforeImageBytes,
      masterTargetAddress: masterTarget.address,
    };
  }

  /** How far a materialisation running now to `path` has got, asked of the disk's master target. */
  async materialiseProgress(request: { recoveryPointId: string; path: string }): Promise<MaterialiseProgress__Output> {
    const { diskId } = parsePointReference(request.recoveryPointId);
    if (!request.path) throw invalidArgument('path: required (the path given to MaterialiseRecoveryPoint)');
    if (request.path.length > pathLengthMax) throw invalidArgument(`path: at most ${pathLengthMax} characters`);
    const { machine } = this.machines.findDisk(diskId);
    const masterTarget = this.servers.require(this.replicatedTo(machine), 'master target');
    return masterTargetMaterialiseProgress(this.peers, masterTarget, request.path);
  }

  /**
   * The point a marker closed on a disk, once the master target has applied
   * it: the point whose capture id and change sequence are the marker's, of
   * the marker's `kind`. An idle write-through disk repeats its last state as
   * a crash-consistent point with a newer time, at the same change sequence:
   * that later point is not the marker's. Undefined while it is still in
   * flight (or when the capture started over and dropped it: the caller's
   * deadline ends the wait).
   */
  async pointAtChange(machine: MachineRecord, diskId: string, captureId: string, changeSequence: number, kind: RecoveryPointKind__Output): Promise<RecoveryPoint__Output | undefined> {
    const masterTarget = this.servers.require(this.replicatedTo(machine), 'master target');
    const client = this.peers.masterTarget(masterTarget);
    // The replica says how far it got: list the points only once the marker may be applied.
    const replica = await callPeer(masterTarget, () => unary(client, client.getReplica, { diskId }, { timeoutMs: pointCallTimeoutMs }));
    if (replica.captureId === captureId && Number(replica.appliedChangeSequence) < changeSequence) return undefined;
    const found = await this.findPoint(machine, diskId, captureId, changeSequence, kind);
    if (!found && replica.captureId === captureId) {
      throw new DrplaneError(ErrorCode.Aborted, `${peerName(masterTarget)} applied ${diskId} past change ${changeSequence} of capture ${captureId} but holds no point there: take the point again`);
    }
    return found;
  }

  /** The point of `kind` at that change of that capture; else the first point made there (the marker's batch closed it first; the list is oldest first). */
  private async findPoint(machine: MachineRecord, diskId: string, captureId: string, changeSequence: number, kind: RecoveryPointKind__Output): Promise<RecoveryPoint__Output | undefined> {
    const there = (await this.listDisk(machine, diskId)).filter((point) => point.captureId === captureId && Number(point.changeSequence) === changeSequence);
    return there.find((point) => point.kind === kind) ?? there[0];
  }

  private async listDisk(machine: MachineRecord, diskId: string): Promise<RecoveryPoint__Output[]> {
    const masterTarget = this.servers.require(this.replicatedTo(machine), 'master target');
    const client = this.peers.masterTarget(masterTarget);
    const response = await callPeer(masterTarget, () => unary(client, client.listRecoveryPoints, { diskId }, { timeoutMs: pointCallTimeoutMs }));
    return response.recoveryPoints;
  }

  private disksOf(machine: MachineRecord, diskId: string): DiskRecord[] {
    if (!diskId) return machine.disks;
    const disks = machine.disks.filter((disk) => disk.diskId === diskId);
    if (disks.length === 0) throw notFound(`machine ${machine.name} has no disk ${diskId} (its disks: ${machine.disks.map((disk) => disk.diskId).join(', ')})`);
    return disks;
  }

  private replicatedTo(machine: MachineRecord): string {
    if (!machine.masterTargetId) throw failedPrecondition(`machine ${machine.name} is not replicated: drctl enable ${machine.name} --datastore DIR first`);
    return machine.masterTargetId;
  }
}

/** Deadline of asking a master target how far a materialisation has got (a progress figure). */
export const materialiseProgressAskTimeoutMs = 2_000;

export function masterTargetMaterialiseProgress(peers: Peers, masterTarget: ServerRecord, targetPath: string): Promise<MaterialiseProgress__Output> {
  const client = peers.masterTarget(masterTarget);
  return callPeer(masterTarget, () => unary(client, client.getMaterialiseProgress, { path: targetPath }, { timeoutMs: materialiseProgressAskTimeoutMs }));
}
