// The process server's Prometheus figures (docs/metrics.md). Counters are
// incremented where the bytes and batches go (sync.ts, replication.ts); the
// gauges read the sessions' own status at each scrape, so nothing is kept twice.
import { Counter, Gauge, type Registry } from 'prom-client';
import { metricPrefix } from '../../shared/metrics';
import type { CacheSpace } from './cache';

/** How the bytes travelled: a full or delta sync, or change records of continuous replication. */
export type TransferMode = 'full' | 'delta' | 'continuous';

export const syncTransferMode = (mode: 'SYNC_MODE_FULL' | 'SYNC_MODE_DELTA'): TransferMode => (mode === 'SYNC_MODE_FULL' ? 'full' : 'delta');

/**
 * What the gauges read at each scrape: the sessions' and syncs' status as
 * plain figures (so this file imports nothing of the sessions it describes).
 */
export interface MetricsSources {
  replications: {
    list(): { diskId: string; backlogBytes: number | string; rpoMs: number | string; state: string; cacheBytes: number | string }[];
    totals(): { syncsRunning: number };
  };
  syncs: { list(): { state: string }[] };
  cache: Pick<CacheSpace, 'usedBytes' | 'bytesMax'>;
}

/** "REPLICATION_DEGRADED" -> "degraded". */
const stateLabel = (state: string) => state.replace(/^REPLICATION_/, '').toLowerCase();

export class ProcessServerMetrics {
  /** Encoded bytes sent to master targets, after zero skipping, delta comparison and compression. */
  readonly sentBytes: Counter<'disk_id' | 'mode'>;
  /** The plain (decoded) bytes those stand for. */
  readonly sentPlainBytes: Counter<'disk_id' | 'mode'>;
  readonly batchesAcknowledged: Counter<'disk_id' | 'mode'>;
  /** Plain bytes of change records received from agents into the journal. */
  readonly receivedBytes: Counter<'disk_id'>;
  private sources: MetricsSources | undefined;

  constructor(registry: Registry) {
    const registers = [registry];
    const labelNames = ['disk_id', 'mode'] as const;
    this.sentBytes = new Counter({ name: `${metricPrefix}replication_sent_bytes_total`, help: 'Bytes sent to the master target (encoded: after zero skipping, delta comparison and compression), by disk and mode (full, delta, continuous).', labelNames, registers });
    this.sentPlainBytes = new Counter({ name: `${metricPrefix}replication_sent_plain_bytes_total`, help: 'Plain disk bytes the sent bytes stand for (before compression), by disk and mode.', labelNames, registers });
    this.batchesAcknowledged = new Counter({ name: `${metricPrefix}replication_batches_acknowledged_total`, help: 'Batches the master target acknowledged as applied (durable), by disk and mode.', labelNames, registers });
    this.receivedBytes = new Counter({ name: `${metricPrefix}replication_received_bytes_total`, help: 'Plain bytes of change records received from the agent into the journal, by disk.', labelNames: ['disk_id'], registers });

    const sessions = () => this.sources?.replications.list() ?? [];
    new Gauge({
      name: `${metricPrefix}replication_backlog_bytes`,
      help: 'Journal bytes received from the agent and not yet applied at the master target, by disk.',
      labelNames: ['disk_id'],
      registers,
      collect() {
        this.reset();
        for (const session of sessions()) this.set({ disk_id: session.diskId }, Number(session.backlogBytes));
      },
    });
    new Gauge({
      name: `${metricPrefix}replication_rpo_seconds`,
      help: 'Age of the newest recovery point applied at the master target (the whole session while it has none): the data a failover now would lose, by disk.',
      labelNames: ['disk_id'],
      registers,
      collect() {
        this.reset();
        for (const session of sessions()) this.set({ disk_id: session.diskId }, Number(session.rpoMs) / 1000);
      },
    });
    new Gauge({
      name: `${metricPrefix}replication_state`,
      help: 'State of the replication session of a disk: 1 for the state it is in (syncing, replicating, degraded, stopped, failed).',
      labelNames: ['disk_id', 'state'],
      registers,
      collect() {
        this.reset();
        for (const session of sessions()) this.set({ disk_id: session.diskId, state: stateLabel(session.state) }, 1);
      },
    });
    new Gauge({
      name: `${metricPrefix}replication_journal_bytes`,
      help: "Bytes of a disk's journal in the cache directory (applied segments are deleted).",
      labelNames: ['disk_id'],
      registers,
      collect() {
        this.reset();
        for (const session of sessions()) this.set({ disk_id: session.diskId }, Number(session.cacheBytes));
      },
    });
    const cache = () => this.sources?.cache;
    new Gauge({
      name: `${metricPrefix}cache_used_bytes`,
      help: 'Bytes the journals of every disk hold in the cache directory.',
      registers,
      collect() {
        this.set(cache()?.usedBytes ?? 0);
      },
    });
    new Gauge({
      name: `${metricPrefix}cache_capacity_bytes`,
      help: 'The bound of the cache directory (cacheBytesMax): at it, sessions stop reading from their agents.',
      registers,
      collect() {
        this.set(cache()?.bytesMax ?? 0);
      },
    });
    const running = () => {
      if (!this.sources) return 0;
      return this.sources.syncs.list().filter((sync) => sync.state === 'SYNC_STATE_RUNNING').length + this.sources.replications.totals().syncsRunning;
    };
    new Gauge({
      name: `${metricPrefix}syncs_running`,
      help: 'Full and delta syncs running: StartSync ones and those under a replication session.',
      registers,
      collect() {
        this.set(running());
      },
    });
  }

  /** The state the gauges read at each scrape. */
  watch(sources: MetricsSources): void {
    this.sources = sources;
  }
}
