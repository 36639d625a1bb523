// Recovery points live on the master target that holds each replica; the
// configuration server knows which one that is and asks it.
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument, notFound } from '../../shared/errors';
import { unary } from '../../shared/grpc';
import { pathLengthMax } from '../../shared/limits';
import type { Logger } from '../../shared/log';
import type { RecoveryPoint__Output } from '../../generated/drplane/v1/RecoveryPoint';
import type { MaterialiseMachinePointResponse } from '../../generated/drplane/v1/MaterialiseMachinePointResponse';
import type { MachineRecord, Machines } from './machines';
import { callPeer, type Peers } from './peers';
import type { Servers } from './servers';

/** Materialising copies a whole replica and writes back before-images: allow for large disks. */
export const materialiseTimeoutMs = 60 * 60_000;

/** "<disk_id>@<sequence>", or "<disk_id>@latest" for the newest point of the disk. */
const pointIdPattern = /^(.+)@(\d+|latest)$/;

export class RecoveryPoints {
  constructor(
    private readonly machines: Machines,
    private readonly servers: Servers,
    private readonly peers: Peers,
    private readonly log: Logger,
  ) {}

  async list(request: { machine: string; diskId: string }): Promise<RecoveryPoint__Output[]> {
    const machine = this.machines.get(request.machine);
    const masterTarget = this.servers.require(this.replicatedTo(machine), 'master target');
    let disks = machine.disks;
    if (request.diskId) {
      disks = disks.filter((disk) => disk.diskId === request.diskId);
      if (disks.length === 0) throw notFound(`machine ${machine.name} has no disk ${request.diskId} (its disks: ${machine.disks.map((disk) => disk.diskId).join(', ')})`);
    }
    const client = this.peers.masterTarget(masterTarget);
    const points: RecoveryPoint__Output[] = [];
    for (const disk of disks) {
      try {
        const response = await callPeer(masterTarget, () => unary(client, client.listRecoveryPoints, { diskId: disk.diskId }));
        points.push(...response.recoveryPoints);
      } catch (error) {
        // A disk whose replica is not created yet (initial sync pending) simply has no points.
        if (request.diskId || !(error instanceof DrplaneError) || error.code !== ErrorCode.NotFound) throw error;
      }
    }
    return points;
  }

  async materialise(request: { recoveryPointId: string; path: string }): Promise<MaterialiseMachinePointResponse> {
    const match = pointIdPattern.exec(request.recoveryPointId);
    if (!match) throw invalidArgument(`recovery_point_id: must be <disk_id>@<sequence> (drctl points MACHINE lists them) or <disk_id>@latest, got ${JSON.stringify(request.recoveryPointId)}`);
    if (!request.path) throw invalidArgument('path: required (a new file on the master target, under one of its datastore roots)');
    if (request.path.length > pathLengthMax) throw invalidArgument(`path: at most ${pathLengthMax} characters`);
    const { machine } = this.machines.findDisk(match[1]!);
    const masterTarget = this.servers.require(this.replicatedTo(machine), 'master target');
    const client = this.peers.masterTarget(masterTarget);
    let recoveryPointId = request.recoveryPointId;
    if (match[2] === 'latest') {
      const { recoveryPoints } = await callPeer(masterTarget, () => unary(client, client.listRecoveryPoints, { diskId: match[1]! }));
      const latest = recoveryPoints[recoveryPoints.length - 1];
      if (!latest) throw failedPrecondition(`disk ${match[1]} has no recovery point yet: wait for its initial sync to finish (drctl jobs)`);
      recoveryPointId = latest.id;
    }
    const response = await callPeer(masterTarget, () =>
      unary(client, client.materialiseRecoveryPoint, { recoveryPointId, path: request.path }, { timeoutMs: materialiseTimeoutMs }),
    );
    this.log.info({ recoveryPointId, path: response.path, beforeImageBytes: response.beforeImageBytes, durationMs: response.durationMs }, 'recovery point materialised');
    return {
      path: response.path,
      recoveryPoint: response.recoveryPoint ?? undefined,
      beforeImageBytes: response.beforeImageBytes,
      masterTargetAddress: masterTarget.address,
    };
  }

  private replicatedTo(machine: MachineRecord): string {
    if (!machine.masterTargetId) throw failedPrecondition(`machine ${machine.name} is not replicated: drctl enable ${machine.name} --datastore DIR first`);
    return machine.masterTargetId;
  }
}
