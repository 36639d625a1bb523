// The master target's Prometheus figures (docs/metrics.md). Batches, bytes and
// apply latency are counted where a batch is applied (apply.ts) or refused
// (service.ts); the gauges read the replicas' records, the recovery points and
// the retention volume at each scrape, so nothing is kept twice.
import { status as grpcStatus } from '@grpc/grpc-js';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { metricPrefix } from '../../shared/metrics';
import type { RecoveryPoints } from './recovery-points';
import type { Replicas } from './replicas';
import type { Retention } from './retention';
import { volumeSpace, type RetentionVolume } from './retention-volume';

/**
 * Buckets of the apply latency: a batch of a few scattered blocks applies in
 * about a millisecond, a full batch (batchBytesMax, 32 MiB) on a slow disk
 * takes seconds.
 */
export const applyDurationBucketsSeconds = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

interface Sources {
  replicas: Replicas;
  points: RecoveryPoints;
  retention: Retention;
  volume: RetentionVolume;
}

export class MasterTargetMetrics {
  readonly batchesApplied: Counter<'disk_id'>;
  /** Plain bytes written to replicas by applied batches. */
  readonly appliedBytes: Counter<'disk_id'>;
  /** Bytes of replica data saved as before-images (blocks never written are markers and count nothing). */
  readonly beforeImageBytes: Counter<'disk_id'>;
  readonly applyDuration: Histogram;
  readonly batchesRefused: Counter<'code'>;
  private sources: Sources | undefined;

  constructor(registry: Registry) {
    const registers = [registry];
    this.batchesApplied = new Counter({ name: `${metricPrefix}batches_applied_total`, help: 'Batches applied to a replica (a repeated batch, acknowledged and ignored, does not count), by disk.', labelNames: ['disk_id'], registers });
    this.appliedBytes = new Counter({ name: `${metricPrefix}applied_bytes_total`, help: 'Plain bytes written to a replica by applied batches, by disk.', labelNames: ['disk_id'], registers });
    this.beforeImageBytes = new Counter({ name: `${metricPrefix}before_image_written_bytes_total`, help: 'Bytes of replica data saved as before-images in the retention store before batches overwrote them, by disk.', labelNames: ['disk_id'], registers });
    this.applyDuration = new Histogram({
      name: `${metricPrefix}batch_apply_duration_seconds`,
      help: 'Time to apply one batch atomically: before-images committed, replica written and flushed, batch marked applied.',
      buckets: applyDurationBucketsSeconds,
      registers,
    });
    this.batchesRefused = new Counter({ name: `${metricPrefix}batch_streams_refused_total`, help: 'ApplyBatches streams ended by a refused or failed batch, by gRPC status (FAILED_PRECONDITION: stale epoch or a gap; DATA_LOSS: corrupt data).', labelNames: ['code'], registers });

    const live = () => this.sources?.replicas.list().filter((record) => !record.retired) ?? [];
    const sources = () => this.sources;
    new Gauge({
      name: `${metricPrefix}replicas`,
      help: 'Replicas this master target serves (retired ones do not count).',
      registers,
      collect() {
        this.set(live().length);
      },
    });
    new Gauge({
      name: `${metricPrefix}replicas_max`,
      help: 'The most replicas (disks) this master target may serve (disksMax).',
      registers,
      collect() {
        this.set(sources()?.replicas.disksMax ?? 0);
      },
    });
    new Gauge({
      name: `${metricPrefix}replica_recovery_points`,
      help: 'Recovery points kept for a disk.',
      labelNames: ['disk_id'],
      registers,
      collect() {
        this.reset();
        for (const record of live()) this.set({ disk_id: record.diskId }, record.recoveryPointCount);
      },
    });
    new Gauge({
      name: `${metricPrefix}replica_before_image_bytes`,
      help: 'Before-image bytes the retention store keeps for a disk (what its recovery points cost).',
      labelNames: ['disk_id'],
      registers,
      collect() {
        this.reset();
        for (const record of live()) this.set({ disk_id: record.diskId }, record.beforeImageBytes);
      },
    });
    const pointTimes = (which: 'newest' | 'oldest') =>
      function (this: Gauge<'disk_id'>) {
        this.reset();
        const points = sources()?.points;
        if (!points) return;
        for (const record of live()) {
          const point = points[which](record.diskId);
          if (point) this.set({ disk_id: record.diskId }, point.sourceTimeMs / 1000);
        }
      };
    new Gauge({
      name: `${metricPrefix}replica_latest_recovery_point_timestamp_seconds`,
      help: 'Source time (Unix seconds) of the newest recovery point of a disk: time() minus it is the RPO as applied here.',
      labelNames: ['disk_id'],
      registers,
      collect: pointTimes('newest'),
    });
    new Gauge({
      name: `${metricPrefix}replica_oldest_recovery_point_timestamp_seconds`,
      help: 'Source time (Unix seconds) of the oldest recovery point of a disk still kept: how far back it can be restored.',
      labelNames: ['disk_id'],
      registers,
      collect: pointTimes('oldest'),
    });
    new Gauge({
      name: `${metricPrefix}retention_store_bytes`,
      help: 'Bytes the retention store (LMDB) uses on the retention volume: before-images, points, hash index.',
      registers,
      collect() {
        this.set(sources()?.replicas.store.bytesUsed() ?? 0);
      },
    });
    // A volume that cannot be read (gone, EIO) reads as 0 here: one bad figure must not fail the whole scrape.
    const space = () => {
      const volume = sources()?.volume;
      try {
        return volume ? volumeSpace(volume.dir) : { capacityBytes: 0, freeBytes: 0 };
      } catch {
        return { capacityBytes: 0, freeBytes: 0 };
      }
    };
    new Gauge({
      name: `${metricPrefix}retention_volume_capacity_bytes`,
      help: 'Size of the file system that holds the retention volume (retentionDir).',
      registers,
      collect() {
        this.set(space().capacityBytes);
      },
    });
    new Gauge({
      name: `${metricPrefix}retention_volume_free_bytes`,
      help: 'Bytes still free to this daemon on the retention volume.',
      registers,
      collect() {
        this.set(space().freeBytes);
      },
    });
    new Counter({
      name: `${metricPrefix}retention_pruned_recovery_points_total`,
      help: 'Recovery points deleted because they fell out of the retention window.',
      registers,
      collect() {
        this.reset();
        this.inc(sources()?.retention.recoveryPointsPruned ?? 0);
      },
    });
    new Counter({
      name: `${metricPrefix}retention_pruned_before_image_bytes_total`,
      help: 'Before-image bytes deleted with pruned recovery points.',
      registers,
      collect() {
        this.reset();
        this.inc(sources()?.retention.beforeImageBytesPruned ?? 0);
      },
    });
  }

  /** The state the gauges read at each scrape. */
  watch(sources: Sources): void {
    this.sources = sources;
  }

  /** "FAILED_PRECONDITION" for 9: the label of batchesRefused. */
  static statusName(code: number): string {
    return grpcStatus[code] ?? String(code);
  }
}
