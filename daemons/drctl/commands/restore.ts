// drctl restore FILE --data-dir DIR: put a backup (drctl backup) in place as
// the configuration server's database. Offline: refused while a configuration
// server answers at --server or has DIR's database open.
import * as grpc from '@grpc/grpc-js';
import type { Command } from 'commander';
import { DrplaneError, isServiceError, toServiceError } from '../../../shared/errors';
import { restoreDatabase } from '../../configuration-server/store/backup';
import { context, DrctlError } from '../client';
import { OperationProgress } from '../operation-progress';
import { formatBytes, print } from '../output';

/** How long the configuration server at --server may take to answer before we count it as stopped. */
const serverProbeTimeoutMs = 2_000;

export function register(program: Command): void {
  program
    .command('restore')
    .description("put a backup in place as the configuration server's database (the server must be stopped; the current database is kept beside it)")
    .argument('<file>', 'a backup written by drctl backup')
    .requiredOption('--data-dir <dir>', "the configuration server's data directory (its --data-dir, e.g. data/configuration-server)")
    .action(async (file: string, options: { dataDir: string }, command: Command) => {
      const ctx = context(command);
      // A running server would not see the new file, and its next commit would write over it.
      try {
        await ctx.call(ctx.client.listServers, {}, { timeoutMs: serverProbeTimeoutMs });
        throw new DrctlError('FAILED_PRECONDITION', `a configuration server answers at ${ctx.server}: stop the service first (systemctl stop drplane-configuration-server, or Ctrl-C npm start), then restore; it would not see a database replaced under it`);
      } catch (error) {
        if (error instanceof DrctlError) throw error;
        const code = isServiceError(error) ? error.code : undefined;
        if (code !== grpc.status.UNAVAILABLE && code !== grpc.status.DEADLINE_EXCEEDED) {
          throw new DrctlError('FAILED_PRECONDITION', `something answers at ${ctx.server} (${isServiceError(error) ? error.details : String(error)}): stop the configuration server first, then restore`);
        }
      }
      let result;
      const progress = new OperationProgress(ctx, 'restore');
      try {
        // Synchronous: the bar is drawn from the copy's callbacks (cli-progress redraws within update, at most every 200 ms).
        result = restoreDatabase(file, options.dataDir, Date.now(), (step, bytesDone, bytesTotal) => progress.update(bytesDone, bytesTotal, step === 'copy' ? `copying ${file}` : 'checking the copy'));
        progress.finish(`in place as ${result.databaseFile}`);
      } catch (error) {
        progress.abandon();
        if (error instanceof DrplaneError) throw new DrctlError(grpc.status[toServiceError(error).code] ?? 'INTERNAL', error.message);
        throw error;
      }
      const { summary } = result;
      print(ctx, result, () =>
        [
          `restored ${file} as ${result.databaseFile} (${formatBytes(result.totalBytes)}; configuration server ${summary.configurationServerId}, ${summary.machines} machines, ${summary.servers} servers, ${summary.jobs} jobs)`,
          result.previousFile ? `the database it replaced is kept as ${result.previousFile}` : 'there was no database there before',
          '',
          'next: start the configuration server again (same --data-dir and address). Process servers, master targets and agents register again by themselves;',
          'jobs that were running when the backup was taken resume; whatever changed after the backup (machines, plans, jobs) is not in it.',
        ].join('\n'),
      );
    });
}
