// Group-consistent points of a replication group. A group point is a barrier: every member's agent
// holds new writes and puts a group marker in each disk's stream
// (PrepareBarrier); only when all have answered are they released. So no
// member's write after the point can precede another member's write before it:
// the markers cut the members' writes at one instant. A barrier that expired on
// some agent before its release (or failed anywhere) is not a group point.
import crypto from 'node:crypto';
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument } from '../../../shared/errors';
import { unary } from '../../../shared/grpc';
import { groupBarrierHoldMs, groupPointsStoredPerGroupMax, nameLengthMax } from '../../../shared/limits';
import type { GroupPoint } from '../../../generated/drplane/v1/GroupPoint';
import type { MarkersResponse__Output } from '../../../generated/drplane/v1/MarkersResponse';
import type { Groups } from '../entities/groups';
import type { HealthEvents } from '../entities/health-events';
import { callPeer, peerName } from '../entities/peers';
import type { RecoveryPoints } from '../entities/recovery-points';
import { errorMessage } from '../jobs/peer-calls';
import { BusyKeys } from '../jobs/refusals';
import { type DiskRecord, type GroupPointRecord, type GroupRecord, HealthCode, type MachineRecord, type ServerRecord } from '../store/records';
import { waitForPoints } from './app-points';
import type { WorkflowContext } from '../jobs/workflow-context';

/** How long TakeGroupPoint waits for the members' points to be applied; after it, the point is answered incomplete. */
export const groupPointApplyWaitMs = 30_000;
/** Deadline of ReleaseBarrier (it only lifts a hold). */
export const barrierReleaseTimeoutMs = 5_000;
/** ListGroupPoints looks up the members of at most this many incomplete points per call (newest first). */
export const groupPointsRefreshedMax = 16;
/** Tag of the points the schedule takes. */
export const scheduledGroupPointTag = 'scheduled';

/** Store key of a group point: its group, then its number zero-padded, so a group's points scan oldest first. */
const pointKey = (groupId: string, groupPointId: string) => `${groupId}/${groupPointId.slice(groupPointId.lastIndexOf('-') + 1).padStart(12, '0')}`;

export class GroupPoints {
  /** Groups with a point being taken. */
  readonly taking = new BusyKeys();

  constructor(
    private readonly context: WorkflowContext,
    private readonly groups: Groups,
    private readonly recoveryPoints: RecoveryPoints,
    private readonly events: HealthEvents,
  ) {}

  /** Takes a group point now: the barrier on every member, then the members' points as the master target applies them. */
  async takePoint(request: { group: string; tag: string }, applyWaitMs = groupPointApplyWaitMs): Promise<GroupPointRecord> {
    if (request.tag.length > nameLengthMax) throw invalidArgument(`tag: at most ${nameLengthMax} characters`);
    const group = this.groups.get(request.group);
    const members = group.machineIds.map((machineId) => this.context.machines.current(machineId));
    const notProtected = members.filter((machine) => machine.state !== 'PROTECTED');
    if (notProtected.length > 0) {
      throw failedPrecondition(`replication group ${group.name}: a group point needs every member protected; ${notProtected.map((machine) => `${machine.name} is ${machine.state}`).join(', ')}`);
    }
    return this.taking.run(group.groupId, `a group point of ${group.name}`, async () => {
      const barrierId = `barrier-${crypto.randomBytes(8).toString('hex')}`;
      const marked = await this.barrier(group, members, barrierId);
      const record = this.context.store.write(() => {
        const point: GroupPointRecord = {
          groupPointId: `gp-${this.context.store.next('group-point')}`,
          groupId: group.groupId,
          barrierId,
          timeMs: Date.now(),
          tag: request.tag,
          members: marked,
          complete: false,
        };
        this.context.store.groupPoints.putSync(pointKey(group.groupId, point.groupPointId), point);
        this.pruneOldPoints(group.groupId);
        return point;
      });
      this.context.log.info({ group: group.name, groupPointId: record.groupPointId, barrierId, tag: request.tag }, 'group barrier released: waiting for the members\' points');
      return await this.fill(record, applyWaitMs);
    });
  }

  /** A group's points, oldest first; the incomplete ones are looked up again. */
  async listPoints(idOrName: string): Promise<GroupPointRecord[]> {
    const group = this.groups.get(idOrName);
    const points = [...this.context.store.groupPoints.getRange({ start: `${group.groupId}/`, end: `${group.groupId}/\uffff` }).map(({ value }) => value)];
    const incomplete = points.filter((point) => !point.complete).slice(-groupPointsRefreshedMax);
    for (const point of incomplete) {
      try {
        const filled = await this.fill(point, 0);
        points[points.indexOf(point)] = filled;
      } catch (error) {
        this.context.log.debug({ groupPointId: point.groupPointId, err: errorMessage(error) }, 'could not look up the members of a group point');
      }
    }
    return points;
  }

  pointToProto(record: GroupPointRecord): GroupPoint {
    return {
      groupPointId: record.groupPointId,
      groupId: record.groupId,
      barrierId: record.barrierId,
      timeMs: record.timeMs,
      tag: record.tag,
      complete: record.complete,
      members: record.members.map(
        (member) =>
          member.point ?? {
            id: '',
            diskId: member.diskId,
            kind: 'GROUP_CONSISTENT',
            sourceTimeMs: member.markerTimeMs,
            tag: record.barrierId,
            captureId: member.captureId,
            changeSequence: member.changeSequence,
          },
      ),
    };
  }

