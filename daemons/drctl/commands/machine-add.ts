// drctl machine add NAME --agent AGENT --disk PATH [--disk PATH...]
import type { Command } from 'commander';
import { context } from '../client';
import { print } from '../output';
import { renderMachine } from './machine-show';

export function register(machine: Command): void {
  machine
    .command('add')
    .description('add a machine to protect: the agent that runs on it and its disks')
    .argument('<name>', 'name of the machine (letters, digits, dot, dash, underscore)')
    .requiredOption('--agent <agent>', 'the registered agent (name or id) that runs on the machine')
    .requiredOption('--disk <path>', 'a source disk (image file or block device); repeat for each disk', (value: string, previous: string[]) => [...previous, value], [] as string[])
    .action(async (name: string, options: { agent: string; disk: string[] }, command: Command) => {
      const ctx = context(command);
      const added = await ctx.call(ctx.client.addMachine, { name, agent: options.agent, disks: options.disk.map((sourcePath) => ({ sourcePath })) });
      print(ctx, added, () => `added machine ${added.name} (${added.machineId})\n${renderMachine(added)}\n\nnext: drctl enable ${added.name} --datastore DIR`);
    });
}
