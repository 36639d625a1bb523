// drctl materialise POINT_ID PATH: write a disk as it was at a recovery point
// to a new file on its master target, with a progress bar (the replica copied,
// then the before-images written back) while the master target works.
import type { Command } from 'commander';
import { context } from '../client';
import { OperationProgress, whilePolling } from '../operation-progress';
import { formatBytes, print } from '../output';

/** How often drctl asks how far the materialisation has got. */
const materialiseProgressPollMs = 500;
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
      const progress = new OperationProgress(ctx, 'materialise');
      progress.update(0, 0, recoveryPointId.includes('@latest') && !recoveryPointId.includes('@latest-') ? 'draining the process server for the latest point' : 'starting');
      let response;
      try {
        response = await whilePolling(ctx.call(ctx.client.materialiseRecoveryPoint, { recoveryPointId, path }, { timeoutMs: materialiseCallTimeoutMs }), materialiseProgressPollMs, async (pending) => {
          const figures = await ctx.call(ctx.client.getMaterialiseProgress, { recoveryPointId, path }, { timeoutMs: materialiseProgressPollMs * 4 });
          if (!pending() || !figures.running || !Number(figures.diskBytes)) return;
          const writtenBack = Number(figures.beforeImageBytes);
          const copied = Number(figures.bytesCopied);
          const diskBytes = Number(figures.diskBytes);
          progress.update(copied, diskBytes, copied < diskBytes ? `copying the replica for ${figures.recoveryPointId}` : `writing back before-images: ${formatBytes(writtenBack)}`);
        });
      } catch (error) {
        progress.abandon();
        throw error;
      }
      progress.finish(`done, ${formatBytes(Number(response.beforeImageBytes))} written back from before-images`);
      print(ctx, response, () => `materialised ${response.recoveryPoint?.id ?? recoveryPointId} to ${response.path} on the master target at ${response.masterTargetAddress} (${formatBytes(response.beforeImageBytes)} written back from before-images)`);
    });
}
