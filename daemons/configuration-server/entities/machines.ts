// Protected machines and their disks: what an operator adds, and the state
// the replication jobs move them through.
import path from 'node:path';
import { DrplaneError, ErrorCode, failedPrecondition, fromServiceError, invalidArgument, limitExceeded, notFound } from '../../../shared/errors';
import { unary } from '../../../shared/grpc';
import { blockBytes, diskBytesMax, disksPerMachineMax, nameLengthMax, pathLengthMax } from '../../../shared/limits';
import type { Logger } from '../../../shared/log';
import type { Machine } from '../../../generated/drplane/v1/Machine';
import type { MachineSite } from '../../../generated/drplane/v1/MachineSite';
import type { FailoverState } from '../../../generated/drplane/v1/FailoverState';
import type { DescribeDisksResponse__Output } from '../../../generated/drplane/v1/DescribeDisksResponse';
import { checkName, type Servers } from './servers';
import { peerName, type Peers } from './peers';
import type { Store } from '../store/store';
import type { DiskRecord, FailoverRecord, MachineRecord, SiteRecord } from '../store/records';

/** A machine's name leaves room for "-disk63" in its disk ids, which peers limit to nameLengthMax. */
export const machineNameLengthMax = nameLengthMax - '-disk'.length - String(disksPerMachineMax - 1).length;

/** Where a failover to a site lands when the machine has no disk there yet: beside the replicas, never on them. */
export function recoveredDiskPath(datastore: string, diskId: string): string {
  return path.posix.join(datastore, 'recovered', `${diskId}.img`);
}

export function replicaDiskPath(datastore: string, diskId: string): string {
  return path.posix.join(datastore, `${diskId}.img`);
}

/**
 * The machine with its two sites and direction. Records enabled before sites
 * existed have only the flat fields, which then describe the forward
 * direction: home is the source (agent, process server, disks), recovery the
 * target (master target, datastore, replicas). A machine never enabled has
 * neither yet.
 */
export function withSites(record: MachineRecord): MachineRecord & { home: SiteRecord; recovery: SiteRecord; direction: 'FORWARD' | 'REVERSE' } {
  const home: SiteRecord = record.home ?? {
    agentId: record.agentId,
    processServerId: record.processServerId,
    masterTargetId: '',
    datastore: '',
    diskPaths: record.disks.map((disk) => disk.sourcePath),
    replicaPaths: [],
  };
  const recovery: SiteRecord = record.recovery ?? {
    agentId: '',
    processServerId: '',
    masterTargetId: record.masterTargetId,
    datastore: record.datastore,
    diskPaths: record.disks.map((disk) => (record.datastore ? recoveredDiskPath(record.datastore, disk.diskId) : '')),
    replicaPaths: record.disks.map((disk) => disk.replicaPath),
  };
  return { ...record, home, recovery, direction: record.direction ?? 'FORWARD' };
}

export class Machines {
  constructor(
    private readonly store: Store,
    private readonly servers: Servers,
    private readonly peers: Peers,
    private readonly log: Logger,
  ) {}

