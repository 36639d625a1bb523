// The agent (mobility service) on a protected machine: reads the configured
// source disks for process servers and captures their changes, and shuts them
// down as a source for a planned failover; serves them over NBD. Wiring only;
// the domain is in agent.ts, captures.ts, shutdown-source.ts, nbd-server.ts
// and the files they name.
import { runDaemon } from '../../shared/daemon';
import { offsetClockForTests } from '../../shared/failpoints';
import { HashPool } from '../../shared/hash-pool';
import { initHashing } from '../../shared/hashing';
import { v1 } from '../../shared/proto';
import { Agent } from './agent';
import { SourceDisks } from './disks';
import { Hooks, hookNames, type HookCommands } from './hooks';
import { AgentMetrics, NbdMetrics } from './metrics';
import { NbdExports } from './nbd-exports';
import { NbdServer, parseNbdAddress } from './nbd-server';
import { ShutDownDisks } from './shutdown-source';
import { loadTls } from '../../shared/tls';
import { defaults, flags, schema, usage } from './config';
import { agentRoles } from './roles';

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
    // Every configured limit was checked by the schema (config.ts).
    const { heldBytesMax, hookTimeoutMs } = config;
    const fromFlags: HookCommands = { freeze: config.freezeHook, thaw: config.thawHook, snapshotCreate: config.snapshotCreateHook, snapshotRelease: config.snapshotReleaseHook, shutdown: config.shutdownHook };
    const commands: HookCommands = Object.fromEntries(hookNames.map((name) => [name, fromFlags[name] ?? config.hooks[name]]).filter(([, command]) => command));
    const hooks = new Hooks(commands, hookTimeoutMs, log);
    const pool = new HashPool(config.hashThreads);
    const shutDown = await ShutDownDisks.load(dataDir);
    const figures = new AgentMetrics(metrics.registry);
    const agent = new Agent(config.name, new SourceDisks(config.disks, config.diskRoots), pool, log, { heldBytesMax, hooks, shutDown, metrics: figures });
    figures.watch(() => agent.captures.list());
    // The NBD listener uses the agent's own certificates: clients present one the deployment CA signed (docs/nbd.md).
    const nbdTls = config.tls ? loadTls(config.tls) : undefined;
    const nbd = config.nbdListen ? new NbdServer({ address: parseNbdAddress(config.nbdListen), exports: new NbdExports(agent.blockAccess()), log, tls: nbdTls, metrics: new NbdMetrics(metrics.registry), socketGroup: config.nbdSocketGroup }) : undefined;
    await nbd?.listen();
    // Before the server's graceful shutdown, which would otherwise wait for the long-lived streams (and NBD clients).
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      process.once(signal, () => {
        void nbd?.close();
        agent.shutdown();
      });
    }
    return {
      services: [{ definition: v1.Agent.service, implementation: agent.handlers(), name: 'drplane.v1.Agent', roles: agentRoles }],
      started() {
        log.info({ disks: agent.disks.paths, nbdAddress: nbd?.address, diskRoots: agent.disks.roots, shutDown: shutDown.paths, hashThreads: pool.threads, heldBytesMax, hooks: hooks.names, hookTimeoutMs }, 'serving disks');
      },
      async stop() {
        // NBD clients' admitted writes finish before the disks close.
        await nbd?.close();
        await agent.close();
        await pool.close();
      },
    };
  },
});
