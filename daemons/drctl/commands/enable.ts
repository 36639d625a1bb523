// drctl enable NAME --datastore DIR: create the replicas and run the initial
// sync, as a job watched with a progress bar (exit 1 if it fails).
import type { Command } from 'commander';
import { context } from '../client';
import { followStartedJob } from '../watch';

export function register(program: Command): void {
  program
    .command('enable')
    .description('enable replication of a machine: create its replica disks and run the initial (full) sync')
    .argument('<name>', 'name or id of the machine')
    .requiredOption('--datastore <dir>', 'directory on the master target for the replica disks (under one of its datastore roots)')
    .option('--process-server <server>', 'process server (name or id); default: the only one registered')
    .option('--master-target <server>', 'master target (name or id); default: the only one registered')
    .option('--no-watch', 'return once the job is created')
    .action(async (name: string, options: { datastore: string; processServer?: string; masterTarget?: string; watch: boolean }, command: Command) => {
      const ctx = context(command);
      const job = await ctx.call(ctx.client.enableReplication, { machine: name, datastore: options.datastore, processServer: options.processServer ?? '', masterTarget: options.masterTarget ?? '' });
      await followStartedJob(ctx, job, options.watch);
    });
}
