// drctl prune-retention --retention-dir DIR --keep-hours N: the way out when a
// master target cannot start because its retention volume is full. Offline, on
// the master target's host: refused while a process has the store open.
import * as grpc from '@grpc/grpc-js';
import path from 'node:path';
import type { Command } from 'commander';
import { DrplaneError, toServiceError } from '../../../shared/errors';
import { createLogger } from '../../../shared/log';
import { pruneOffline } from '../../master-target/offline-prune';
import { context, DrctlError } from '../client';
import { formatBytes, print } from '../output';

export function register(program: Command): void {
  program
    .command('prune-retention')
    .description("offline: delete a stopped master target's recovery points older than --keep-hours (each disk keeps its newest) and the before-images only they needed, then compact the store so the space returns to the volume")
    .option('--retention-dir <dir>', "the master target's retentionDir")
    .option('--data-dir <dir>', "the master target's dataDir, when retentionDir is not set (the store is then in <dataDir>/retention)")
    .requiredOption('--keep-hours <hours>', 'keep the points of the last HOURS hours (0: only the newest point of each disk)', (value: string) => {
      const hours = Number(value);
      if (!Number.isFinite(hours) || hours < 0) throw new DrctlError('INVALID_ARGUMENT', `--keep-hours must be a number of hours, 0 or more, got ${value}`);
      return hours;
    })
    .option('--compact-via <dir>', 'prune on this other volume (room for the store twice): the store is copied here, pruned, compacted and copied back, so a volume too full for any commit is only read')
    .action(async (options: { retentionDir?: string; dataDir?: string; keepHours: number; compactVia?: string }, command: Command) => {
      const ctx = context(command);
      if (!options.retentionDir === !options.dataDir) throw new DrctlError('INVALID_ARGUMENT', 'give exactly one of --retention-dir and --data-dir');
      const retentionDir = options.retentionDir ?? path.join(options.dataDir!, 'retention');
      let result;
      try {
        result = await pruneOffline({ retentionDir, keepMs: options.keepHours * 3_600_000, compactVia: options.compactVia, log: createLogger('drctl', 'warn') });
      } catch (error) {
        if (error instanceof DrplaneError) throw new DrctlError(grpc.status[toServiceError(error).code] ?? 'INTERNAL', error.message);
        throw error;
      }
      print(ctx, result, () =>
        result.resumed
          ? `finished an interrupted prune: the pruned store is back in ${path.resolve(retentionDir)} (${formatBytes(result.storeBytesAfter)}): start the master target; run prune-retention again to prune more`
          : [
              `pruned ${result.pointsPruned} recovery points and ${formatBytes(result.beforeImageBytesPruned)} of before-images of ${result.replicas} replicas`,
              `the store in ${path.resolve(retentionDir)} went from ${formatBytes(result.storeBytesBefore)} to ${formatBytes(result.storeBytesAfter)}: start the master target`,
            ].join('\n'),
      );
    });
}
