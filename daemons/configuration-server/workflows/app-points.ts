// App-consistent points: the agent runs the machine's freeze hook, puts a
// marker in every disk's change stream, and runs the thaw hook; the point is
// the batch that closes at each marker, once the master target has applied it.
// Taken on demand and on the policy's schedule; never two at once for a machine.
import { DrplaneError, deadlineExceeded, ErrorCode, failedPrecondition, invalidArgument } from '../../../shared/errors';
import { failpoint } from '../../../shared/failpoints';
import { unary } from '../../../shared/grpc';
import { nameLengthMax } from '../../../shared/limits';
import type { Logger } from '../../../shared/log';
import type { MarkersResponse__Output } from '../../../generated/drplane/v1/MarkersResponse';
import type { RecoveryPoint__Output } from '../../../generated/drplane/v1/RecoveryPoint';
import type { HealthEvents } from '../entities/health-events';
import type { Machines } from '../entities/machines';
import { callPeer, peerName, type Peers } from '../entities/peers';
import type { RecoveryPoints } from '../entities/recovery-points';
import type { Servers } from '../entities/servers';
import { BusyKeys } from '../jobs/refusals';
import { HealthCode, type MachineRecord, type MarkedDisk } from '../store/records';

/**
 * Deadline of the agent's TakeAppConsistentPoint: freeze hook, a scan pass
 * read while frozen (scan capture), thaw hook. Each hook is killed by the
 * agent after at most 30 s (hookTimeoutMsMax); the pass reads the whole disk.
 */
export const appPointAgentTimeoutMs = 5 * 60_000;
/** How long TakeAppConsistentPoint waits for the marker's point to be applied before DEADLINE_EXCEEDED. */
export const appPointApplyWaitMs = 60_000;
/** How often the master target is asked whether a marker's point is applied. */
export const pointApplyPollIntervalMs = 250;
/** Tag of the points the schedule takes. */
export const scheduledAppPointTag = 'scheduled';

export class AppConsistentPoints {
  /** Machines with an app-consistent point being taken. */
  readonly taking = new BusyKeys();

  constructor(
    private readonly machines: Machines,
    private readonly servers: Servers,
    private readonly peers: Peers,
    private readonly recoveryPoints: RecoveryPoints,
    private readonly events: HealthEvents,
    private readonly log: Logger,
  ) {}

  async take(request: { machine: string; tag: string }, applyWaitMs = appPointApplyWaitMs): Promise<RecoveryPoint__Output[]> {
    if (request.tag.length > nameLengthMax) throw invalidArgument(`tag: at most ${nameLengthMax} characters`);
    const machine = this.machines.get(request.machine);
    if (machine.state !== 'PROTECTED') throw failedPrecondition(`machine ${machine.name} is ${machine.state}: app-consistent points are taken of a protected machine`);
    return this.taking.run(machine.machineId, `an app-consistent point of ${machine.name}`, async () => {
      const marked = await this.mark(machine, request.tag);
      const points = await waitForPoints(this.recoveryPoints, machine, marked, applyWaitMs, 'APP_CONSISTENT');
      this.log.info({ machine: machine.name, tag: request.tag, points: points.map((point) => point.id) }, 'app-consistent point taken');
      return points;
    });
  }

  /** Freeze, mark, thaw on the agent; a failed freeze hook is a health event until the next success. */
  private async mark(machine: MachineRecord, tag: string): Promise<MarkedDisk[]> {
    const agent = this.servers.require(machine.agentId, 'agent');
    const client = this.peers.agent(agent);
    let response: MarkersResponse__Output;
    try {
      response = await callPeer(agent, () => unary(client, client.takeAppConsistentPoint, { paths: machine.disks.map((disk) => disk.sourcePath), tag }, { timeoutMs: appPointAgentTimeoutMs }));
    } catch (error) {
      if (!(error instanceof DrplaneError) || error.code !== ErrorCode.FailedPrecondition) throw error;
      const message = `the freeze hook failed on ${peerName(agent)}, so no app-consistent point of ${machine.name} was made: ${error.message}`;
      this.events.raise({ code: HealthCode.FreezeHookFailed, subject: machine.machineId, machineId: machine.machineId, severity: 'HEALTH_ERROR', message });
      throw failedPrecondition(message);
    }
    this.events.clear(HealthCode.FreezeHookFailed, machine.machineId);
    return machine.disks.map((disk) => {
      const marker = response.markers.find((candidate) => candidate.path === disk.sourcePath);
      if (!marker) throw new DrplaneError(ErrorCode.Internal, `${peerName(agent)} put no app-consistent marker in the stream of ${disk.sourcePath}`);
      return { diskId: disk.diskId, captureId: marker.captureId, changeSequence: Number(marker.sequence), markerTimeMs: Number(marker.timeMs) };
    });
  }
}

/**
 * Waits until every marked disk's point is applied on the master target (the
 * point whose capture and change sequence are the marker's), polling, for at
 * most waitMs; then DEADLINE_EXCEEDED saying what is still in flight. Fills
 * `point` of each disk as it is found.
 */
export async function waitForPoints(recoveryPoints: RecoveryPoints, machineOf: MachineRecord | ((diskId: string) => MachineRecord), marked: MarkedDisk[], waitMs: number, pointKind: 'APP_CONSISTENT' | 'GROUP_CONSISTENT'): Promise<RecoveryPoint__Output[]> {
  const kind = pointKind === 'APP_CONSISTENT' ? 'app-consistent' : 'group';
  // A fault test looks late, after an idle disk repeated the marker's state as a newer crash-consistent point.
  await failpoint('marker-points.before-lookup');
  const deadline = Date.now() + waitMs;
  const machineFor = typeof machineOf === 'function' ? machineOf : () => machineOf;
  for (;;) {
    for (const disk of marked) {
      if (disk.point) continue;
      try {
        disk.point = await recoveryPoints.pointAtChange(machineFor(disk.diskId), disk.diskId, disk.captureId, disk.changeSequence, pointKind);
      } catch (error) {
        // The master target may be away for a moment; the deadline bounds the wait.
        if (!(error instanceof DrplaneError) || error.code !== ErrorCode.Unavailable) throw error;
      }
    }
    const missing = marked.filter((disk) => !disk.point);
    if (missing.length === 0) return marked.map((disk) => disk.point!);
    if (Date.now() >= deadline) {
      const what = missing.map((disk) => `${disk.diskId} (change ${disk.changeSequence} of capture ${disk.captureId})`).join(', ');
      throw deadlineExceeded(`the ${kind} marker of ${what} is still in flight to the master target after ${Math.round(waitMs / 1000)} s (is the process server or the master target behind or away? drctl status shows the backlog): the point appears in drctl points when it lands`);
    }
    await new Promise((resolve) => setTimeout(resolve, pointApplyPollIntervalMs));
  }
}
