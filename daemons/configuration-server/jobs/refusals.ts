// What is refused while a machine's job runs or a failed one waits for its
// restart, and how an operator is told what to do first given the
// machine's state (the end of every FAILED_PRECONDITION on a machine); and a
// second point taken at once of the same machine or group.
import { DrplaneError, ErrorCode, failedPrecondition } from '../../../shared/errors';
import type { MachineRecord } from '../store/records';
import type { Store } from '../store/store';
import { jobEnded } from './running-job';

/**
 * The kinds of job that leave a machine half-way between two states when they
 * fail or stop: until the operator restarts them, every other operation on the
 * machine is refused ("restart it: drctl job restart job-N").
 */
export const blockingJobKinds: ReadonlySet<string> = new Set(['failover', 'change-recovery-point', 'commit', 'reprotect', 'failback']);

/**
 * Refuses an operation while the machine runs a job, or while a failed or
 * stopped job left it half-way (only restarting that job is allowed then).
 */
export function refuseBusyOrUnfinished(store: Store, machine: { name: string; state: string; activeJobId: string; restartableJobId?: string }): void {
  const active = machine.activeJobId ? store.jobs.get(machine.activeJobId) : undefined;
  if (active && !jobEnded(active.state)) {
    throw failedPrecondition(`machine ${machine.name} is busy with ${active.kind} ${active.jobId}: wait for it (drctl job watch ${active.jobId}) or stop it (drctl job stop ${active.jobId})`);
  }
  const unfinished = machine.restartableJobId ? store.jobs.get(machine.restartableJobId) : undefined;
  if (unfinished && blockingJobKinds.has(unfinished.kind) && (unfinished.state === 'JOB_FAILED' || unfinished.state === 'JOB_STOPPED')) {
    const how = unfinished.state === 'JOB_STOPPED' ? 'was stopped' : `failed (${unfinished.error})`;
    throw failedPrecondition(`machine ${machine.name} is ${machine.state}: its ${unfinished.kind} ${unfinished.jobId} ${how}; restart it: drctl job restart ${unfinished.jobId}`);
  }
}

/** What an operator should do first, given the machine's state (the end of a FAILED_PRECONDITION message). */
export function whatNext(machine: MachineRecord): string {
  const name = machine.name;
  const watch = machine.activeJobId ? ` (drctl job watch ${machine.activeJobId})` : '';
  switch (machine.state) {
    case 'UNPROTECTED':
      return `enable it first (drctl enable ${name} --datastore DIR)`;
    case 'INITIAL_SYNC':
      return `wait for its initial sync${watch}`;
    case 'ERROR':
      return `enable it again (drctl enable ${name} --datastore DIR)`;
    case 'RESYNC_REQUIRED':
      return `resync it first (drctl resync ${name})`;
    case 'PROTECTED':
      return machine.direction === 'REVERSE' ? `it runs at its recovery site, protected toward home: fail it back first (drctl failback ${name})` : `fail it over first (drctl failover ${name})`;
    case 'FAILOVER_IN_PROGRESS':
      return `wait for its failover${watch}`;
    case 'FAILED_OVER':
      return `commit it (drctl commit ${name}) or change its recovery point (drctl change-point ${name} --select ...) first`;
    case 'COMMIT_IN_PROGRESS':
      return `wait for its commit${watch}`;
    case 'COMMITTED':
      return `reprotect it first (drctl reprotect ${name} --master-target MT ...)`;
    case 'REPROTECTING':
      return `wait for its reprotect${watch}`;
    default:
      return 'look at it first (drctl machine show)';
  }
}

/** "machine vm1 is FAILED_OVER: commit it ... first" */
export function stateRefusal(machine: MachineRecord): DrplaneError {
  const direction = machine.state === 'PROTECTED' && machine.direction === 'REVERSE' ? ' (in the reverse direction)' : '';
  return failedPrecondition(`machine ${machine.name} is ${machine.state}${direction}: ${whatNext(machine)}`);
}

/**
 * Operations outside any job (taking an app-consistent or a group point) that
 * run at most once at a time for a key (a machine, a group): a second one is
 * refused ABORTED while the first runs, and the schedule skips a busy key.
 */
export class BusyKeys {
  private readonly running = new Set<string>();

  busy(key: string): boolean {
    return this.running.has(key);
  }

  /** Runs `operation` for `key`; `what` names it in the refusal ("a group point of web"). */
  async run<T>(key: string, what: string, operation: () => Promise<T>): Promise<T> {
    if (this.running.has(key)) throw new DrplaneError(ErrorCode.Aborted, `${what} is being taken: try again when it is done`);
    this.running.add(key);
    try {
      return await operation();
    } finally {
      this.running.delete(key);
    }
  }
}
