// drctl job watch ID: follow a job until it ends (exit 1 if it fails).
// With --json, every update is printed as one JSON line.
import type { Command } from 'commander';
import { context } from '../client';
import { failUnlessSucceeded, summary, watchJob } from '../watch';

export function register(job: Command): void {
  job
    .command('watch')
    .description('follow a job until it ends')
    .argument('<id>', 'job id')
    .action(async (jobId: string, _options: unknown, command: Command) => {
      const ctx = context(command);
      const final = await watchJob(ctx, jobId, { eachAsJson: ctx.json });
      if (!ctx.json) process.stdout.write(`${summary(final)}\n`);
      failUnlessSucceeded(final);
    });
}
