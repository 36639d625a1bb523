// The agent (mobility service) on a protected machine: reads the configured
// source disks for process servers and captures their changes. Wiring only;
// the domain is in agent.ts, captures.ts and the files they name.
import os from 'node:os';
import { z } from 'zod';
import { runDaemon } from '../../shared/daemon';
import { commonConfig, configurationServerLink } from '../../shared/config';
import { HashPool } from '../../shared/hash-pool';
import { initHashing } from '../../shared/hashing';
import { checkConfiguredLimit, extentBytesMax, heldBytesMax, hookTimeoutMaxMs, pathLengthMax } from '../../shared/limits';
import { v1 } from '../../shared/proto';
import { Agent } from './agent';
import { SourceDisks } from './disks';
import { Hooks, hookNames, type HookCommands } from './hooks';

/** A hook is a shell command (run with /bin/sh -c); only the agent's own configuration sets one. */
const hookCommand = z.string().min(1).max(pathLengthMax);

const schema = commonConfig.extend({
  /** The only paths this agent reads (image files or block devices). */
  disks: z.array(z.string().min(1).max(pathLengthMax)).min(1, 'at least one disk is required (--disk PATH)'),
  /** Worker threads that hash disks (default: min(cores, 4)). */
  hashThreads: z.coerce.number().int().min(1).max(64).optional(),
  configurationServer: configurationServerLink.optional(),
  /** Bytes of change records held per capture until acknowledged; past it a capture overflows (resync). */
  heldBytesMax: z.coerce.number().default(heldBytesMax),
  /** Freeze, thaw and snapshot hooks: shell commands with DRPLANE_DISKS, DRPLANE_TAG (and DRPLANE_SNAPSHOT) in their environment. */
  hooks: z.object({ freeze: hookCommand, thaw: hookCommand, snapshotCreate: hookCommand, snapshotRelease: hookCommand }).partial().strict().default({}),
  /** The same hooks from flags (--freeze-hook ...); a flag wins over the file. */
  freezeHook: hookCommand.optional(),
  thawHook: hookCommand.optional(),
  snapshotCreateHook: hookCommand.optional(),
  snapshotReleaseHook: hookCommand.optional(),
  /** A hook still running after this long is killed and counts as failed. */
  hookTimeoutMs: z.coerce.number().default(hookTimeoutMaxMs),
});

const usage = `Usage: agent --disk PATH [--disk PATH...] [options]
  --name NAME                 default: the host name
  --data-dir DIR              default ./data/agent
  --listen HOST:PORT          default 127.0.0.1:7103
  --advertise HOST:PORT       address peers use (default: listen)
  --disk PATH                 a source disk this agent may read (repeat for more)
  --hash-threads N            worker threads that hash disks (default min(cores, 4))
  --held-bytes-max BYTES      change records held per capture, ${extentBytesMax} to ${heldBytesMax} (default ${heldBytesMax})
  --freeze-hook COMMAND       run before an app-consistent marker (e.g. fsfreeze -f /data)
  --thaw-hook COMMAND         run after it, and after a failed freeze
  --snapshot-create-hook COMMAND   scan capture: prints the path of a snapshot of $DRPLANE_DISKS to read a pass from
  --snapshot-release-hook COMMAND  removes the snapshot at $DRPLANE_SNAPSHOT
  --hook-timeout-ms MS        a hook running longer is killed (default and most ${hookTimeoutMaxMs})
  --configuration-server HOST:PORT  register with it (needs --passphrase or --passphrase-file)
  --config FILE               JSON with the same keys (disks: [..], hashThreads, heldBytesMax,
                              hooks: {freeze, thaw, snapshotCreate, snapshotRelease}, hookTimeoutMs)
`;

void runDaemon({
  name: 'agent',
  registerAs: 'AGENT',
  schema,
  usage,
  flags: {
    disk: { type: 'string', multiple: true, key: 'disks' },
    'hash-threads': { type: 'string' },
    'held-bytes-max': { type: 'string' },
    'freeze-hook': { type: 'string' },
    'thaw-hook': { type: 'string' },
    'snapshot-create-hook': { type: 'string' },
    'snapshot-release-hook': { type: 'string' },
    'hook-timeout-ms': { type: 'string' },
  },
  // The agent stands for its protected machine: by default it is named after the host.
  defaults: { name: os.hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 128) || 'agent', listen: '127.0.0.1:7103', dataDir: './data/agent', disks: [] },
  async create({ config, log }) {
    await initHashing();
    const configuredHeldBytesMax = checkConfiguredLimit('heldBytesMax', config.heldBytesMax, heldBytesMax, extentBytesMax);
    const hookTimeoutMs = checkConfiguredLimit('hookTimeoutMs', config.hookTimeoutMs, hookTimeoutMaxMs, 100);
    const fromFlags: HookCommands = { freeze: config.freezeHook, thaw: config.thawHook, snapshotCreate: config.snapshotCreateHook, snapshotRelease: config.snapshotReleaseHook };
    const commands: HookCommands = Object.fromEntries(hookNames.map((name) => [name, fromFlags[name] ?? config.hooks[name]]).filter(([, command]) => command));
    const hooks = new Hooks(commands, hookTimeoutMs, log);
    const pool = new HashPool(config.hashThreads);
    const agent = new Agent(config.name, new SourceDisks(config.disks), pool, log, { heldBytesMax: configuredHeldBytesMax, hooks });
    // Before the server's graceful shutdown, which would otherwise wait for the long-lived streams.
    for (const signal of ['SIGTERM', 'SIGINT'] as const) process.once(signal, () => agent.shutdown());
    return {
      services: [{ definition: v1.Agent.service, implementation: agent.handlers(), name: 'drplane.v1.Agent' }],
      started() {
        log.info({ disks: agent.disks.paths, hashThreads: pool.threads, heldBytesMax: configuredHeldBytesMax, hooks: hooks.names, hookTimeoutMs }, 'serving disks');
      },
      async stop() {
        await agent.close();
        await pool.close();
      },
    };
  },
});
