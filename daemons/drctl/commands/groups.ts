// drctl groups: the replication groups, their machines and master target.
import type { Command } from 'commander';
import { context } from '../client';
import { print, table } from '../output';

export function register(program: Command): void {
  program
    .command('groups')
    .description('list the replication groups')
    .action(async (_options: unknown, command: Command) => {
      const ctx = context(command);
      const [response, machines, servers] = await Promise.all([ctx.call(ctx.client.listReplicationGroups, {}), ctx.call(ctx.client.listMachines, {}), ctx.call(ctx.client.listServers, { kind: 'MASTER_TARGET' })]);
      const machineNames = new Map(machines.machines.map((machine) => [machine.machineId, machine.name]));
      const serverNames = new Map(servers.servers.map((server) => [server.serverId, server.name]));
      print(ctx, response, () => {
        if (response.groups.length === 0) return 'no replication groups: drctl group create NAME --machine A --machine B makes one';
        return table(
          ['NAME', 'ID', 'MACHINES', 'MASTER TARGET', 'LATEST GROUP POINT'],
          response.groups.map((group) => [
            group.name,
            group.groupId,
            group.machineIds.map((machineId) => machineNames.get(machineId) ?? machineId).join(', '),
            group.masterTargetId ? (serverNames.get(group.masterTargetId) ?? group.masterTargetId) : '-',
            group.latestGroupPointId || '-',
          ]),
        );
      });
    });
}
