// Every kind of record the configuration server keeps in its database
// (store.ts), in one place below the code that uses them, so that the store
// imports nothing of the domain. The field names are the stored format
// (msgpack): never rename one; a new field is optional, for records written
// before it existed.
import type { CaptureMode__Output } from '../../../generated/drplane/v1/CaptureMode';
import type { HealthSeverity__Output } from '../../../generated/drplane/v1/HealthSeverity';
import type { JobState__Output } from '../../../generated/drplane/v1/JobState';
import type { MachineState__Output } from '../../../generated/drplane/v1/MachineState';
import type { RecoveryPoint__Output } from '../../../generated/drplane/v1/RecoveryPoint';
import type { ServerKind__Output } from '../../../generated/drplane/v1/ServerKind';

// ----- Servers (entities/servers.ts) -----

export type RegisteredKind = Exclude<ServerKind__Output, 'SERVER_KIND_UNSPECIFIED'>;

export interface ServerRecord {
  serverId: string;
  kind: RegisteredKind;
  name: string;
  address: string;
  version: string;
  registeredTimeMs: number;
  lastHeartbeatTimeMs: number;
  /** sha256 of the token handed out at registration; the token itself is never stored. */
  tokenSha256: string;
  /** Under mTLS: the certificate (sha256 of its DER) the name is bound to, and when it became valid (a later one is a renewal). */
  certificateSha256?: string;
  certificateValidFromMs?: number;
}

// ----- Machines (entities/machines.ts) -----

export interface DiskRecord {
  /** "<machine>-disk<index>" */
  diskId: string;
  sourcePath: string;
  diskBytes: number;
  /** The replication epoch last issued for this disk (0: never replicated). */
  epoch: number;
  replicaPath: string;
  latestRecoveryPointId: string;
}

export interface MachineRecord {
  machineId: string;
  name: string;
  agentId: string;
  state: MachineState__Output;
  stateReason: string;
  disks: DiskRecord[];
  processServerId: string;
  masterTargetId: string;
  datastore: string;
  createdTimeMs: number;
  /** The job that is changing this machine; one at a time. */
  activeJobId: string;
  // Continuous replication; absent in records written before it existed.
  /** The policy the machine replicates with (set when replication is enabled). */
  policyId?: string;
  captureMode?: CaptureMode__Output;
  /** Scan capture: time between passes (0: the agent's default). */
  scanIntervalMs?: number;
  /** The replication group the machine belongs to, if any. */
  groupId?: string;
  // Failover and failback (docs/failover.md); absent in records written before them.
  /** FORWARD (home -> recovery, as enabled) or REVERSE; flips at commit. */
  direction?: 'FORWARD' | 'REVERSE';
  /** Where the machine was first protected, and the site it was enabled to. */
  home?: SiteRecord;
  recovery?: SiteRecord;
  /** From a failover until its commit. */
  failover?: FailoverRecord;
  /** From a test failover until its cleanup. */
  testFailover?: FailoverRecord;
  /** The machine's last failed or stopped job that `drctl job restart` continues. */
  restartableJobId?: string;
}

/** One site of a machine: who serves it there, and per disk (in disk order) its disk and replica file there. */
export interface SiteRecord {
  agentId: string;
  processServerId: string;
  masterTargetId: string;
  datastore: string;
  /** The machine's disk at this site: where it runs there, and where a failover to this site lands. */
  diskPaths: string[];
  /** The replica file on this site's master target, while this site is the target. */
  replicaPaths: string[];
}

export interface FailoverRecord {
  jobId: string;
  planned: boolean;
  selector: string;
  recoveryPointIds: string[];
  diskPaths: string[];
  masterTargetId: string;
  timeMs: number;
  /** The failover skipped the start hook (a change of recovery point skips it too). */
  noStart?: boolean;
}

export type MachineState = MachineRecord['state'];

// ----- Jobs (jobs/jobs.ts) -----

