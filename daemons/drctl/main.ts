#!/usr/bin/env node
// drctl: the operators' command line. Every command is one file under commands/.
import { Command, Option } from 'commander';
import { version } from '../../shared/process';
import { closeContext, defaultProgressIntervalMs, defaultServerAddress, describeError } from './client';
import { parseDuration } from './durations';
import * as appPoint from './commands/app-point';
import * as backup from './commands/backup';
import * as changePoint from './commands/change-point';
import * as cleanup from './commands/cleanup';
import * as commit from './commands/commit';
import * as enable from './commands/enable';
import * as events from './commands/events';
import * as failback from './commands/failback';
import * as failover from './commands/failover';
import * as groupCreate from './commands/group-create';
import * as groupPoint from './commands/group-point';
import * as groupPoints from './commands/group-points';
import * as groups from './commands/groups';
import * as jobRestart from './commands/job-restart';
import * as jobShow from './commands/job-show';
import * as jobStop from './commands/job-stop';
import * as jobWatch from './commands/job-watch';
import * as jobs from './commands/jobs';
import * as machineAdd from './commands/machine-add';
import * as machineShow from './commands/machine-show';
import * as machines from './commands/machines';
import * as materialise from './commands/materialise';
import * as planCommit from './commands/plan-commit';
import * as planCreate from './commands/plan-create';
import * as planDelete from './commands/plan-delete';
import * as planFailover from './commands/plan-failover';
import * as planShow from './commands/plan-show';
import * as plans from './commands/plans';
import * as points from './commands/points';
import * as policies from './commands/policies';
import * as policyCreate from './commands/policy-create';
import * as policyDelete from './commands/policy-delete';
import * as policyShow from './commands/policy-show';
import * as policyUpdate from './commands/policy-update';
import * as reprotect from './commands/reprotect';
import * as restore from './commands/restore';
import * as pruneRetention from './commands/prune-retention';
import * as resync from './commands/resync';
import * as servers from './commands/servers';
import * as status from './commands/status';
import * as testFailover from './commands/test-failover';

const program = new Command('drctl')
  .description('drplane control: servers, machines, policies, replication jobs, groups, recovery points and health')
  .version(version)
  .addOption(new Option('--server <host:port>', 'the configuration server').env('DRPLANE_SERVER').default(defaultServerAddress))
  .option('--json', 'machine-readable output (JSON); drctl job watch --json streams one JSON event per line')
  .addOption(new Option('--progress-interval <duration>', 'when stderr is not a terminal (logs, CI): time between two progress lines of a long operation, e.g. 5s').env('DRPLANE_PROGRESS_INTERVAL').default(defaultProgressIntervalMs, '5s').argParser(parseDuration))
  .addOption(new Option('--ca-file <path>', 'mTLS: the deployment CA certificate (PEM) the server\'s certificate must be signed by').env('DRPLANE_CA_FILE'))
  .addOption(new Option('--cert-file <path>', 'mTLS: the operator\'s certificate (PEM), signed by the same CA').env('DRPLANE_CERT_FILE'))
  .addOption(new Option('--key-file <path>', 'mTLS: the private key of --cert-file (PEM)').env('DRPLANE_KEY_FILE'))
  .showHelpAfterError('(drctl --help lists the commands)');

status.register(program);
events.register(program);
servers.register(program);
const machine = program.command('machine').description('add or show a machine');
machineAdd.register(machine);
machineShow.register(machine);
machines.register(program);
enable.register(program);
resync.register(program);
jobs.register(program);
const job = program.command('job').description('show, follow, stop or restart a job');
jobShow.register(job);
jobWatch.register(job);
jobStop.register(job);
jobRestart.register(job);
const policy = program.command('policy').description('create, show, update or delete a policy');
policyCreate.register(policy);
policyShow.register(policy);
policyUpdate.register(policy);
policyDelete.register(policy);
policies.register(program);
const group = program.command('group').description('create a replication group, take or list its group-consistent points');
groupCreate.register(group);
groupPoint.register(group);
groupPoints.register(group);
groups.register(program);
points.register(program);
appPoint.register(program);
materialise.register(program);
failover.register(program);
changePoint.register(program);
commit.register(program);
testFailover.register(program);
cleanup.register(program);
reprotect.register(program);
failback.register(program);
const plan = program.command('plan').description('create, show or delete a recovery plan; fail it over or commit it');
planCreate.register(plan);
planShow.register(plan);
planDelete.register(plan);
planFailover.register(plan);
planCommit.register(plan);
plans.register(program);
backup.register(program);
restore.register(program);
pruneRetention.register(program);

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
