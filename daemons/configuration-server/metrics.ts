// The configuration server's Prometheus figures (docs/metrics.md): jobs,
// servers, machines and health as the database and the health monitor hold
// them, read at each scrape. Only the health events raised are counted where
// they happen (health-events.ts).
import { Counter, Gauge, type Registry } from 'prom-client';
import { metricPrefix } from '../../shared/metrics';
import { JobState } from '../../generated/drplane/v1/JobState';
import { MachineState } from '../../generated/drplane/v1/MachineState';
import type { HealthEvents } from './entities/health-events';
import type { HealthMonitor } from './health';
import type { Jobs } from './jobs/jobs';
import type { Machines } from './entities/machines';
import type { Servers } from './entities/servers';

/** "JOB_SUCCEEDED" -> "succeeded", "FAILED_OVER" -> "failed_over", "HEALTH_WARNING" -> "warning". */
const label = (value: string) => value.replace(/^(JOB_|HEALTH_)/, '').toLowerCase();
const jobStates = Object.values(JobState).filter((state) => state !== 'JOB_STATE_UNSPECIFIED').map(label);
const machineStates = Object.values(MachineState).filter((state) => state !== 'MACHINE_STATE_UNSPECIFIED').map(label);
const serverKinds = { PROCESS_SERVER: 'process_server', MASTER_TARGET: 'master_target', AGENT: 'agent' } as const;

interface Sources {
  jobs: Jobs;
  servers: Servers;
  machines: Machines;
  health: HealthMonitor;
  events: HealthEvents;
}

export class ConfigurationServerMetrics {
  readonly healthEventsRaised: Counter<'code' | 'severity'>;
  private sources: Sources | undefined;

  constructor(registry: Registry) {
    const registers = [registry];
    this.healthEventsRaised = new Counter({ name: `${metricPrefix}health_events_raised_total`, help: 'Health events raised (RPO over the threshold, heartbeat missed, replication failed...), by code and severity.', labelNames: ['code', 'severity'], registers });
    const sources = () => this.sources;

    new Gauge({
      name: `${metricPrefix}jobs`,
      help: 'Jobs in the database by kind (enable, failover, reprotect, failback...) and state (queued, running, succeeded, failed, stopped). Ended jobs stay in the database, so a rise of failed is what to watch.',
      labelNames: ['kind', 'state'],
      registers,
      collect() {
        this.reset();
        const jobs = sources()?.jobs.list() ?? [];
        // Every state of every kind seen, so a query for one state finds 0 rather than nothing.
        for (const kind of new Set(jobs.map((job) => job.kind))) for (const state of jobStates) this.set({ kind, state }, 0);
        for (const job of jobs) this.inc({ kind: job.kind, state: label(job.state) });
      },
    });
    new Gauge({
      name: `${metricPrefix}job_steps`,
      help: 'Steps of the jobs that have not ended, by job kind and step state: how much work is queued and running.',
      labelNames: ['kind', 'state'],
      registers,
      collect() {
        this.reset();
        for (const job of sources()?.jobs.list() ?? []) {
          if (job.state !== 'JOB_QUEUED' && job.state !== 'JOB_RUNNING') continue;
          for (const step of job.steps) this.inc({ kind: job.kind, state: label(step.state) });
        }
      },
    });
    new Gauge({
      name: `${metricPrefix}servers`,
      help: 'Registered servers by kind (process_server, master_target, agent) and health (healthy: a heartbeat within 3 intervals).',
      labelNames: ['kind', 'health'],
      registers,
      collect() {
        this.reset();
        const servers = sources()?.servers;
        if (!servers) return;
        for (const kind of Object.values(serverKinds)) for (const health of ['healthy', 'unhealthy']) this.set({ kind, health }, 0);
        const now = Date.now();
        for (const server of servers.list()) this.inc({ kind: serverKinds[server.kind], health: servers.healthy(server, now) ? 'healthy' : 'unhealthy' });
      },
    });
    new Gauge({
      name: `${metricPrefix}machines`,
      help: 'Protected machines by state (unprotected, initial_sync, protected, resync_required, failed_over, ...).',
      labelNames: ['state'],
      registers,
      collect() {
        this.reset();
        for (const state of machineStates) this.set({ state }, 0);
        for (const machine of sources()?.machines.list() ?? []) this.inc({ state: label(machine.state) });
      },
    });
    // One row per replicated disk, as the health monitor last saw it (every statusPollIntervalMs).
    const diskHealth = () => {
      const found = sources();
      if (!found) return [];
      return found.machines.list().flatMap((machine) => machine.disks.flatMap((disk) => {
        const health = found.health.diskHealth(disk.diskId);
        return health ? [{ labels: { machine: machine.name, disk_id: disk.diskId }, health }] : [];
      }));
    };
    const diskGauges: [name: string, help: string, value: (health: NonNullable<ReturnType<Sources['health']['diskHealth']>>) => number][] = [
      ['disk_rpo_seconds', "RPO of a replicated disk as the configuration server last polled it from the process server (or, when that is away, from the master target's newest point).", (health) => Number(health.rpoMs) / 1000],
      ['disk_rpo_threshold_seconds', "The RPO threshold of a replicated disk's policy: a health event is raised above it.", (health) => Number(health.rpoThresholdMs) / 1000],
      ['disk_backlog_bytes', 'Backlog of a replicated disk (received by the process server, not yet applied) as the configuration server last polled it.', (health) => Number(health.backlogBytes)],
    ];
    for (const [name, help, value] of diskGauges) {
      new Gauge({
        name: `${metricPrefix}${name}`,
        help,
        labelNames: ['machine', 'disk_id'],
        registers,
        collect() {
          this.reset();
          for (const { labels, health } of diskHealth()) this.set(labels, value(health));
        },
      });
    }
    new Gauge({
      name: `${metricPrefix}health_events_active`,
      help: 'Health events raised and not yet cleared, by code and severity.',
      labelNames: ['code', 'severity'],
      registers,
      collect() {
        this.reset();
        for (const event of sources()?.events.list({ activeOnly: true, limit: Number.MAX_SAFE_INTEGER }) ?? []) this.inc({ code: event.code, severity: label(event.severity) });
      },
    });
  }

  /** The state the gauges read at each scrape. */
  watch(sources: Sources): void {
    this.sources = sources;
  }

  /** Counts a health event raised (an event already active is not raised again). */
  healthEventRaised(code: string, severity: string): void {
    this.healthEventsRaised.inc({ code, severity: label(severity) });
  }
}