export interface StepRecord {
  name: string;
  state: JobState__Output;
  bytesDone: number;
  bytesTotal: number;
  message: string;
}

export interface JobRecord<P = unknown> {
  jobId: string;
  kind: string;
  machineId: string;
  state: JobState__Output;
  steps: StepRecord[];
  bytesDone: number;
  bytesTotal: number;
  bytesSent: number;
  error: string;
  createdTimeMs: number;
  updatedTimeMs: number;
  endedTimeMs: number;
  /** What the workflow needs to resume (chosen servers, sync ids, per-disk progress). */
  params: P;
  // Absent in records written before they existed.
  /** Why a queued job waits (a slot), or what it chose (the points of a failover). */
  detail?: string;
  /** The job holds one of its workflow's slots (set at admission, cleared at a restart). */
  slotHeld?: boolean;
  /** A recovery plan's job: its plan and the machines' jobs it started (plans.ts). */
  planId?: string;
  childJobIds?: string[];
}

// ----- Policies (entities/policies.ts) -----

export interface PolicyRecord {
  policyId: string;
  name: string;
  rpoThresholdMs: number;
  retentionMs: number;
  crashConsistentIntervalMs: number;
  /** 0: only on demand. */
  appConsistentIntervalMs: number;
  /** 0: only on demand. */
  groupConsistentIntervalMs: number;
  failback: boolean;
  /** Forward: its failback policy. Failback: its forward policy. */
  pairedPolicyId: string;
  configurationServerId: string;
  createdTimeMs: number;
}

// ----- Replication groups and their points (entities/groups.ts) -----

export interface GroupRecord {
  groupId: string;
  name: string;
  machineIds: string[];
  /** The master target every member replicates to ('' until the first member is enabled). */
  masterTargetId: string;
  latestGroupPointId: string;
  createdTimeMs: number;
}

export interface GroupPointRecord {
  groupPointId: string;
  groupId: string;
  barrierId: string;
  timeMs: number;
  tag: string;
  members: (MarkedDisk & { machineId: string })[];
  complete: boolean;
}

/** A marker put in a disk's stream, and the point it closes once applied. */
export interface MarkedDisk {
  diskId: string;
  captureId: string;
  changeSequence: number;
  markerTimeMs: number;
  point?: RecoveryPoint__Output;
}

// ----- Health events (entities/health-events.ts) -----

export const HealthCode = {
  RpoThresholdExceeded: 'RPO_THRESHOLD_EXCEEDED',
  HeartbeatMissed: 'HEARTBEAT_MISSED',
  FreezeHookFailed: 'FREEZE_HOOK_FAILED',
  ReplicationFailed: 'REPLICATION_FAILED',
  CacheFull: 'CACHE_FULL',
  GroupBarrierFailed: 'GROUP_BARRIER_FAILED',
  /** An agent's clock is ahead of its process server's by more than sourceClockSkewMsMax: its points are dated with the process server's clock. */
  SourceClockSkew: 'SOURCE_CLOCK_SKEW',
  /** A master target's retention volume has less than retentionVolumeLowFreeRatio of its capacity free: batches will soon be refused. */
  RetentionVolumeLow: 'RETENTION_VOLUME_LOW',
} as const;
export type HealthCode = (typeof HealthCode)[keyof typeof HealthCode];

export interface HealthEventRecord {
  eventId: string;
  code: HealthCode;
  severity: HealthSeverity__Output;
  /** A machine, disk, group or server id. */
  subject: string;
  machineId: string;
  message: string;
  raisedTimeMs: number;
  /** 0 while active. */
  clearedTimeMs: number;
}

// ----- Recovery plans (workflows/plans.ts) -----

/** Exactly one of machineId and groupId is set. */
export interface PlanMemberRecord {
  machineId: string;
  groupId: string;
}

export interface PlanRecord {
  planId: string;
  name: string;
  members: PlanMemberRecord[];
  createdTimeMs: number;
  /** The newest plan-failover or plan-commit job ('' before the first). */
  lastJobId: string;
}

