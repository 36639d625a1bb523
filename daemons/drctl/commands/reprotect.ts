// drctl reprotect NAME [--agent A] [--process-server P] [--master-target M]
// [--datastore DIR] [--alternate-location] [--policy P], or --group G: after a
// commit, replicate from the site the machine runs on to the other one, as a
// job. To the original location only what differs is sent; to an alternate
// location everything.
import type { Command } from 'commander';
import { context, DrctlError } from '../client';
import { addWaitOptions, followJob } from './failover';

export function register(program: Command): void {
  addWaitOptions(
    program
      .command('reprotect')
      .description('after a commit, protect the machine from the site it runs on to the other site (original location: only what differs is sent; alternate location: everything)')
      .argument('[name]', 'name or id of the machine (or --group)')
      .option('--agent <agent>', 'the agent that reads the machine\'s disks where it runs now (default: the one known there)')
      .option('--process-server <server>', 'process server at the site the machine runs on (default: the one known there, or the only one registered)')
      .option('--master-target <server>', 'master target at the other site (default: the one known there, or the only one registered)')
      .option('--datastore <dir>', 'directory on that master target for the replicas (default: as before)')
      .option('--alternate-location', 'the machine\'s disks at the other site are gone: new disks under the datastore, and a full sync')
      .option('--policy <policy>', 'policy (default: the failback policy of its policy when reversing, its forward policy when protecting from home)')
      .option('--group <group>', 'reprotect every member of this replication group, with one master target'),
  ).action(async (name: string | undefined, options: { agent?: string; processServer?: string; masterTarget?: string; datastore?: string; alternateLocation?: boolean; policy?: string; group?: string; wait: boolean; watch: boolean }, command: Command) => {
    if (!name === !options.group) throw new DrctlError('INVALID_ARGUMENT', 'name a machine or --group GROUP (one of them)');
    const ctx = context(command);
    const job = await ctx.call(ctx.client.reprotect, {
      machine: name ?? '',
      group: options.group ?? '',
      agent: options.agent ?? '',
      processServer: options.processServer ?? '',
      masterTarget: options.masterTarget ?? '',
      datastore: options.datastore ?? '',
      location: options.alternateLocation ? 'ALTERNATE_LOCATION' : 'ORIGINAL_LOCATION',
      policy: options.policy ?? '',
    });
    await followJob(ctx, job, options);
  });
}
