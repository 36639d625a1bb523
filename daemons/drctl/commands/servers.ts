// drctl servers [--kind ps|mt|agent]: the registered servers and their health.
import { Option, type Command } from 'commander';
import type { ServerKind } from '../../../generated/drplane/v1/ServerKind';
import { context } from '../client';
import { formatAge, print, table } from '../output';

const kinds: Record<string, ServerKind> = { ps: 'PROCESS_SERVER', mt: 'MASTER_TARGET', agent: 'AGENT' };
const labels: Record<string, string> = { PROCESS_SERVER: 'ps', MASTER_TARGET: 'mt', AGENT: 'agent' };

export function register(program: Command): void {
  program
    .command('servers')
    .description('list the registered process servers, master targets and agents')
    .addOption(new Option('--kind <kind>', 'only this kind').choices(Object.keys(kinds)))
    .action(async (options: { kind?: string }, command: Command) => {
      const ctx = context(command);
      const response = await ctx.call(ctx.client.listServers, { kind: options.kind ? kinds[options.kind] : 'SERVER_KIND_UNSPECIFIED' });
      print(ctx, response, () => {
        if (response.servers.length === 0) return 'no servers registered';
        const now = Date.now();
        return table(
          ['ID', 'KIND', 'NAME', 'ADDRESS', 'VERSION', 'HEALTHY', 'LAST HEARTBEAT'],
          response.servers.map((server) => [server.serverId, labels[server.kind] ?? server.kind, server.name, server.address, server.version, server.healthy ? 'yes' : 'NO', formatAge(server.lastHeartbeatTimeMs, now)]),
        );
      });
    });
}
