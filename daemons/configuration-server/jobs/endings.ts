// How the end of a machine's job moves the machine: success to its next
// state, a failure or a stop to the job an operator restarts.
import type { Machines } from '../entities/machines';
import type { JobRecord, MachineRecord, MachineState } from '../store/records';
import { blockingJobKinds } from './refusals';

/**
 * Inside the transaction that ends a job: success moves the machine to
 * `state`; a failure or stop keeps its state and names the job to restart.
 */
export function finishJob(machines: Machines, machine: MachineRecord, job: JobRecord, error: string, state: MachineState): void {
  if (machine.activeJobId === job.jobId) machine.activeJobId = '';
  if (error) {
    machine.restartableJobId = job.jobId;
    const what = job.state === 'JOB_STOPPED' ? 'was stopped by the operator' : `failed: ${error}`;
    machine.stateReason = `${job.kind} ${job.jobId} ${what}${blockingJobKinds.has(job.kind) ? `; restart it: drctl job restart ${job.jobId}` : ''}`;
  } else {
    machine.state = state;
    machine.stateReason = '';
    if (machine.restartableJobId === job.jobId) machine.restartableJobId = '';
  }
  machines.put(machine);
}
