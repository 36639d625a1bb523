// Health events: a condition an operator should know about (RPO over the
// threshold, a server without heartbeats, a failed freeze hook...) is raised
// once and cleared when it ends. At most one event per (code, subject) is
// active at a time, so a condition that lasts does not flood the list. Events
// are kept in the database, the newest healthEventsStoredMax of them.
import { healthEventsStoredMax } from '../../shared/limits';
import type { Logger } from '../../shared/log';
import type { HealthEvent } from '../../generated/drplane/v1/HealthEvent';
import type { HealthSeverity__Output } from '../../generated/drplane/v1/HealthSeverity';
import type { Store } from './store';
import type { ConfigurationServerMetrics } from './metrics';

export const HealthCode = {
  RpoThresholdExceeded: 'RPO_THRESHOLD_EXCEEDED',
  HeartbeatMissed: 'HEARTBEAT_MISSED',
  FreezeHookFailed: 'FREEZE_HOOK_FAILED',
  ReplicationFailed: 'REPLICATION_FAILED',
  CacheFull: 'CACHE_FULL',
  GroupBarrierFailed: 'GROUP_BARRIER_FAILED',
  /** An agent's clock is ahead of its process server's by more than sourceClockSkewMaxMs: its points are dated with the process server's clock. */
  SourceClockSkew: 'SOURCE_CLOCK_SKEW',
  /** A master target's retention volume has less than retentionVolumeLowFreeRatio of its capacity free: batches will soon be refused. */
  RetentionVolumeLow: 'RETENTION_VOLUME_LOW',
} as const;
export type HealthCode = (typeof HealthCode)[keyof typeof HealthCode];

/** ListHealthEvents without a limit answers this many. */
export const healthEventsListDefault = 100;

export interface HealthEventRecord {
  eventId: string;
  code: HealthCode;
  severity: HealthSeverity__Output;
  /** A machine, disk, group or server id. */
  subject: string;
  machineId: string;
  message: string;
  raisedTimeMs: number;
  /** 0 while active. */
  clearedTimeMs: number;
}

export interface RaiseRequest {
  code: HealthCode;
  subject: string;
  machineId?: string;
  severity: HealthSeverity__Output;
  message: string;
}

/** Keys sort as the events were raised: the event number, zero-padded. */
const keyOf = (eventId: string) => eventId.slice(eventId.lastIndexOf('-') + 1).padStart(12, '0');
const activeKey = (code: string, subject: string) => `${code}\u0000${subject}`;

export class HealthEvents {
  /** (code, subject) -> event id of the active event. */
  private readonly active = new Map<string, string>();
  private stored = 0;

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
    private readonly storedMax = healthEventsStoredMax,
    private readonly metrics?: ConfigurationServerMetrics,
  ) {
    for (const { value } of this.store.healthEvents.getRange()) {
      this.stored++;
      if (!value.clearedTimeMs) this.active.set(activeKey(value.code, value.subject), value.eventId);
    }
  }

  /** Raises the event unless the same (code, subject) is already active; answers the active event. */
  raise(request: RaiseRequest): HealthEventRecord {
    const existingId = this.active.get(activeKey(request.code, request.subject));
    const existing = existingId && this.store.healthEvents.get(keyOf(existingId));
    if (existing && !existing.clearedTimeMs) return existing;
    const record = this.store.write(() => {
      const event: HealthEventRecord = {
        eventId: `event-${this.store.next('health-event')}`,
        code: request.code,
        severity: request.severity,
        subject: request.subject,
        machineId: request.machineId ?? '',
        message: request.message,
        raisedTimeMs: Date.now(),
        clearedTimeMs: 0,
      };
      this.store.healthEvents.putSync(keyOf(event.eventId), event);
      this.stored++;
      this.prune();
      return event;
    });
    this.active.set(activeKey(record.code, record.subject), record.eventId);
    this.metrics?.healthEventRaised(record.code, record.severity);
    this.log.warn({ eventId: record.eventId, code: record.code, subject: record.subject, machineId: record.machineId, message: record.message }, 'health event raised');
    return record;
  }

  /** Clears the active event of (code, subject), if there is one. */
  clear(code: HealthCode, subject: string): void {
    const eventId = this.active.get(activeKey(code, subject));
    if (!eventId) return;
    this.active.delete(activeKey(code, subject));
    const cleared = this.store.write(() => {
      const event = this.store.healthEvents.get(keyOf(eventId));
      if (!event || event.clearedTimeMs) return undefined;
      const next = { ...event, clearedTimeMs: Date.now() };
      this.store.healthEvents.putSync(keyOf(eventId), next);
      return next;
    });
    if (cleared) this.log.info({ eventId, code, subject, activeMs: cleared.clearedTimeMs - cleared.raisedTimeMs }, 'health event cleared');
  }

  isActive(code: HealthCode, subject: string): boolean {
    return this.active.has(activeKey(code, subject));
  }

  /** Subjects with an active event of this code. */
  activeSubjects(code: HealthCode): string[] {
    const prefix = `${code}\u0000`;
    return [...this.active.keys()].filter((key) => key.startsWith(prefix)).map((key) => key.slice(prefix.length));
  }

  /** Newest first; of one machine when machineId is given. limit 0: the default. */
  list(options: { machineId?: string; activeOnly?: boolean; limit?: number } = {}): HealthEventRecord[] {
    const limit = options.limit || healthEventsListDefault;
    const events: HealthEventRecord[] = [];
    if (options.activeOnly) {
      for (const eventId of this.active.values()) {
        const event = this.store.healthEvents.get(keyOf(eventId));
        if (event && (!options.machineId || event.machineId === options.machineId)) events.push(event);
      }
      return events.sort((a, b) => keyOf(b.eventId).localeCompare(keyOf(a.eventId))).slice(0, limit);
    }
    for (const { value } of this.store.healthEvents.getRange({ reverse: true })) {
      if (options.machineId && value.machineId !== options.machineId) continue;
      events.push(value);
      if (events.length >= limit) break;
    }
    return events;
  }

  toProto(record: HealthEventRecord): HealthEvent {
    return { ...record };
  }

  /** Keeps the newest storedMax events: cleared ones go first, then the oldest; call inside store.write(). */
  private prune(): void {
    while (this.stored > this.storedMax) {
      let victim: HealthEventRecord | undefined;
      for (const { value } of this.store.healthEvents.getRange()) {
        victim ??= value;
        if (value.clearedTimeMs) {
          victim = value;
          break;
        }
      }
      if (!victim) return;
      this.store.healthEvents.removeSync(keyOf(victim.eventId));
      this.stored--;
      if (!victim.clearedTimeMs) this.active.delete(activeKey(victim.code, victim.subject));
    }
  }
}
