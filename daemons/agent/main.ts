// The agent (mobility service) on a protected machine: reads the configured
// source disks for process servers and captures their changes, and shuts them
// down as a source for a planned failover. Wiring only; the domain is in
// agent.ts, captures.ts, shutdown-source.ts and the files they name.
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
import { ShutDownDisks } from './shutdown-source';

/** A hook is a shell command (run with /bin/sh -c); only the agent's own configuration sets one. */
const hookCommand = z.string().min(1).max(pathLengthMax);

const schema = commonConfig.extend({
  /** Paths this agent reads and writes (image files or block devices). */
  disks: z.array(z.string().min(1).max(pathLengthMax)).default([]),
  /** Directories under which any image file or block device may be read and written too (e.g. a datastore's recovered/ folder). */
  diskRoots: z.array(z.string().min(1).max(pathLengthMax)).default([]),
  /** Worker threads that hash disks (default: min(cores, 4)). */
  hashThreads: z.coerce.number().int().min(1).max(64).optional(),
  configurationServer: configurationServerLink.optional(),
  /** Bytes of change records held per capture until acknowledged; past it a capture overflows (resync). */
  heldBytesMax: z.coerce.number().default(heldBytesMax),
  /** Freeze, thaw and snapshot hooks: shell commands with DRPLANE_DISKS, DRPLANE_TAG (and DRPLANE_SNAPSHOT) in their environment. */
  hooks: z.object({ freeze: hookCommand, thaw: hookCommand, snapshotCreate: hookCommand, snapshotRelease: hookCommand, shutdown: hookCommand }).partial().strict().default({}),
  /** The same hooks from flags (--freeze-hook ...); a flag wins over the file. */
  freezeHook: hookCommand.optional(),
  thawHook: hookCommand.optional(),
  snapshotCreateHook: hookCommand.optional(),
  snapshotReleaseHook: hookCommand.optional(),
  shutdownHook: hookCommand.optional(),
  /** A hook still running after this long is killed and counts as failed. */
  hookTimeoutMs: z.coerce.number().default(hookTimeoutMaxMs),
}).refine((config) => config.disks.length > 0 || config.diskRoots.length > 0, { message: 'at least one disk is required (--disk PATH, or --disk-root DIR)', path: ['disks'] });

const usage = `Usage: agent (--disk PATH | --disk-root DIR)... [options]
  --name NAME                 default: the host name
  --data-dir DIR              default ./data/agent
  --listen HOST:PORT          default 127.0.0.1:7103
  --advertise HOST:PORT       address peers use (default: listen)
  --disk PATH                 a source disk this agent may read (repeat for more)
  --disk-root DIR             any image file or block device under DIR may be read too, even one
                              created later (repeat for more; symlinks must not lead outside DIR)
  --hash-threads N            worker threads that hash disks (default min(cores, 4))
  --held-bytes-max BYTES      change records held per capture, ${extentBytesMax} to ${heldBytesMax} (default ${heldBytesMax})
  --freeze-hook COMMAND       run before an app-consistent marker (e.g. fsfreeze -f /data)
  --thaw-hook COMMAND         run after it, and after a failed freeze
  --snapshot-create-hook COMMAND   scan capture: prints the path of a snapshot of $DRPLANE_DISKS to read a pass from
  --snapshot-release-hook COMMAND  removes the snapshot at $DRPLANE_SNAPSHOT
  --shutdown-hook COMMAND     planned failover (ShutdownSource): stops machine $DRPLANE_MACHINE
                              whose disks are $DRPLANE_DISKS; a failure shuts nothing down
  --hook-timeout-ms MS        a hook running longer is killed (default and most ${hookTimeoutMaxMs})
  --configuration-server HOST:PORT  register with it (needs --passphrase or --passphrase-file)
  --config FILE               JSON with the same keys (disks: [..], diskRoots: [..], hashThreads, heldBytesMax,
                              hooks: {freeze, thaw, snapshotCreate, snapshotRelease, shutdown}, hookTimeoutMs)
`;

void runDaemon({
  name: 'agent',
  registerAs: 'AGENT',
  schema,
  usage,
  flags: {
    disk: { type: 'string', multiple: true, key: 'disks' },
    'disk-root': { type: 'string', multiple: true, key: 'diskRoots' },
    'hash-threads': { type: 'string' },
    'held-bytes-max': { type: 'string' },
    'freeze-hook': { type: 'string' },
    'thaw-hook': { type: 'string' },
    'snapshot-create-hook': { type: 'string' },
    'snapshot-release-hook': { type: 'string' },
    'shutdown-hook': { type: 'string' },
    'hook-timeout-ms': { type: 'string' },
  },
  // The agent stands for its protected machine: by default it is named after the host.
  defaults: { name: os.hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 128) || 'agent', listen: '127.0.0.1:7103', dataDir: './data/agent', disks: [] },
  async create({ config, dataDir, log }) {
    await initHashing();
    const configuredHeldBytesMax = checkConfiguredLimit('heldBytesMax', config.heldBytesMax, heldBytesMax, extentBytesMax);
    const hookTimeoutMs = checkConfiguredLimit('hookTimeoutMs', config.hookTimeoutMs, hookTimeoutMaxMs, 100);
    const fromFlags: HookCommands = { freeze: config.freezeHook, thaw: config.thawHook, snapshotCreate: config.snapshotCreateHook, snapshotRelease: config.snapshotReleaseHook, shutdown: config.shutdownHook };
    const commands: HookCommands = Object.fromEntries(hookNames.map((name) => [name, fromFlags[name] ?? config.hooks[name]]).filter(([, command]) => command));
    const hooks = new Hooks(commands, hookTimeoutMs, log);
    const pool = new HashPool(config.hashThreads);
    const shutDown = await ShutDownDisks.load(dataDir);
    const agent = new Agent(config.name, new SourceDisks(config.disks, config.diskRoots), pool, log, { heldBytesMax: configuredHeldBytesMax, hooks, shutDown });
    // Before the server's graceful shutdown, which would otherwise wait for the long-lived streams.
    for (const signal of ['SIGTERM', 'SIGINT'] as const) process.once(signal, () => agent.shutdown());
    return {
      services: [{ definition: v1.Agent.service, implementation: agent.handlers(), name: 'drplane.v1.Agent' }],
      started() {
        log.info({ disks: agent.disks.paths, diskRoots: agent.disks.roots, shutDown: shutDown.paths, hashThreads: pool.threads, heldBytesMax: configuredHeldBytesMax, hooks: hooks.names, hookTimeoutMs }, 'serving disks');
      },
      async stop() {
        await agent.close();
        await pool.close();
      },
    };
  },
});
