// drctl enable NAME --datastore DIR [--policy P --capture scan|write-through
// --scan-interval 2s]: create the replicas and start continuous replication,
// as a job watched with a progress bar until the first recovery point (exit 1
// if it fails).
import { Option, type Command } from 'commander';
import type { CaptureMode } from '../../../generated/drplane/v1/CaptureMode';
import { context } from '../client';
import { parseDuration } from '../durations';
import { followStartedJob } from '../watch';

const captureModes: Record<string, CaptureMode> = { scan: 'CAPTURE_SCAN', 'write-through': 'CAPTURE_WRITE_THROUGH' };

export function register(program: Command): void {
  program
    .command('enable')
    .description('enable continuous replication of a machine: create its replica disks, start capturing changes, and wait for the first recovery point after the initial sync')
    .argument('<name>', 'name or id of the machine')
    .requiredOption('--datastore <dir>', 'directory on the master target for the replica disks (under one of its datastore roots)')
    .option('--process-server <server>', 'process server (name or id); default: the only one registered')
    .option('--master-target <server>', "master target (name or id); default: the machine's replication group's, or the only one registered")
    .option('--policy <policy>', 'policy (name or id): RPO threshold, retention, point frequencies (default: default)')
    .addOption(new Option('--capture <mode>', 'how the agent captures changes: scan (hash the disk every scan interval; any file or device) or write-through (writes go through the agent)').choices(Object.keys(captureModes)).default('scan'))
    .option('--scan-interval <duration>', "scan capture: time between passes, e.g. 2s (default: the agent's, 5s)", parseDuration)
    .option('--no-watch', 'return once the job is created')
    .action(async (name: string, options: { datastore: string; processServer?: string; masterTarget?: string; policy?: string; capture: string; scanInterval?: number; watch: boolean }, command: Command) => {
      const ctx = context(command);
      const job = await ctx.call(ctx.client.enableReplication, {
        machine: name,
        datastore: options.datastore,
        processServer: options.processServer ?? '',
        masterTarget: options.masterTarget ?? '',
        policy: options.policy ?? '',
        captureMode: captureModes[options.capture],
        scanIntervalMs: options.scanInterval ?? 0,
      });
      await followStartedJob(ctx, job, options.watch);
    });
}
