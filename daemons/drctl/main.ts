#!/usr/bin/env node
// drctl: the operators' command line. Every command is one file under commands/.
import { Command, Option } from 'commander';
import { version } from '../../shared/daemon';
import { closeContext, defaultServerAddress, describeError } from './client';
import * as enable from './commands/enable';
import * as jobShow from './commands/job-show';
import * as jobWatch from './commands/job-watch';
import * as jobs from './commands/jobs';
import * as machineAdd from './commands/machine-add';
import * as machineShow from './commands/machine-show';
import * as machines from './commands/machines';
import * as materialise from './commands/materialise';
import * as points from './commands/points';
import * as resync from './commands/resync';
import * as servers from './commands/servers';

const program = new Command('drctl')
  .description('drplane control: servers, machines, replication jobs and recovery points')
  .version(version)
  .addOption(new Option('--server <host:port>', 'the configuration server').env('DRPLANE_SERVER').default(defaultServerAddress))
  .option('--json', 'machine-readable output (JSON)')
  .showHelpAfterError('(drctl --help lists the commands)');

servers.register(program);
const machine = program.command('machine').description('add or show a machine');
machineAdd.register(machine);
machineShow.register(machine);
machines.register(program);
enable.register(program);
resync.register(program);
jobs.register(program);
const job = program.command('job').description('show or follow a job');
jobShow.register(job);
jobWatch.register(job);
points.register(program);
materialise.register(program);

program
  .parseAsync(process.argv)
  .then(() => {
    closeContext();
  })
  .catch((error: unknown) => {
    const options = program.opts<{ server: string }>();
    process.stderr.write(`${describeError(error, options.server)}\n`);
    closeContext();
    process.exitCode = 1;
  });
