// drctl backup FILE: a consistent copy of the configuration server's database,
// taken while it runs. Written to FILE.tmp, fsynced and renamed, so FILE is
// whole or absent.
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import * as grpc from '@grpc/grpc-js';
import type { BackupChunk__Output } from '../../../generated/drplane/v1/BackupChunk';
import { context, DrctlError } from '../client';
import { OperationProgress } from '../operation-progress';
import { formatBytes, formatTime, print } from '../output';

/** The database is at most 1 GiB (storeMapBytes); streaming it on loopback or a LAN takes far less. */
const backupCallTimeoutMs = 10 * 60_000;

export function register(program: Command): void {
  program
    .command('backup')
    .description("copy the configuration server's database, while it runs, to FILE (drctl restore puts it back)")
    .argument('<file>', 'where to write the copy (replaced if it exists)')
    .action(async (file: string, _options: unknown, command: Command) => {
      const ctx = context(command);
      const target = path.resolve(file);
      const temporary = `${target}.tmp`;
      let fd: number;
      try {
        fd = fs.openSync(temporary, 'w', 0o600);
      } catch (error) {
        throw new DrctlError('INVALID_ARGUMENT', `cannot write ${temporary}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
      }
      let received = 0;
      let header: BackupChunk__Output | undefined;
      const progress = new OperationProgress(ctx, 'backup');
      try {
        await new Promise<void>((resolve, reject) => {
          const call = ctx.client.backup({}, { deadline: Date.now() + backupCallTimeoutMs });
          call.on('data', (chunk: BackupChunk__Output) => {
            header ??= chunk;
            try {
              fs.writeSync(fd, chunk.data);
            } catch (error) {
              call.cancel();
              reject(new DrctlError('INTERNAL', `cannot write ${temporary}: ${(error as Error).message}`));
              return;
            }
            received += chunk.data.length;
            progress.update(received, Number(header.totalBytes), `to ${temporary}`);
          });
          call.on('error', (error: grpc.ServiceError) => reject(error));
          call.on('end', () => resolve());
        });
        const expected = Number(header?.totalBytes ?? 0);
        if (!header || received !== expected) throw new DrctlError('DATA_LOSS', `the backup stream ended after ${received} of ${expected} bytes: take the backup again`);
        fs.fsyncSync(fd);
        fs.closeSync(fd);
        fs.renameSync(temporary, target);
        const dir = fs.openSync(path.dirname(target), 'r');
        fs.fsyncSync(dir);
        fs.closeSync(dir);
        progress.finish(`written to ${target}`);
      } catch (error) {
        progress.abandon();
        try {
          fs.closeSync(fd);
        } catch {
          // closed already
        }
        fs.rmSync(temporary, { force: true });
        throw error;
      }
      const timeMs = Number(header.timeMs);
      print(ctx, { file: target, totalBytes: received, timeMs }, () => `wrote a backup of the configuration server at ${ctx.server} to ${target}: ${formatBytes(received)}, taken at ${formatTime(timeMs)}\n\nto restore it: stop the configuration server, then drctl restore ${target} --data-dir DIR`);
    });
}
