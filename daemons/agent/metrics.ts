// The agent's Prometheus figures (docs/metrics.md). Bytes read for syncs are
// counted where the disk is read (agent.ts); the capture figures read each
// running capture's own status at each scrape, so nothing is kept twice.
// Disks are labelled by path (disk_path): the agent does not know the
// configuration server's disk ids.
import { Counter, Gauge, type Registry } from 'prom-client';
import { metricPrefix } from '../../shared/metrics';
import type { CaptureStatus } from '../../generated/drplane/v1/CaptureStatus';

/** hash_tree: the whole disk hashed for a delta sync's comparison; sync: ranges streamed to a process server. */
export type ReadPurpose = 'hash_tree' | 'sync';

const modeLabel = (mode: unknown) => (mode === 'CAPTURE_SCAN' ? 'scan' : 'write_through');

export class AgentMetrics {
  readonly readBytes: Counter<'disk_path' | 'purpose'>;
  private captures: (() => CaptureStatus[]) | undefined;

  constructor(registry: Registry) {
    const registers = [registry];
    this.readBytes = new Counter({ name: `${metricPrefix}agent_read_bytes_total`, help: 'Bytes read from a source disk for syncs, by disk path and purpose (hash_tree: hashed for a delta comparison; sync: sent to a process server).', labelNames: ['disk_path', 'purpose'], registers });
    const captures = () => this.captures?.() ?? [];
    new Gauge({
      name: `${metricPrefix}captures_running`,
      help: 'Change captures running, by mode (write_through, scan).',
      labelNames: ['mode'],
      registers,
      collect() {
        this.reset();
        for (const mode of ['write_through', 'scan']) this.set({ mode }, 0);
        for (const capture of captures()) this.inc({ mode: modeLabel(capture.mode) });
      },
    });
    // Per capture, from its status; a capture's counters start again when the capture starts over (new capture id).
    const gaugeOf = (value: (capture: CaptureStatus) => number) =>
      function (this: Gauge<'disk_path'>) {
        this.reset();
        for (const capture of captures()) this.set({ disk_path: String(capture.path) }, value(capture));
      };
    const counterOf = (value: (capture: CaptureStatus) => number) =>
      function (this: Counter<'disk_path'>) {
        this.reset();
        for (const capture of captures()) this.inc({ disk_path: String(capture.path) }, value(capture));
      };
    const labelNames = ['disk_path'] as const;
    new Gauge({ name: `${metricPrefix}capture_held_bytes`, help: 'Bytes of change records held until the process server says they are durable, by disk.', labelNames, registers, collect: gaugeOf((capture) => Number(capture.heldBytes)) });
    new Gauge({ name: `${metricPrefix}capture_held_capacity_bytes`, help: 'The bound of the held records of a capture (heldBytesMax): past it the capture overflows and starts over.', labelNames, registers, collect: gaugeOf((capture) => Number(capture.heldBytesMax)) });
    new Gauge({ name: `${metricPrefix}capture_held_records`, help: 'Change records held (not yet durable at the process server), by disk.', labelNames, registers, collect: gaugeOf((capture) => Math.max(0, Number(capture.nextSequence) - Number(capture.firstHeldSequence))) });
    new Gauge({ name: `${metricPrefix}capture_streaming`, help: '1 while a process server streams the capture of a disk.', labelNames, registers, collect: gaugeOf((capture) => (capture.streaming ? 1 : 0)) });
    new Counter({ name: `${metricPrefix}capture_records_total`, help: 'Change records (writes and markers) the running capture of a disk has numbered.', labelNames, registers, collect: counterOf((capture) => Math.max(0, Number(capture.nextSequence) - 1)) });
    new Counter({ name: `${metricPrefix}capture_written_bytes_total`, help: 'Bytes written through the agent to a disk while it was captured (write-through capture).', labelNames, registers, collect: counterOf((capture) => Number(capture.bytesWritten)) });
    new Counter({ name: `${metricPrefix}capture_zero_run_bytes_total`, help: 'Of the bytes written through the agent, those recorded as zero runs (TRIM, WRITE_ZEROES, writes of zeros): records that carry no data.', labelNames, registers, collect: counterOf((capture) => Number(capture.zeroRunBytes)) });
    new Counter({ name: `${metricPrefix}capture_streamed_bytes_total`, help: 'Bytes of StreamChanges messages (encoded change batches) the agent sent to process servers for the capture of a disk.', labelNames, registers, collect: counterOf((capture) => Number(capture.streamedBytes)) });
    new Counter({ name: `${metricPrefix}capture_scan_passes_total`, help: 'Scan passes of the capture of a disk (scan capture).', labelNames, registers, collect: counterOf((capture) => Number(capture.scanPasses)) });
    new Counter({ name: `${metricPrefix}capture_overflows_total`, help: 'Times the held records of a disk passed the bound and the capture started over (a resync follows).', labelNames, registers, collect: counterOf((capture) => Number(capture.overflows)) });
  }

  /** The captures the figures read at each scrape. */
  watch(captures: () => CaptureStatus[]): void {
    this.captures = captures;
  }
}

/** The NBD server's figures (nbd-server.ts): connections, requests by kind and answer, bytes. */
export class NbdMetrics {
  readonly connections: Gauge;
  /** kind: read, write, flush, trim, write_zeroes, other; code: ok or the NBD error (einval, enospc, eperm, eio...). */
  readonly requests: Counter<'kind' | 'code'>;
  /** kind: read or write (TRIM and WRITE_ZEROES move no payload). */
  readonly bytes: Counter<'kind'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.connections = new Gauge({ name: `${metricPrefix}nbd_connections`, help: 'NBD client connections open (handshake or transmission).', registers });
    this.requests = new Counter({ name: `${metricPrefix}nbd_requests_total`, help: 'NBD requests answered, by kind (read, write, flush, trim, write_zeroes, other) and code (ok, or the NBD error: einval, enospc, eperm, eio).', labelNames: ['kind', 'code'], registers });
    this.bytes = new Counter({ name: `${metricPrefix}nbd_bytes_total`, help: 'Payload bytes of NBD requests answered with success, by kind (read, write).', labelNames: ['kind'], registers });
  }
}
