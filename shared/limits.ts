// Every limit of drplane, with its unit last. Configuration may lower a limit,
// never raise it past the value here (see checkConfiguredLimit).
import assert from 'node:assert/strict';

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;

/** The unit of comparison, of hashing and of alignment: a scattered 4 KiB write costs about 4 KiB on the wire. */
export const blockBytes = 4 * KiB;
/** The largest extent in a batch frame, and the piece size the agent reads and streams. */
export const extentBytesMax = 1 * MiB;
/** The plain bytes of one batch; the master target buffers a batch before applying it. */
export const batchBytesMax = 32 * MiB;
/** Extents in one batch. */
export const batchExtentsMax = 32 * KiB;
/** A gRPC message (either direction) on every daemon; larger ones are refused with RESOURCE_EXHAUSTED. */
export const messageBytesMax = 8 * MiB;
/** Batches a process server sends before it waits for an acknowledgement. */
export const batchesInFlightMax = 4;
/** Replica disks one master target serves (the seeds: "up to 60 disks"). */
export const disksPerMasterTargetMax = 60;
/** The largest disk drplane replicates. */
export const diskBytesMax = 64 * TiB;
/** Failbacks that run at once; more wait in a queue (the seeds: "a maximum of three concurrent failbacks"). */
export const concurrentFailbacksMax = 3;
/** Children per node of the hash tree. */
export const hashTreeFanout = 16;
/** Parent nodes in one GetHashes request (the answer is at most fanout * 8 bytes each). */
export const hashTreeParentsPerRequestMax = 16 * KiB;
/** Hash trees a daemon keeps open at once (each holds 8 bytes per block of its disk). */
export const hashTreesOpenMax = 8;
/** Ranges in one ReadDisk request. */
export const readRangesPerRequestMax = 64 * KiB;
/** Disks of one protected machine. */
export const disksPerMachineMax = 64;
/** Length of names and ids given by operators. */
export const nameLengthMax = 128;
/** Length of a path given by an operator or a peer. */
export const pathLengthMax = 4 * KiB;
/** Heartbeats a server sends per interval; missing three makes it unhealthy. */
export const heartbeatIntervalMs = 5_000;
/** How long a daemon waits for in-flight work after SIGTERM before it exits. */
export const shutdownGraceMs = 10_000;
/** HTTP/2 flow-control window for bulk streams (see MEASURED.md: the default 64 KiB window caps a stream at 0.3-0.4 GB/s). */
export const flowControlWindowBytes = 16 * MiB;

// Relations between limits, checked where they are declared.
assert.equal(extentBytesMax % blockBytes, 0, 'an extent is whole blocks');
assert.equal(batchBytesMax % extentBytesMax, 0, 'a batch is whole extents');
assert.ok(messageBytesMax >= 2 * extentBytesMax + 64 * KiB, 'a frame carries at least one full extent with headers');
assert.ok(hashTreeParentsPerRequestMax * hashTreeFanout * 8 + 64 * KiB <= messageBytesMax, 'a GetHashes answer fits in one message');
assert.ok(readRangesPerRequestMax * 24 + 64 * KiB <= messageBytesMax, 'a ReadDisk request fits in one message');
assert.equal(diskBytesMax % blockBytes, 0);

/** Checks a configured value against its limit: configuration may lower a limit, never exceed it. */
export function checkConfiguredLimit(key: string, value: number, max: number, min = 1): number {
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new RangeError(`${key} must be an integer from ${min} to ${max}, got ${value}`);
  }
  return value;
}

export const units = { KiB, MiB, GiB, TiB } as const;
