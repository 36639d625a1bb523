// drctl events [--machine NAME] [--all] [--limit N]: health events, newest
// first; only the active ones unless --all.
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { context } from '../client';
import { print } from '../output';
import { eventsTable } from './status';

function parseLimit(text: string): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) throw new InvalidArgumentError('must be a positive integer');
  return value;
}

export function register(program: Command): void {
  program
    .command('events')
    .description('list health events, newest first (only the active ones unless --all)')
    .option('--machine <name>', 'only the events of this machine')
    .option('--all', 'cleared events too')
    .option('--limit <n>', 'at most this many (default 100)', parseLimit)
    .action(async (options: { machine?: string; all?: boolean; limit?: number }, command: Command) => {
      const ctx = context(command);
      const response = await ctx.call(ctx.client.listHealthEvents, { machine: options.machine ?? '', activeOnly: !options.all, limit: options.limit ?? 0 });
      print(ctx, response, () => {
        if (response.events.length === 0) return options.all ? 'no health events' : 'no active health events (drctl events --all shows the cleared ones too)';
        return eventsTable(response.events);
      });
    });
}