  async add(request: { name: string; agent: string; disks: { sourcePath: string }[] }): Promise<MachineRecord> {
    checkName('name', request.name, machineNameLengthMax);
    if (!request.agent) throw invalidArgument('agent: required (the name or id of the agent that runs on the machine; drctl servers --kind agent lists them)');
    if (request.disks.length === 0) throw invalidArgument('disks: at least one disk is required');
    if (request.disks.length > disksPerMachineMax) throw limitExceeded(`disks: a machine has at most ${disksPerMachineMax} disks, got ${request.disks.length}`);
    const paths = request.disks.map((disk) => disk.sourcePath);
    for (const [index, sourcePath] of paths.entries()) {
      if (!sourcePath) throw invalidArgument(`disks[${index}].source_path: required`);
      if (sourcePath.length > pathLengthMax) throw invalidArgument(`disks[${index}].source_path: at most ${pathLengthMax} characters`);
      if (paths.indexOf(sourcePath) !== index) throw invalidArgument(`disks: ${sourcePath} is listed twice`);
    }
    this.refuseDuplicateName(request.name);
    const agent = this.servers.resolve('AGENT', request.agent, 'start the agent on the machine with --configuration-server and --passphrase-file so it registers, then add the machine (drctl servers --kind agent lists the registered agents)');
    this.refuseDisksInUse(agent.serverId, paths);

    // The agent refuses a path it is not configured to read; its message says so.
    let described: DescribeDisksResponse__Output;
    try {
      const client = this.peers.agent(agent);
      described = await unary(client, client.describeDisks, { paths });
    } catch (error) {
      throw fromServiceError(error, peerName(agent));
    }
    const disks: DiskRecord[] = paths.map((sourcePath, index) => {
      const found = described.disks.find((disk) => disk.path === sourcePath);
      if (!found) throw new DrplaneError(ErrorCode.Internal, `${peerName(agent)} did not describe ${sourcePath}`);
      const diskBytes = Number(found.diskBytes);
      if (diskBytes <= 0) throw invalidArgument(`${sourcePath} is empty on ${peerName(agent)}`);
      if (diskBytes > diskBytesMax) throw limitExceeded(`${sourcePath} has ${diskBytes} bytes; drplane replicates disks of at most ${diskBytesMax} bytes`);
      if (diskBytes % blockBytes !== 0) throw invalidArgument(`${sourcePath} has ${diskBytes} bytes, not a whole number of ${blockBytes}-byte blocks: drplane replicates whole blocks`);
      return { diskId: `${request.name}-disk${index}`, sourcePath, diskBytes, epoch: 0, replicaPath: '', latestRecoveryPointId: '' };
    });

    const record = this.store.write(() => {
      // Checked again inside the transaction: another AddMachine may have won the race while we asked the agent.
      this.refuseDuplicateName(request.name);
      this.refuseDisksInUse(agent.serverId, paths);
      const machine: MachineRecord = {
        machineId: `machine-${this.store.next('machine')}`,
        name: request.name,
        agentId: agent.serverId,
        state: 'UNPROTECTED',
        stateReason: '',
        disks,
        processServerId: '',
        masterTargetId: '',
        datastore: '',
        createdTimeMs: Date.now(),
        activeJobId: '',
      };
      this.store.machines.putSync(machine.machineId, machine);
      return machine;
    });
    this.log.info({ machineId: record.machineId, name: record.name, agentId: record.agentId, disks: record.disks.map((disk) => disk.diskId) }, 'machine added');
    return record;
  }

  /** By id or name; NOT_FOUND otherwise. */
  get(idOrName: string): MachineRecord {
    if (!idOrName) throw invalidArgument('machine: required (a name or id; drctl machines lists them)');
    const record = this.store.machines.get(idOrName) ?? this.findByName(idOrName);
    if (!record) throw notFound(`no machine named ${JSON.stringify(idOrName)}: drctl machines lists them, drctl machine add adds one`);
    return record;
  }

  list(): MachineRecord[] {
    return [...this.store.machines.getRange().map(({ value }) => value)].sort((a, b) => a.createdTimeMs - b.createdTimeMs);
  }

  /** The machine that owns a disk, and the disk. */
  findDisk(diskId: string): { machine: MachineRecord; disk: DiskRecord } {
    for (const { value } of this.store.machines.getRange()) {
      const disk = value.disks.find((candidate) => candidate.diskId === diskId);
      if (disk) return { machine: value, disk };
    }
    throw notFound(`no machine has a disk ${JSON.stringify(diskId)}: drctl machines lists them`);
  }

  /** Writes a machine; call inside store.write(). */
  put(record: MachineRecord): void {
    this.store.machines.putSync(record.machineId, record);
  }

  /** Reads the current record inside a transaction (the caller's copy may be stale). */
  current(machineId: string): MachineRecord {
    const record = this.store.machines.get(machineId);
    if (!record) throw notFound(`machine ${machineId} no longer exists`);
    return record;
  }

