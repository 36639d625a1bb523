// The configuration server: the control plane and single source of truth.
// This file only wires the parts together.
import { runDaemon } from '../../shared/daemon';
import { AppConsistentPoints } from './workflows/app-points';
import { Backups } from './store/backup';
import { Failbacks } from './workflows/failback';
import { Commits } from './workflows/commit';
import { Failovers } from './workflows/failover';
import { FailoverSteps } from './workflows/failover-steps';
import { Groups } from './entities/groups';
import { GroupPoints } from './workflows/group-points';
import { HealthMonitor } from './health';
import { HealthEvents } from './entities/health-events';
import { Jobs } from './jobs/jobs';
import type { WorkflowContext } from './jobs/workflow-context';
import { Machines } from './entities/machines';
import { ConfigurationServerMetrics } from './metrics';
import { loadOrCreatePassphrase } from './entities/passphrase';
import { Peers } from './entities/peers';
import { Plans } from './workflows/plans';
import { Policies } from './entities/policies';
import { RecoveryPoints } from './entities/recovery-points';
import { Replication } from './workflows/replication';
import { ReplicationSessions } from './workflows/replication-sessions';
import { Reprotects } from './workflows/reprotect';
import { TestFailovers } from './workflows/test-failover';
import { PointSchedules } from './schedules';
import { Servers } from './entities/servers';
import { configurationService } from './service';
import { Store } from './store/store';
import { defaults, deprecationWarnings, flags, schema, usage } from './config';

void runDaemon({
  name: 'configuration-server',
  schema,
  usage,
  flags,
  defaults,
  async create({ config, dataDir, log, metrics }) {
    for (const warning of deprecationWarnings(config)) log.warn(warning);
    const passphrase = loadOrCreatePassphrase(config, dataDir);
    if (passphrase.generated) log.info({ passphraseFile: passphrase.source }, 'generated the registration passphrase: give this file to process servers, master targets and agents (--passphrase-file)');
    else log.info({ passphrase: passphrase.source }, 'registration passphrase loaded');
    const store = new Store(dataDir);
    const peers = new Peers();
    const servers = new Servers(store, passphrase, config.heartbeatIntervalMs, log);
    const machines = new Machines(store, servers, peers, log);
    const policies = new Policies(store, log);
    const jobs = new Jobs(store, log, { keptMax: config.endedJobsKeptMax, ageMsMax: config.endedJobAgeMsMax });
    const recoveryPoints = new RecoveryPoints(machines, servers, peers, log);
    const figures = new ConfigurationServerMetrics(metrics.registry);
    const events = new HealthEvents(store, log, undefined, figures);
    const groups = new Groups(store, machines, servers, log);
    // The workflows; each registers its kinds of job with `jobs`.
    const context: WorkflowContext = { store, machines, servers, peers, policies, jobs, log };
    const sessions = new ReplicationSessions(context);
    const replication = new Replication(context, sessions);
    const appPoints = new AppConsistentPoints(machines, servers, peers, recoveryPoints, events, log);
    const groupPoints = new GroupPoints(context, groups, recoveryPoints, events);
    const failoverSteps = new FailoverSteps(context, recoveryPoints, sessions);
    const failovers = new Failovers(context, failoverSteps);
    const commits = new Commits(context);
    const testFailovers = new TestFailovers(context, failovers, failoverSteps);
    const reprotects = new Reprotects(context, sessions);
    const failbacks = new Failbacks(context, sessions, failovers, commits, reprotects);
    const plans = new Plans(context, groups, groupPoints, failovers, commits);
    const health = new HealthMonitor(machines, servers, peers, sessions, events, log, config.statusPollIntervalMs);
    figures.watch({ jobs, servers, machines, health, events });
    const schedules = new PointSchedules(machines, sessions, appPoints, groups, groupPoints, log);
    const backups = new Backups(store, dataDir, log);
    const service = configurationService({ plans, backups, failovers, commits, testFailovers, reprotects, failbacks, servers, machines, jobs, replication, recoveryPoints, policies, groups, groupPoints, appPoints, events, health, log });
    // Open WatchJob streams would hold the server's graceful shutdown for its whole grace period: end them first.
    process.once('SIGTERM', () => service.closeStreams());
    process.once('SIGINT', () => service.closeStreams());
    return {
      services: [service.registration],
      started() {
        log.info({ configurationServerId: policies.configurationServerId, statusPollIntervalMs: config.statusPollIntervalMs }, 'configuration server ready');
        const resumed = jobs.resumeAll();
        jobs.startPruning();
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
