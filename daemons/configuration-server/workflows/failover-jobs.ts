// The failover family of jobs (failover, change of recovery point, commit,
// test failover and its cleanup): their kinds, the parameters each persists
// with its job to resume from, their steps and deadlines.
import { hookTimeoutMsMax, startHookTimeoutMsMax } from '../../../shared/limits';
import type { PointSelector__Output } from '../../../generated/drplane/v1/PointSelector';
import { peerCallTimeoutMs } from '../jobs/peer-calls';
import type { MachineRecord, MachineState } from '../store/records';

export const failoverJobKind = 'failover';
export const changePointJobKind = 'change-recovery-point';
export const commitJobKind = 'commit';
export const testFailoverJobKind = 'test-failover';
export const cleanupTestFailoverJobKind = 'cleanup-test-failover';

/** Deadline of OpenHashTree over a whole disk (the agent reads the source, the master target the replica). */
export const hashTreeTimeoutMs = 60 * 60_000;
/** Deadline of ShutdownSource: the agent's shutdown hook runs first. */
export const shutdownSourceTimeoutMs = hookTimeoutMsMax + peerCallTimeoutMs;
/** Deadline of StartMachine: the master target's start hook may take minutes (a machine boots). */
export const startMachineTimeoutMs = startHookTimeoutMsMax + peerCallTimeoutMs;
/** A test failover's disks: <datastore>/test-failover/<disk_id>.img on the target's master target. */
export const testFailoverFolder = 'test-failover';

/** Hook output quoted on a step (the rest is in the daemon's log). */
export const hookOutputQuotedMax = 200;

/** One disk of a failover (or a change of point, or a test failover). */
export interface FailoverDisk {
  diskId: string;
  diskBytes: number;
  /** The machine's disk at the source site (what its agent reads). */
  sourcePath: string;
  /** Where the point lands: the machine's disk at the target site (or a test disk). */
  targetPath: string;
  /** BY_ID: the point asked for this disk. */
  requestedPointId: string;
  /** The point materialised: drained (planned) or selected (unplanned). */
  pointId: string;
  synchronized: boolean;
  drained: boolean;
  verified: boolean;
  /** The fence's epoch, written with the machine before any peer hears of it (0 until issued). */
  fenceEpoch: number;
  epochSet: boolean;
  replicationStopped: boolean;
  materialised: boolean;
}

export interface FailoverParams {
  planned: boolean;
  synchronizeFirst: boolean;
  selector: PointSelector__Output;
  timeMs: number;
  noStart: boolean;
  /** The site the machine moves to: the recovery site (FORWARD), or home (REVERSE: a failback). */
  toSite: 'recovery' | 'home';
  /** The machine's state before, to return to when it fails before its fence. */
  stateBefore: MachineState;
  /** The source site's agent and process server, the target site's master target (the flat fields at the start). */
  agentId: string;
  processServerId: string;
  masterTargetId: string;
  disks: FailoverDisk[];
  /** ShutdownSource was asked: a failure before the fence releases the source. */
  sourceShutDown: boolean;
  /** Set before the first SetEpoch: from here on the failover only goes forward. */
  fenced: boolean;
}

export interface CommitParams {
  /** The master target that held the replicas the machine failed over from. */
  masterTargetId: string;
  disks: { diskId: string; epoch: number; retired: boolean }[];
  /** The flat fields moved to the other site (one transaction). */
  switched: boolean;
  /** The agent of the site the machine now runs on, and the disks it released ('' when none is known there). */
  releaseAgentId: string;
  releasePaths: string[];
  released: boolean;
}

export interface ChangePointParams {
  selector: PointSelector__Output;
  timeMs: number;
  masterTargetId: string;
  noStart: boolean;
  disks: FailoverDisk[];
}

export interface TestFailoverParams {
  selector: PointSelector__Output;
  timeMs: number;
  processServerId: string;
  masterTargetId: string;
  disks: FailoverDisk[];
}

export interface CleanupParams {
  masterTargetId: string;
  paths: string[];
  deleted: boolean[];
}

/** How a point is chosen: the selector, and per disk the point asked (BY_ID). */
export interface PointRequest {
  selector: PointSelector__Output;
  pointIds: string[];
  timeMs: number;
}

export interface FailoverOptions {
  planned: boolean;
  synchronizeFirst: boolean;
  noStart: boolean;
  point: PointRequest;
  /** Where the failover lands, per disk (default: the machine's disks at the target site). */
  targetPaths?: string[];
}

/** The steps of a failover, in order (docs/failover.md, "Jobs"). */
export function failoverSteps(planned: boolean, synchronizeFirst: boolean, diskBytes: number): { name: string; bytesTotal?: number }[] {
  if (!planned) return [{ name: 'check' }, { name: 'select-point' }, { name: 'fence' }, { name: 'materialise', bytesTotal: diskBytes }, { name: 'start-target' }];
  return [
    { name: 'check' },
    ...(synchronizeFirst ? [{ name: 'synchronize' }] : []),
    { name: 'shutdown-source' },
    { name: 'drain' },
    { name: 'verify', bytesTotal: diskBytes },
    { name: 'fence' },
    { name: 'materialise', bytesTotal: diskBytes },
    { name: 'start-target' },
  ];
}

export const commitSteps = [{ name: 'retire-replicas' }, { name: 'switch-site' }];

/** The machine has a recovery point on every disk, judging by its state. */
export function hasPoints(state: MachineState): boolean {
  return state !== 'UNPROTECTED' && state !== 'INITIAL_SYNC' && state !== 'ERROR';
}

/** "LATEST_APP_CONSISTENT", "AT_OR_BEFORE 2024-05-01T13:45:00.000Z". */
export function describeSelector(selector: PointSelector__Output, timeMs: number): string {
  return selector === 'AT_OR_BEFORE' ? `AT_OR_BEFORE ${new Date(timeMs).toISOString()}` : selector;
}

export function describeEpochs(disks: FailoverDisk[]): string {
  const epochs = [...new Set(disks.map((disk) => disk.fenceEpoch))];
  return epochs.length === 1 ? `fenced at epoch ${epochs[0]}` : `fenced at epochs ${disks.map((disk) => `${disk.diskId} ${disk.fenceEpoch}`).join(', ')}`;
}

/** Each disk of the machine as a failover (or change of point, or test failover) starts it. */
export function failoverDisks(machine: MachineRecord, point: PointRequest, targetPaths: string[]): FailoverDisk[] {
  return machine.disks.map((disk, index) => ({
    diskId: disk.diskId,
    diskBytes: disk.diskBytes,
    sourcePath: disk.sourcePath,
    targetPath: targetPaths[index]!,
    requestedPointId: point.selector === 'BY_ID' ? point.pointIds[index]! : '',
    pointId: '',
    synchronized: false,
    drained: false,
    verified: false,
    fenceEpoch: 0,
    epochSet: false,
    replicationStopped: false,
    materialised: false,
  }));
}