  /**
   * Issues a disk of the machine a new epoch above its own and `floor` (the
   * master target's, or 0), writes it and returns it; call inside store.write().
   * The caller keeps it in its job, on disk before the master target hears of
   * it: a restart reuses it, and no two owners can ever share an epoch.
   */
  issueEpoch(machineId: string, diskId: string, floor: number): number {
    const machine = this.current(machineId);
    const owned = machine.disks.find((candidate) => candidate.diskId === diskId);
    if (!owned) throw failedPrecondition(`disk ${diskId} is no longer part of machine ${machine.name}`);
    owned.epoch = Math.max(owned.epoch, floor) + 1;
    this.put(machine);
    return owned.epoch;
  }

  toProto(stored: MachineRecord): Machine {
    const record = stored.state === 'UNPROTECTED' && !stored.home ? stored : withSites(stored);
    return {
      machineId: record.machineId,
      name: record.name,
      agentId: record.agentId,
      state: record.state,
      disks: record.disks.map((disk) => ({ ...disk })),
      processServerId: record.processServerId,
      masterTargetId: record.masterTargetId,
      datastore: record.datastore,
      stateReason: record.stateReason,
      createdTimeMs: record.createdTimeMs,
      policyId: record.policyId ?? '',
      captureMode: record.captureMode ?? 'CAPTURE_MODE_UNSPECIFIED',
      groupId: record.groupId ?? '',
      direction: record.direction ?? (record.state === 'UNPROTECTED' ? 'DIRECTION_UNSPECIFIED' : 'FORWARD'),
      home: record.home ? siteToProto(record.home) : null,
      recovery: record.recovery ? siteToProto(record.recovery) : null,
      failover: record.failover ? failoverToProto(record.failover) : null,
      testFailover: record.testFailover ? failoverToProto(record.testFailover) : null,
      restartableJobId: record.restartableJobId ?? '',
    };
  }

  private findByName(name: string): MachineRecord | undefined {
    for (const { value } of this.store.machines.getRange()) if (value.name === name) return value;
    return undefined;
  }

  private refuseDuplicateName(name: string): void {
    const existing = this.findByName(name);
    if (existing) throw new DrplaneError(ErrorCode.AlreadyExists, `a machine named ${name} already exists (${existing.machineId}): choose another name`);
  }

  private refuseDisksInUse(agentId: string, paths: string[]): void {
    for (const { value } of this.store.machines.getRange()) {
      if (value.agentId !== agentId) continue;
      const shared = value.disks.find((disk) => paths.includes(disk.sourcePath));
      if (shared) throw new DrplaneError(ErrorCode.AlreadyExists, `${shared.sourcePath} of this agent already belongs to machine ${value.name} (${shared.diskId})`);
    }
  }
}

function siteToProto(site: SiteRecord): MachineSite {
  return { ...site, diskPaths: [...site.diskPaths], replicaPaths: [...site.replicaPaths] };
}

function failoverToProto(failover: FailoverRecord): FailoverState {
  const selector = (failover.selector || 'POINT_SELECTOR_UNSPECIFIED') as FailoverState['selector'];
  const { noStart: _noStart, ...fields } = failover;
  return { ...fields, selector, recoveryPointIds: [...failover.recoveryPointIds], diskPaths: [...failover.diskPaths] };
}

/** The bytes of all the disks (a step's bytes to do). */
export function totalBytes(disks: { diskBytes: number }[]): number {
  return disks.reduce((sum, disk) => sum + disk.diskBytes, 0);
}
/**
 * A machine whose disks have replication sessions in its current direction
 * (or are getting them). Not from a failover on: its sessions are stopped
 * and fenced, and after a commit its flat fields name the other site, where
 * nothing replicates until a reprotect.
 */
export function replicating(machine: MachineRecord): boolean {
  return Boolean(machine.processServerId) && (machine.state === 'PROTECTED' || machine.state === 'INITIAL_SYNC' || machine.state === 'RESYNC_REQUIRED' || machine.state === 'REPROTECTING');
}
