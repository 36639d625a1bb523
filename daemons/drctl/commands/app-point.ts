// drctl app-point NAME [--tag T]: take an app-consistent point now (the agent
// runs the freeze hook, marks every disk, runs the thaw hook) and wait until the
// master target has applied it.
import type { Command } from 'commander';
import { context } from '../client';
import { print } from '../output';
import { pointsTable } from './points';

/** The server allows the agent 5 minutes (hooks and a scan pass) and the master target 1 more to apply the point. */
const appPointCallTimeoutMs = 7 * 60_000;

export function register(program: Command): void {
  program
    .command('app-point')
    .description("take an app-consistent point of a protected machine now (freeze hook, marker, thaw hook)")
    .argument('<name>', 'name or id of the machine')
    .option('--tag <tag>', 'tag of the point', '')
    .action(async (name: string, options: { tag: string }, command: Command) => {
      const ctx = context(command);
      const response = await ctx.call(ctx.client.takeAppConsistentPoint, { machine: name, tag: options.tag }, { timeoutMs: appPointCallTimeoutMs });
      print(ctx, response, () => `took an app-consistent point of ${name}\n\n${pointsTable(response.recoveryPoints)}`);
    });
}
