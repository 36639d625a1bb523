// The agent (mobility service) on a protected machine: reads the configured
// source disks for process servers and captures their changes, and shuts them
// down as a source for a planned failover. Wiring only; the domain is in
// agent.ts, captures.ts, shutdown-source.ts and the files they name.
import { runDaemon } from '../../shared/daemon';
import { offsetClockForTests } from '../../shared/failpoints';
import { HashPool } from '../../shared/hash-pool';
import { initHashing } from '../../shared/hashing';
import { checkConfiguredLimit, extentBytesMax, heldBytesMax, hookTimeoutMaxMs } from '../../shared/limits';
import { v1 } from '../../shared/proto';
import { Agent } from './agent';
import { SourceDisks } from './disks';
import { Hooks, hookNames, type HookCommands } from './hooks';
import { AgentMetrics } from './metrics';
import { ShutDownDisks } from './shutdown-source';
import { defaults, flags, schema, usage } from './config';

void runDaemon({
  name: 'agent',
  registerAs: 'AGENT',
  schema,
  usage,
  flags,
  defaults,
  async create({ config, dataDir, log, metrics }) {
    offsetClockForTests();
    await initHashing();
    const configuredHeldBytesMax = checkConfiguredLimit('heldBytesMax', config.heldBytesMax, heldBytesMax, extentBytesMax);
    const hookTimeoutMs = checkConfiguredLimit('hookTimeoutMs', config.hookTimeoutMs, hookTimeoutMaxMs, 100);
    const fromFlags: HookCommands = { freeze: config.freezeHook, thaw: config.thawHook, snapshotCreate: config.snapshotCreateHook, snapshotRelease: config.snapshotReleaseHook, shutdown: config.shutdownHook };
    const commands: HookCommands = Object.fromEntries(hookNames.map((name) => [name, fromFlags[name] ?? config.hooks[name]]).filter(([, command]) => command));
    const hooks = new Hooks(commands, hookTimeoutMs, log);
    const pool = new HashPool(config.hashThreads);
    const shutDown = await ShutDownDisks.load(dataDir);
    const figures = new AgentMetrics(metrics.registry);
    const agent = new Agent(config.name, new SourceDisks(config.disks, config.diskRoots), pool, log, { heldBytesMax: configuredHeldBytesMax, hooks, shutDown, metrics: figures });
    figures.watch(() => agent.captures.list());
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
