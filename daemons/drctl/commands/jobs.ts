// drctl jobs [--machine NAME]: jobs, oldest first.
import type { Command } from 'commander';
import { context } from '../client';
import { formatDuration, formatTime, print, shortState, table } from '../output';

export function register(program: Command): void {
  program
    .command('jobs')
    .description('list the jobs')
    .option('--machine <name>', 'only the jobs of this machine')
    .action(async (options: { machine?: string }, command: Command) => {
      const ctx = context(command);
      const [response, machines] = await Promise.all([ctx.call(ctx.client.listJobs, { machine: options.machine ?? '' }), ctx.call(ctx.client.listMachines, {})]);
      const names = new Map(machines.machines.map((machine) => [machine.machineId, machine.name]));
      print(ctx, response, () => {
        if (response.jobs.length === 0) return 'no jobs';
        return table(
          ['ID', 'KIND', 'MACHINE', 'STATE', 'PROGRESS', 'CREATED', 'DURATION', 'ERROR'],
          response.jobs.map((job) => [
            job.jobId,
            job.kind,
            names.get(job.machineId) ?? job.machineId,
            shortState(job.state),
            `${job.percent.toFixed(1)}%`,
            formatTime(job.createdTimeMs),
            job.endedTimeMs ? formatDuration(job.endedTimeMs - job.createdTimeMs) : '-',
            job.error,
          ]),
        );
      });
    });
}
