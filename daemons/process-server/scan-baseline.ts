// A scan capture's baseline (process server): what a new capture's first pass
// compares the source with. The replica's block hashes are fetched from the
// master target (replicaContent) and given to the agent (putScanBaseline), so
// only the blocks that differ cross either hop (docs/continuous-replication.md,
// "Scan against a replica that holds data").
import { Metadata as grpcMetadata } from '@grpc/grpc-js';
import { unary } from '../../shared/grpc';
import { hashBytes } from '../../shared/hashing';
import { blockBytes, firstPassReplicaHashBytesMax, hashTreeParentsPerRequestMax, units } from '../../shared/limits';
import { failedPrecondition } from '../../shared/errors';
import type { Logger } from '../../shared/log';
import type { AgentClient, MasterTargetClient } from '../../shared/proto';
import type { Replica__Output } from '../../generated/drplane/v1/Replica';
import type { ScanBaseline__Output } from '../../generated/drplane/v1/ScanBaseline';
import { hashTreeOpenTimeoutMs } from './sync';

/** Replica hashes in one PutScanBaseline message (512 Ki blocks: 2 GiB of disk). */
const scanBaselineChunkBytes = 4 * units.MiB;

/** What these need of the replication session. */
export interface BaselineSession {
  diskId: string;
  sourcePath: string;
  masterTarget: MasterTargetClient;
  /** The master target, as named in error messages. */
  masterTargetPeer: string;
  log: Logger;
  /** One call to a peer, its failure named after the peer; a stop ends the wait. */
  ask<T>(peer: string, call: Promise<T>, signal: AbortSignal): Promise<T>;
  /** The replica's record, from the master target. */
  replica(signal: AbortSignal): Promise<Replica__Output>;
}

/**
 * Gives the agent the replica's block hashes for the next capture's first
 * pass (PutScanBaseline), in chunks well under a message; false when the
 * agent does not know the call (an older agent: the sender filters instead).
 */
export async function putScanBaseline(session: BaselineSession, agent: AgentClient, hashes: Buffer, ask: <T>(call: Promise<T>) => Promise<T>): Promise<boolean> {
  const put = new Promise<boolean>((resolve, reject) => {
    // Any refusal (an older agent: UNIMPLEMENTED; its baseline budget full: RESOURCE_EXHAUSTED) falls back to the
    // sender's filter, which is slower on the first hop but needs nothing of the agent; a wedged agent times out.
    const call = agent.putScanBaseline(new grpcMetadata(), { deadline: Date.now() + hashTreeOpenTimeoutMs(hashes.length * (blockBytes / hashBytes)) }, (error) => {
      if (!error) resolve(true);
      else {
        session.log.warn({ diskId: session.diskId, code: error.code, err: error.details }, "the agent did not take the replica's hashes");
        resolve(false);
      }
    });
    void (async () => {
      for (let at = 0; at === 0 || at < hashes.length; at += scanBaselineChunkBytes) {
        const chunk = { path: at === 0 ? session.sourcePath : '', blockHashes: hashes.subarray(at, at + scanBaselineChunkBytes) };
        if (!call.write(chunk)) await new Promise((wake) => call.once('drain', wake));
      }
      call.end();
    })().catch(reject);
  });
  const atAgent = await ask(put);
  session.log.info({ diskId: session.diskId, hashBytes: hashes.length, atAgent }, atAgent ? "the agent filters the first scan pass against the replica's hashes" : 'the agent cannot take a scan baseline: the sender filters the first pass');
  return atAgent;
}

/**
 * What a new scan capture's first pass compares the source with: EMPTY when
 * the replica is all zeros (the root of its hash tree is 0), else UNKNOWN
 * with the replica's block hashes (8 bytes per 4 KiB block) for the
 * first-pass filter, fetched at level 0 in bounded GetHashes requests. The
 * sender is paused (a restart is pending), so nothing changes the replica
 * meanwhile; a batch of the old capture still landing shows in the applied
 * sequence, and the hashes are fetched again. A replica too large to hold
 * its hashes here gets UNKNOWN without a filter (every block is sent).
 */
export async function replicaContent(session: BaselineSession, replica: Replica__Output, rescan: boolean, signal: AbortSignal): Promise<{ scanBaseline: ScanBaseline__Output; hashes?: Buffer }> {
  const { masterTarget, masterTargetPeer: peer } = session;
  const ask = <T>(call: Promise<T>) => session.ask(peer, call, signal);
  const leafCount = replica.diskBytes / blockBytes;
  const tooLarge = leafCount * hashBytes > firstPassReplicaHashBytesMax;
  for (let appliedBefore = replica.appliedSequence; ; ) {
    const info = await ask(unary(masterTarget, masterTarget.openHashTree, { diskId: session.diskId, rescan }, { timeoutMs: hashTreeOpenTimeoutMs(replica.diskBytes) }));
    let hashes: Buffer | undefined;
    try {
      if (info.leafCount !== leafCount) throw failedPrecondition(`${peer} opened a hash tree of ${info.leafCount} blocks for replica ${session.diskId} of ${replica.diskBytes} bytes`);
      if (info.rootHash.readBigUInt64LE(0) !== 0n) {
        if (tooLarge) {
          session.log.warn({ diskId: session.diskId, diskBytes: replica.diskBytes, hashBytes: leafCount * hashBytes, max: firstPassReplicaHashBytesMax }, 'the replica is too large to hold its block hashes here: the first scan pass sends every block');
          return { scanBaseline: 'SCAN_BASELINE_UNKNOWN' };
        }
        if (info.height === 0) hashes = Buffer.from(info.rootHash);
        else {
          const parentCount = Math.ceil(leafCount / info.fanout);
          const parts: Buffer[] = [];
          for (let first = 0; first < parentCount; first += hashTreeParentsPerRequestMax) {
            const parents = Array.from({ length: Math.min(hashTreeParentsPerRequestMax, parentCount - first) }, (_, index) => first + index);
            parts.push((await ask(unary(masterTarget, masterTarget.getHashes, { treeId: info.treeId, level: 0, parents }))).hashes);
          }
          hashes = Buffer.concat(parts);
          if (hashes.length !== leafCount * hashBytes) throw failedPrecondition(`${peer} sent ${hashes.length} bytes of block hashes for replica ${session.diskId}, expected ${leafCount * hashBytes}`);
        }
      }
    } finally {
      unary(masterTarget, masterTarget.closeHashTree, { treeId: info.treeId }, { timeoutMs: 5_000 }).catch(() => undefined);
    }
    const after = await session.replica(signal);
    if (after.appliedSequence === appliedBefore) {
      session.log.info({ diskId: session.diskId, rescan, allZero: !hashes, hashBytes: hashes?.length ?? 0, bytesRead: info.bytesRead }, 'replica block hashes fetched for the first scan pass');
      return hashes ? { scanBaseline: 'SCAN_BASELINE_UNKNOWN', hashes } : { scanBaseline: 'SCAN_BASELINE_EMPTY' };
    }
    appliedBefore = after.appliedSequence;
    rescan = false;
  }
}
