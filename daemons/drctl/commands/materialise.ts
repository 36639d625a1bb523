// drctl materialise POINT_ID PATH: write a disk as it was at a recovery point
// to a new file on its master target.
import type { Command } from 'commander';
import { context } from '../client';
import { formatBytes, print } from '../output';

/** The configuration server allows the master target an hour (materialiseTimeoutMs); we wait a little longer. */
const materialiseCallTimeoutMs = 61 * 60_000;

export function register(program: Command): void {
  program
    .command('materialise')
    .alias('materialize')
    .description('write the disk as it was at a recovery point to a new file on its master target')
    .argument(
      '<point>',
      'recovery point id (<disk_id>@<sequence>, from drctl points), or <disk_id>@SELECTOR: @latest (drain the process server first), @latest-processed, @latest-app-consistent, @latest-crash-consistent, or @<=TIME (the newest point at or before TIME: ISO 8601 or unix ms)',
    )
    .argument('<path>', 'new file on the master target, under one of its datastore roots')
    .action(async (recoveryPointId: string, path: string, _options: unknown, command: Command) => {
      const ctx = context(command);
      const response = await ctx.call(ctx.client.materialiseRecoveryPoint, { recoveryPointId, path }, { timeoutMs: materialiseCallTimeoutMs });
      print(ctx, response, () => `materialised ${response.recoveryPoint?.id ?? recoveryPointId} to ${response.path} on the master target at ${response.masterTargetAddress} (${formatBytes(response.beforeImageBytes)} written back from before-images)`);
    });
}
