// Scheduled points: every protected machine gets an app-consistent point each
// app_consistent_interval_ms of its policy, and every replication group whose
// members are all protected gets a group point each group_consistent_interval_ms
// (the smallest of its members' policies). 0 turns a schedule off. A point
// already being taken (on demand or by schedule) is never started twice; the
// schedule counts from the last attempt, so a failing hook is retried once
// per interval, not in a loop.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../../shared/log';
import { scheduledAppPointTag, type AppConsistentPoints } from './workflows/app-points';
import type { Groups } from './entities/groups';
import { scheduledGroupPointTag, type GroupPoints } from './workflows/group-points';
import { jobStopGraceMs } from './jobs/jobs';
import type { Machines } from './entities/machines';
import type { ReplicationSessions } from './workflows/replication-sessions';
import { errorMessage } from './jobs/peer-calls';

/** How often the schedules are looked at (the shortest scheduled interval is 1 s). */
export const scheduleTickMs = 250;

export class PointSchedules {
  /** Machine or group id -> when its last scheduled point was started (or when it was first seen protected). */
  private readonly lastAppMs = new Map<string, number>();
  private readonly lastGroupMs = new Map<string, number>();
  private readonly inFlight = new Set<Promise<unknown>>();
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly machines: Machines,
    private readonly sessions: ReplicationSessions,
    private readonly appPoints: AppConsistentPoints,
    private readonly groups: Groups,
    private readonly groupPoints: GroupPoints,
    private readonly log: Logger,
  ) {}

  start(): void {
    this.timer = setInterval(() => this.tick(), scheduleTickMs);
    this.timer.unref();
  }

  /** Stops scheduling and waits a little for the points being taken (each peer call has a deadline, but a freeze may take minutes). */
  async stop(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await Promise.race([Promise.allSettled([...this.inFlight]), sleep(jobStopGraceMs, undefined, { ref: false })]);
  }

  tick(now = Date.now()): void {
    const machines = this.machines.list();
    const protectedIds = new Set(machines.filter((machine) => machine.state === 'PROTECTED').map((machine) => machine.machineId));
    for (const machine of machines) {
      if (!protectedIds.has(machine.machineId)) {
        this.lastAppMs.delete(machine.machineId);
        continue;
      }
      const intervalMs = this.sessions.policyOf(machine).appConsistentIntervalMs;
      if (this.due(this.lastAppMs, machine.machineId, intervalMs, now) && !this.appPoints.taking.busy(machine.machineId)) {
        this.lastAppMs.set(machine.machineId, now);
        this.run(this.appPoints.take({ machine: machine.machineId, tag: scheduledAppPointTag }), { machine: machine.name }, 'scheduled app-consistent point');
      }
    }
    for (const group of this.groups.list()) {
      if (!group.machineIds.every((machineId) => protectedIds.has(machineId))) {
        this.lastGroupMs.delete(group.groupId);
        continue;
      }
      const intervals = group.machineIds.map((machineId) => {
        const machine = machines.find((candidate) => candidate.machineId === machineId)!;
        return this.sessions.policyOf(machine).groupConsistentIntervalMs;
      });
      const enabled = intervals.filter((intervalMs) => intervalMs > 0);
      const intervalMs = enabled.length > 0 ? Math.min(...enabled) : 0;
      if (this.due(this.lastGroupMs, group.groupId, intervalMs, now) && !this.groupPoints.taking.busy(group.groupId)) {
        this.lastGroupMs.set(group.groupId, now);
        this.run(this.groupPoints.takePoint({ group: group.groupId, tag: scheduledGroupPointTag }), { group: group.name }, 'scheduled group point');
      }
    }
  }

  /** Whether a schedule is due; the first time a subject is seen its interval starts counting. */
  private due(last: Map<string, number>, id: string, intervalMs: number, now: number): boolean {
    if (intervalMs <= 0) {
      last.delete(id);
      return false;
    }
    const previous = last.get(id);
    if (previous === undefined) {
      last.set(id, now);
      return false;
    }
    return now - previous >= intervalMs;
  }

  private run(work: Promise<unknown>, subject: Record<string, string>, what: string): void {
    const tracked = work.then(
      () => this.log.debug(subject, `${what} taken`),
      // Hook and barrier failures are health events already; the log says the rest.
      (error: unknown) => this.log.warn({ ...subject, err: errorMessage(error) }, `${what} failed`),
    );
    this.inFlight.add(tracked);
    void tracked.finally(() => this.inFlight.delete(tracked));
  }
}
