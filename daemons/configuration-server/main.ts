// The configuration server: the control plane and single source of truth.
// This file only wires the parts together.
import { z } from 'zod';
import { commonConfig } from '../../shared/config';
import { runDaemon } from '../../shared/daemon';
import { checkConfiguredLimit, heartbeatIntervalMs } from '../../shared/limits';
import { AppConsistentPoints } from './app-points';
import { Backups } from './backup';
import { Failbacks } from './failback';
import { Failovers } from './failover';
import { Groups } from './groups';
import { HealthMonitor, statusPollIntervalMaxMs, statusPollIntervalMs } from './health';
import { HealthEvents } from './health-events';
import { Jobs } from './jobs';
import { Machines } from './machines';
import { loadOrCreatePassphrase } from './passphrase';
import { Peers } from './peers';
import { Plans } from './plans';
import { Policies } from './policies';
import { RecoveryPoints } from './recovery-points';
import { Replication } from './replication';
import { Reprotects } from './reprotect';
import { PointSchedules } from './schedules';
import { Servers } from './servers';
import { configurationService } from './service';
import { Store } from './store';

/** The shortest heartbeat interval that may be configured (tests lower it; production keeps the limit). */
const heartbeatIntervalMinMs = 100;
/** The shortest status poll interval that may be configured. */
const statusPollIntervalMinMs = 100;

const schema = z.preprocess(
  // --passphrase and --passphrase-file are parsed as the link to a configuration
  // server (what the other daemons need); here they are this server's own.
  (input) => {
    const { configurationServer, ...rest } = input as Record<string, unknown> & { configurationServer?: Record<string, unknown> };
    return { passphrase: configurationServer?.passphrase, passphraseFile: configurationServer?.passphraseFile, ...rest };
  },
  commonConfig.extend({
    /** The registration passphrase; default: generated into <dataDir>/passphrase on first start. */
    passphrase: z.string().optional(),
    passphraseFile: z.string().optional(),
    heartbeatIntervalMs: z.coerce
      .number()
      .default(heartbeatIntervalMs)
      .transform((value) => checkConfiguredLimit('heartbeatIntervalMs', value, heartbeatIntervalMs, heartbeatIntervalMinMs)),
    statusPollIntervalMs: z.coerce
      .number()
      .default(statusPollIntervalMs)
      .transform((value) => checkConfiguredLimit('statusPollIntervalMs', value, statusPollIntervalMaxMs, statusPollIntervalMinMs)),
  }),
);

const usage = `Usage: configuration-server --data-dir DIR [options]

The control plane: registers process servers, master targets and agents, keeps
machines, jobs, policies and replication groups, drives continuous replication,
takes app- and group-consistent points, and watches replication health.

Options:
  --listen HOST:PORT          gRPC address (default 127.0.0.1:7100)
  --data-dir DIR              state (config.lmdb) and the generated passphrase
  --passphrase TEXT           registration passphrase (default: generated into DIR/passphrase)
  --passphrase-file FILE      read the passphrase from FILE
  --heartbeat-interval-ms N   interval servers heartbeat at (at most ${heartbeatIntervalMs})
  --status-poll-interval-ms N how often process servers are asked for RPO and backlog
                              (default ${statusPollIntervalMs}, ${statusPollIntervalMinMs} to ${statusPollIntervalMaxMs})
  --log-level LEVEL           trace, debug, info, warn, error (default info)
  --config FILE               JSON file with the same keys (camelCase); flags win
`;

void runDaemon({
  name: 'configuration-server',
  schema,
  usage,
  flags: { 'heartbeat-interval-ms': { type: 'string' }, 'status-poll-interval-ms': { type: 'string' } },
  defaults: { name: 'configuration-server', listen: '127.0.0.1:7100' },
  async create({ config, dataDir, log }) {
    const passphrase = loadOrCreatePassphrase(config, dataDir);
    if (passphrase.generated) log.info({ passphraseFile: passphrase.source }, 'generated the registration passphrase: give this file to process servers, master targets and agents (--passphrase-file)');
    else log.info({ passphrase: passphrase.source }, 'registration passphrase loaded');
    const store = new Store(dataDir);
    const peers = new Peers();
    const servers = new Servers(store, passphrase, config.heartbeatIntervalMs, log);
    const machines = new Machines(store, servers, peers, log);
    const policies = new Policies(store, log);
    const jobs = new Jobs(store, log);
    const replication = new Replication(store, machines, servers, peers, policies, jobs, log);
    const recoveryPoints = new RecoveryPoints(machines, servers, peers, log);
    const events = new HealthEvents(store, log);
    const appPoints = new AppConsistentPoints(machines, servers, peers, recoveryPoints, events, log);
    const groups = new Groups(store, machines, servers, peers, recoveryPoints, events, log);
    const health = new HealthMonitor(machines, servers, peers, replication, events, log, config.statusPollIntervalMs);
    const schedules = new PointSchedules(machines, replication, appPoints, groups, log);
    const failovers = new Failovers(store, machines, servers, peers, recoveryPoints, replication, jobs, log);
    const reprotects = new Reprotects(store, machines, servers, peers, policies, replication, jobs, log);
    const failbacks = new Failbacks(store, machines, servers, policies, replication, failovers, reprotects, jobs, log);
    const plans = new Plans(store, machines, groups, jobs, failovers, log);
    const backups = new Backups(store, dataDir, log);
    const service = configurationService({ plans, backups, failovers, reprotects, failbacks, servers, machines, jobs, replication, recoveryPoints, policies, groups, appPoints, events, health, log });
    // Open WatchJob streams would hold the server's graceful shutdown for its whole grace period: end them first.
    process.once('SIGTERM', () => service.closeStreams());
    process.once('SIGINT', () => service.closeStreams());
    return {
      services: [service.registration],
      started() {
        log.info({ configurationServerId: policies.configurationServerId, statusPollIntervalMs: config.statusPollIntervalMs }, 'configuration server ready');
        const resumed = jobs.resumeAll();
        if (resumed > 0) log.info({ jobs: resumed }, 'resumed unfinished jobs');
        health.start();
        schedules.start();
      },
      async stop() {
        await Promise.all([jobs.stop(), health.stop(), schedules.stop(), backups.stop()]);
        peers.close();
        await store.close();
      },
    };
  },
});