  /**
   * PrepareBarrier on every member's agent at once (one call per agent, with
   * the paths of its members' disks), then ReleaseBarrier on all. Any failure,
   * or a barrier that expired before its release, releases the rest, raises
   * GROUP_BARRIER_FAILED and answers ABORTED: that is not a group point.
   */
  private async barrier(group: GroupRecord, members: MachineRecord[], barrierId: string): Promise<GroupPointRecord['members']> {
    const byAgent = new Map<string, { agent: ServerRecord; disks: { machine: MachineRecord; disk: DiskRecord }[] }>();
    for (const machine of members) {
      const agent = this.context.servers.require(machine.agentId, `agent of ${machine.name}`);
      let entry = byAgent.get(agent.serverId);
      if (!entry) byAgent.set(agent.serverId, (entry = { agent, disks: [] }));
      for (const disk of machine.disks) entry.disks.push({ machine, disk });
    }
    const agents = [...byAgent.values()];
    const started = Date.now();
    const prepared = await Promise.allSettled(
      agents.map(({ agent, disks }) => {
        const client = this.context.peers.agent(agent);
        // A prepare slower than the hold would find the first agents' barriers expired: it has that long.
        return callPeer(agent, () => unary(client, client.prepareBarrier, { barrierId, paths: disks.map(({ disk }) => disk.sourcePath), holdMs: groupBarrierHoldMs }, { timeoutMs: groupBarrierHoldMs }));
      }),
    );
    const preparedMs = Date.now() - started;
    const released = await Promise.allSettled(
      agents.map(({ agent }, index) => {
        // Release even an agent whose prepare failed on our side: it may have prepared after all.
        const client = this.context.peers.agent(agent);
        return callPeer(agent, () => unary(client, client.releaseBarrier, { barrierId }, { timeoutMs: barrierReleaseTimeoutMs })).catch((error: unknown) => {
          if (prepared[index]!.status === 'rejected') return { heldMs: 0, expired: false };
          throw error;
        });
      }),
    );
    const problems: string[] = [];
    agents.forEach(({ agent }, index) => {
      const prepare = prepared[index]!;
      const release = released[index]!;
      if (prepare.status === 'rejected') problems.push(`prepare on ${peerName(agent)} failed: ${errorMessage(prepare.reason)}`);
      else if (release.status === 'rejected') problems.push(`release on ${peerName(agent)} failed: ${errorMessage(release.reason)}`);
      else if (release.value.expired) problems.push(`the barrier on ${peerName(agent)} expired after ${groupBarrierHoldMs} ms, before every agent had prepared (prepare took ${preparedMs} ms)`);
    });
    if (problems.length > 0) {
      const message = `group barrier ${barrierId} of ${group.name} failed, so no group point was made: ${problems.join('; ')}`;
      this.events.raise({ code: HealthCode.GroupBarrierFailed, subject: group.groupId, severity: 'HEALTH_WARNING', message });
      throw new DrplaneError(ErrorCode.Aborted, message);
    }
    this.events.clear(HealthCode.GroupBarrierFailed, group.groupId);
    const marked: GroupPointRecord['members'] = [];
    agents.forEach(({ agent, disks }, index) => {
      const response = (prepared[index] as PromiseFulfilledResult<MarkersResponse__Output>).value;
      for (const { machine, disk } of disks) {
        const marker = response.markers.find((candidate) => candidate.path === disk.sourcePath);
        if (!marker) throw new DrplaneError(ErrorCode.Internal, `${peerName(agent)} put no group marker in the stream of ${disk.sourcePath}`);
        marked.push({ diskId: disk.diskId, machineId: machine.machineId, captureId: marker.captureId, changeSequence: Number(marker.sequence), markerTimeMs: Number(marker.timeMs) });
      }
    });
    return marked;
  }

  /** Looks up the members' points (waiting up to waitMs), and records what it found. */
  private async fill(point: GroupPointRecord, waitMs: number): Promise<GroupPointRecord> {
    const members = point.members.map((member) => ({ ...member }));
    let complete = false;
    try {
      await waitForPoints(this.recoveryPoints, (diskId) => this.context.machines.current(members.find((member) => member.diskId === diskId)!.machineId), members, waitMs, 'GROUP_CONSISTENT');
      complete = true;
    } catch (error) {
      if (!(error instanceof DrplaneError && error.code === ErrorCode.DeadlineExceeded)) throw error;
    }
    const found = members.filter((member) => member.point).length;
    if (found === point.members.filter((member) => member.point).length && !complete) return point;
    const next: GroupPointRecord = { ...point, members, complete };
    this.context.store.write(() => {
      const key = pointKey(point.groupId, point.groupPointId);
      if (this.context.store.groupPoints.get(key)) this.context.store.groupPoints.putSync(key, next);
      const group = this.context.store.groups.get(point.groupId);
      if (complete && group && pointNumber(next.groupPointId) > pointNumber(group.latestGroupPointId)) this.context.store.groups.putSync(group.groupId, { ...group, latestGroupPointId: next.groupPointId });
    });
    if (complete) this.context.log.info({ groupPointId: point.groupPointId, members: members.map((member) => member.point?.id) }, 'group point complete');
    return next;
  }

  /** Keeps the newest groupPointsStoredPerGroupMax points of a group; call inside store.write(). */
  private pruneOldPoints(groupId: string): void {
    const keys = [...this.context.store.groupPoints.getKeys({ start: `${groupId}/`, end: `${groupId}/\uffff` })];
    for (const key of keys.slice(0, Math.max(0, keys.length - groupPointsStoredPerGroupMax))) this.context.store.groupPoints.removeSync(key);
  }
}

function pointNumber(groupPointId: string): number {
  return Number(groupPointId.slice(groupPointId.lastIndexOf('-') + 1)) || 0;
}
