// The agent's service: describes and reads the configured source disks, and
// builds their hash trees in the worker pool (workers read the disk themselves).
import * as grpc from '@grpc/grpc-js';
import { unaryHandler, unimplemented } from '../../shared/grpc';
import { toServiceError } from '../../shared/errors';
import { HashTree } from '../../shared/hash-tree';
import { HashPool } from '../../shared/hash-pool';
import { hashTreeFanout } from '../../shared/limits';
import { version } from '../../shared/daemon';
import type { Logger } from '../../shared/log';
import type { AgentHandlers } from '../../generated/drplane/v1/Agent';
import type { AgentStatus } from '../../generated/drplane/v1/AgentStatus';
import type { DescribeDisksResponse } from '../../generated/drplane/v1/DescribeDisksResponse';
import type { HashTreeInfo } from '../../generated/drplane/v1/HashTreeInfo';
import type { ReadDiskRequest__Output } from '../../generated/drplane/v1/ReadDiskRequest';
import type { DiskData } from '../../generated/drplane/v1/DiskData';
import { SourceDisks } from './disks';
import { HashTrees } from './hash-trees';
import { streamRanges, validateRanges } from './read-disk';

export class Agent {
  private readonly trees = new HashTrees();
  private bytesRead = 0;

  constructor(
    private readonly name: string,
    readonly disks: SourceDisks,
    private readonly pool: HashPool,
    private readonly log: Logger,
  ) {}

  async describeDisks(paths: readonly string[]): Promise<DescribeDisksResponse> {
    const wanted = paths.length ? paths : this.disks.paths;
    return { disks: await Promise.all(wanted.map((diskPath) => this.disks.describe(diskPath))) };
  }

  async openHashTree(diskPath: string): Promise<HashTreeInfo> {
    const disk = await this.disks.describe(diskPath);
    const leaves = await this.pool.hashFile(disk.path, 0, disk.diskBytes);
    this.bytesRead += disk.diskBytes;
    const open = this.trees.add(disk.path, disk.diskBytes, new HashTree(leaves, hashTreeFanout));
    this.log.info({ disk: disk.path, treeId: open.treeId, diskBytes: disk.diskBytes }, 'hash tree opened');
    return {
      treeId: open.treeId,
      diskBytes: disk.diskBytes,
      leafCount: open.tree.leafCount,
      height: open.tree.height,
      fanout: open.tree.fanout,
      rootHash: open.tree.root,
      bytesRead: disk.diskBytes,
    };
  }

  async readDisk(call: grpc.ServerWritableStream<ReadDiskRequest__Output, DiskData>): Promise<void> {
    const { path: requested, ranges, skipZero } = call.request;
    const disk = await this.disks.describe(requested);
    validateRanges(ranges, disk.diskBytes, disk.path);
    await streamRanges(call, disk.path, ranges, skipZero, (bytes) => (this.bytesRead += bytes));
  }

  status(): AgentStatus {
    return { name: this.name, version, diskPaths: [...this.disks.paths], bytesRead: this.bytesRead, openHashTrees: this.trees.size };
  }

  handlers(): AgentHandlers {
    return {
      ...(unimplemented(['StartCapture', 'StopCapture', 'ListCaptures', 'StreamChanges', 'Write', 'WriteStream', 'TakeAppConsistentPoint', 'PrepareBarrier', 'ReleaseBarrier']) as unknown as Pick<AgentHandlers, 'StartCapture' | 'StopCapture' | 'ListCaptures' | 'StreamChanges' | 'Write' | 'WriteStream' | 'TakeAppConsistentPoint' | 'PrepareBarrier' | 'ReleaseBarrier'>),
      GetStatus: unaryHandler(async () => this.status(), this.log),
      DescribeDisks: unaryHandler(async (request) => this.describeDisks(request.paths), this.log),
      OpenHashTree: unaryHandler(async (request) => this.openHashTree(request.path), this.log),
      GetHashes: unaryHandler(async (request) => ({ hashes: this.trees.children(request.treeId, request.level, request.parents) }), this.log),
      CloseHashTree: unaryHandler(async (request) => (this.trees.close(request.treeId), {}), this.log),
      ReadDisk: (call) => {
        this.readDisk(call).then(
          () => call.end(),
          (error: unknown) => {
            const status = toServiceError(error);
            if (status.code === grpc.status.INTERNAL) this.log.error({ err: error, disk: call.request.path }, 'ReadDisk failed');
            call.emit('error', status);
          },
        );
      },
    };
  }
}
