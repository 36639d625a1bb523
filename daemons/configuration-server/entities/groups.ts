// Replication groups: machines that share one master target and get common
// (group-consistent) points (workflows/group-points.ts takes them).
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument, notFound } from '../../../shared/errors';
import type { Logger } from '../../../shared/log';
import type { ReplicationGroup } from '../../../generated/drplane/v1/ReplicationGroup';
import type { GroupRecord, MachineRecord } from '../store/records';
import type { Store } from '../store/store';
import type { Machines } from './machines';
import { checkName, type Servers } from './servers';

export class Groups {
  constructor(
    private readonly store: Store,
    private readonly machines: Machines,
    private readonly servers: Servers,
    private readonly log: Logger,
  ) {}

  create(request: { name: string; machines: string[] }): GroupRecord {
    checkName('name', request.name);
    if (request.machines.length === 0) throw invalidArgument('machines: at least one machine is required');
    const members: MachineRecord[] = [];
    for (const idOrName of request.machines) {
      const machine = this.machines.get(idOrName);
      if (members.some((member) => member.machineId === machine.machineId)) throw invalidArgument(`machines: ${machine.name} is listed twice`);
      members.push(machine);
    }
    const record = this.store.write(() => {
      const existing = this.findByName(request.name);
      if (existing) throw new DrplaneError(ErrorCode.AlreadyExists, `a replication group named ${request.name} already exists (${existing.groupId}): choose another name`);
      // Read again inside the transaction: an enable or another group may have changed them.
      const current = members.map((member) => this.machines.current(member.machineId));
      for (const machine of current) {
        if (machine.groupId) {
          const other = this.store.groups.get(machine.groupId);
          throw failedPrecondition(`machine ${machine.name} already belongs to replication group ${other?.name ?? machine.groupId}: a machine is in one group only`);
        }
      }
      const scanned = current.filter((machine) => machine.captureMode === 'CAPTURE_SCAN');
      if (scanned.length) {
        throw failedPrecondition(`a replication group's common points hold every member's writes at a barrier, which needs write-through capture: ${scanned.map((machine) => machine.name).join(', ')} ${scanned.length === 1 ? 'is' : 'are'} captured by scan`);
      }
      const targets = new Set(current.map((machine) => machine.masterTargetId).filter(Boolean));
      if (targets.size > 1) {
        const where = current.filter((machine) => machine.masterTargetId).map((machine) => `${machine.name} replicates to ${this.serverName(machine.masterTargetId)}`);
        throw failedPrecondition(`a replication group shares one master target: ${where.join(', ')}`);
      }
      const group: GroupRecord = {
        groupId: `group-${this.store.next('group')}`,
        name: request.name,
        machineIds: current.map((machine) => machine.machineId),
        masterTargetId: [...targets][0] ?? '',
        latestGroupPointId: '',
        createdTimeMs: Date.now(),
      };
      this.store.groups.putSync(group.groupId, group);
      for (const machine of current) this.machines.put({ ...machine, groupId: group.groupId });
      return group;
    });
    this.log.info({ groupId: record.groupId, name: record.name, machines: members.map((machine) => machine.name), masterTargetId: record.masterTargetId }, 'replication group created');
    return record;
  }

  get(idOrName: string): GroupRecord {
    if (!idOrName) throw invalidArgument('group: required (a name or id; drctl groups lists them)');
    const record = this.store.groups.get(idOrName) ?? this.findByName(idOrName);
    if (!record) throw notFound(`no replication group named ${JSON.stringify(idOrName)}: drctl groups lists them`);
    return record;
  }

  list(): GroupRecord[] {
    return [...this.store.groups.getRange().map(({ value }) => value)].sort((a, b) => a.createdTimeMs - b.createdTimeMs);
  }

  toProto(record: GroupRecord): ReplicationGroup {
    return { ...record };
  }

  private findByName(name: string): GroupRecord | undefined {
    for (const { value } of this.store.groups.getRange()) if (value.name === name) return value;
    return undefined;
  }

  private serverName(serverId: string): string {
    const server = this.servers.get(serverId);
    return server ? `master target ${server.name}` : serverId;
  }
}
