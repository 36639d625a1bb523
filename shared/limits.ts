// Every limit of drplane, with its unit last. Configuration may lower a limit,
// never raise it past the value here: each daemon's config.ts checks a
// configured value against its limit once, at start-up (limitedInteger).
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
/**
 * A process server's batches unless configured otherwise: the master target holds up to three of a stream's batches
 * (applying, queued, arriving), and 16 MiB keeps its peak RSS under 300 MiB with no loss of speed (docs/performance.md).
 */
export const batchBytesDefault = 16 * MiB;
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
/** Worker threads a daemon's hash pool may be configured with (hashThreads), in every daemon. */
export const hashThreadsMax = 64;
/** The configuration server raises RETENTION_VOLUME_LOW for a master target whose retention volume has less than this part of it free. */
export const retentionVolumeLowFreeRatio = 0.1;
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
/**
 * Wrong registration passphrases the configuration server takes from one peer
 * address within registrationFailureWindowMs; past it, every registration from
 * that address is refused (RESOURCE_EXHAUSTED) until the oldest failure is
 * older than the window: 5 guesses a minute make guessing a 20-character
 * passphrase hopeless, and a daemon with the right one is never slowed.
 */
export const registrationFailuresPerPeerMax = 5;
export const registrationFailureWindowMs = 60_000;
/** Peer addresses whose failures are remembered; the longest-quiet one is forgotten first. */
export const registrationPeersTrackedMax = 10_000;
/** How long a daemon waits for in-flight work after SIGTERM before it exits. */
export const shutdownGraceMs = 10_000;
/**
 * Master target: batches of one ApplyBatches stream checked and waiting behind the one being applied. With the
 * batch being received, a stream holds at most (applyQueueBatchesMax + 2) * batchBytesMax of batch data, plus what
 * grpc-js buffers before the applier takes it (up to 16 received frames of about 1 MiB: its stream's high-water
 * mark, which cannot be set) and the HTTP/2 window (flowControlWindowBytes).
 */
export const applyQueueBatchesMax = 1;
/** Master target: bytes of one direct (O_DIRECT) replica write, and such writes in flight, each with a reused buffer of that size. */
export const directWriteBytesMax = 4 * MiB;
export const directWritesInFlightMax = 4;
/** Agent: pieces of one ReadDisk call read ahead or waiting for the stream, each in a reused slot of about extentBytesMax. */
export const readSlotsPerCallMax = 8;
/** Process server: reused frame buffers of one batch stream (frames grpc-js has not taken yet), each a frame of about 1 MiB. */
export const frameBuffersPerStreamMax = 8;
/** HTTP/2 flow-control window for bulk streams (see MEASURED.md: the default 64 KiB window caps a stream at 0.3-0.4 GB/s). */
export const flowControlWindowBytes = 16 * MiB;

// Relations between limits, checked where they are declared.
assert.equal(extentBytesMax % blockBytes, 0, 'an extent is whole blocks');
assert.equal(batchBytesMax % extentBytesMax, 0, 'a batch is whole extents');
assert.ok(batchBytesDefault <= batchBytesMax && batchBytesDefault % extentBytesMax === 0);
assert.ok(messageBytesMax >= 2 * extentBytesMax + 64 * KiB, 'a frame carries at least one full extent with headers');
assert.ok(hashTreeParentsPerRequestMax * hashTreeFanout * 8 + 64 * KiB <= messageBytesMax, 'a GetHashes answer fits in one message');
assert.ok(readRangesPerRequestMax * 24 + 64 * KiB <= messageBytesMax, 'a ReadDisk request fits in one message');
assert.equal(diskBytesMax % blockBytes, 0);
assert.equal(directWriteBytesMax % (64 * KiB), 0, 'a direct-write buffer is whole WebAssembly pages (64 KiB)');
assert.ok(directWriteBytesMax >= extentBytesMax, 'a direct write takes at least one extent');

export const units = { KiB, MiB, GiB, TiB } as const;

// Change capture on the agent (docs/continuous-replication.md).
/** Change records an agent holds per capture until the process server says they are durable; configuration (heldBytesMax) may lower it. */
export const heldBytesMax = 256 * MiB;
/** How long a write waits for held records to be acknowledged before the capture overflows (never forever: the workload must not hang). */
export const captureStallMsMax = 2_000;
/**
 * Record data in one ChangeBatch. The process server reads change batches as a gRPC client, and grpc-js buffers up
 * to 16 received messages per stream beside the HTTP/2 window: 1 MiB keeps that under 32 MiB (4 MiB let it reach
 * 80 MiB), and at 200 MB/s it is only 200 messages a second.
 */
export const changeBatchDataBytesMax = 1 * MiB;
/** Records in one ChangeBatch (markers carry no data, so the byte bound alone would not bound a batch). */
export const changeBatchRecordsMax = 4 * KiB;
/** An idle StreamChanges sends an empty batch with a fresh watermark this often. */
export const watermarkIntervalMs = 1_000;
/** Scan capture: from the start of one pass to the start of the next, when StartCapture gives 0. */
export const scanIntervalMsDefault = 5_000;
/** Scan capture: the shortest interval a caller may ask for. */
export const scanIntervalMsMin = 100;
/** Scan capture: the longest interval a caller may ask for (a day). */
export const scanIntervalMsMax = 24 * 60 * 60 * 1_000;
/** A freeze, thaw or snapshot hook is killed after this long (configuration, hookTimeoutMs, may lower it). */
export const hookTimeoutMsMax = 30_000;
/** Output kept from each stream (stdout, stderr) of a hook; the rest is cut. */
export const hookOutputBytesMax = 16 * KiB;
/** Longest time a group barrier holds a disk's writes (PrepareBarrier hold_ms). */
export const barrierHoldMsMax = 10_000;
/** Write requests of one WriteStream that the agent has accepted and not answered; past it the stream is paused. */
export const writeStreamBytesInFlightMax = 64 * MiB;
/** Writes a WriteThroughClient keeps in flight on its stream by default. */
export const writeThroughInFlightDefault = 32;

/**
 * A zero-run record (TRIM, WRITE_ZEROES, a write of zeros) carries no data but covers up to this many bytes of the
 * disk, like a write's record: one record is one extent on the master target, never split across batches, whose
 * before-image is bounded as any write's.
 */
export const zeroRecordBytesMax = extentBytesMax;
/**
 * What a zero-run record counts against heldBytesMax on the agent and memoryQueueBytesMax on the process server (its
 * data is none): more than the record's object costs in memory, so zero records kept in memory stay bounded too (a
 * TRIM of a whole 64 TiB disk is 64 Mi records).
 */
export const zeroRecordHeldBytes = 256;

assert.ok(heldBytesMax >= 2 * extentBytesMax, 'held records take at least one write of the largest size beside another');
assert.equal(zeroRecordBytesMax, extentBytesMax, 'a zero record is one extent, and any write (at most extentBytesMax) of zeros can be one');
assert.ok(changeBatchDataBytesMax + extentBytesMax + changeBatchRecordsMax * 64 <= messageBytesMax, 'a ChangeBatch fits in one message');
assert.ok(writeStreamBytesInFlightMax >= extentBytesMax);

// Configuration server: policies, groups and health events (continuous replication).
/** A policy's RPO threshold: a disk whose RPO passes it raises a health event. */
export const policyRpoThresholdMsMin = 1_000;
export const policyRpoThresholdMsMax = 24 * 60 * 60_000;
/** A policy's retention window: the master target's bounds for ConfigureReplica (1 second to 30 days). */
export const policyRetentionMsMin = 1_000;
export const policyRetentionMsMax = 30 * 24 * 60 * 60_000;
/** How often a crash-consistent point closes at least (sent to the process server as a uint32). */
export const policyCrashConsistentIntervalMsMin = 100;
export const policyCrashConsistentIntervalMsMax = 60 * 60_000;
/** How often app- and group-consistent points are taken by schedule (0 also allowed: only on demand). */
export const policyScheduledPointIntervalMsMin = 1_000;
export const policyScheduledPointIntervalMsMax = 24 * 60 * 60_000;
/** Health events the configuration server keeps (active and cleared); the oldest go first. */
export const healthEventsStoredMax = 10_000;
/** Group-consistent points kept per replication group; the oldest go first (their member points are pruned by retention anyway). */
export const groupPointsStoredPerGroupMax = 1_000;
/** How long an agent holds writes for a group barrier before the barrier expires (the agent's own limit is 10 s). */
export const groupBarrierHoldMs = 5_000;

assert.ok(policyCrashConsistentIntervalMsMax <= 0xffff_ffff, 'the crash-consistent interval fits the uint32 of StartReplicationRequest');
assert.ok(groupBarrierHoldMs <= barrierHoldMsMax, 'a barrier hold fits the agent limit');

// Process server: replication sessions, the journal in the cache directory (docs/continuous-replication.md).
/** A journal segment file: large enough that deleting applied ones is rare, small enough to free space soon after apply. */
export const journalSegmentBytesMax = 64 * MiB;
/** Recent journal records also kept in memory (configuration, memoryQueueBytesMax, may lower it); older ones are read back from the segments. */
export const memoryQueueBytesMax = 1 * GiB;
/** 16 MiB: older records are read back from the segments, most often still in the page cache (docs/performance.md, Memory). */
export const memoryQueueBytesDefault = 16 * MiB;
/** The journals of every disk in the cache directory; configuration (cacheBytesMax) may lower it, and it never exceeds the cache file system's free space minus cacheFreeBytesMargin. */
export const cacheBytesMax = 64 * TiB;
export const cacheBytesDefault = 8 * GiB;
/** The smallest cache that still holds a few change batches beside the segments being applied. */
export const cacheBytesMin = 32 * MiB;
/** Free space left to the rest of the cache's file system when the cache bound is checked at start-up. */
export const cacheFreeBytesMargin = 256 * MiB;
/** Journal bytes appended and not yet fdatasynced: past it the process server stops reading from the agent until the group commit catches up. */
export const journalUnsyncedBytesMax = 16 * MiB;
/** A batch closes (with a point where the capture allows one) at least this often, when StartReplication gives 0. */
export const crashConsistentIntervalMsDefault = 5_000;
/** StartReplication's crash-consistent interval: the policy's bounds. */
export const crashConsistentIntervalMsMin = policyCrashConsistentIntervalMsMin;
export const crashConsistentIntervalMsMax = policyCrashConsistentIntervalMsMax;
/** FlushReplication waits at most this long (and this long when the caller gives 0). */
export const flushTimeoutMsMax = 10 * 60_000;
/** Replication sessions one process server runs. */
export const replicationsMax = 256;

assert.ok(journalSegmentBytesMax >= 4 * (extentBytesMax + 64 * KiB), 'a segment holds several of the largest records');
assert.ok(cacheBytesMin >= 2 * messageBytesMax + 8 * (extentBytesMax + 64 * KiB), 'the smallest cache holds a change batch being read beside small segments');
assert.ok(memoryQueueBytesDefault <= memoryQueueBytesMax && cacheBytesDefault <= cacheBytesMax);
assert.ok(crashConsistentIntervalMsMin <= crashConsistentIntervalMsDefault && crashConsistentIntervalMsDefault <= crashConsistentIntervalMsMax);

// Retention on the master target (docs/continuous-replication.md, Retention).
/** A replica's retention window when CreateReplica gives 0. */
export const retentionWindowMsDefault = 24 * 60 * 60_000;
/** The shortest and longest retention windows CreateReplica and ConfigureReplica accept (1 second to 30 days). */
export const retentionWindowMsMin = 1_000;
export const retentionWindowMsMax = 30 * 24 * 60 * 60_000;
/** How often the pruner runs, by default and at most (configuration, pruneIntervalMs, chooses within the bounds). */
export const pruneIntervalMsDefault = 1_000;
export const pruneIntervalMsMin = 10;
export const pruneIntervalMsMax = 60_000;
/** Keys the pruner deletes in one LMDB transaction: a commit stays short, so apply never waits long behind it (configuration, pruneKeysPerTransaction, may lower it). */
export const pruneKeysPerTransactionMax = 1_000;
/** Free space the retention volume must have at start-up (configuration, retentionFreeBytesMin, may change it). */
export const retentionFreeBytesMin = 256 * MiB;
/** The most free space an operator may require of the retention volume (a bound on the configured retentionFreeBytesMin). */
export const retentionFreeBytesMinConfiguredMax = 64 * TiB;

assert.ok(retentionWindowMsMin <= retentionWindowMsDefault && retentionWindowMsDefault <= retentionWindowMsMax);
assert.ok(policyRetentionMsMin >= retentionWindowMsMin && policyRetentionMsMax <= retentionWindowMsMax, "a policy's retention window is one the master target accepts");
assert.ok(pruneIntervalMsMin <= pruneIntervalMsDefault && pruneIntervalMsDefault <= pruneIntervalMsMax);
/** Hook output quoted in an error or status: a gRPC status message travels in a trailer, and grpc-js caps metadata at 8 KiB. */
export const hookErrorOutputBytesMax = 2 * KiB;

// Configuration server: recovery plans and database backups (docs/control-plane.md).
/** Machines in one recovery plan, each member of a group counted (ASR: up to 100 protected items per plan). */
export const recoveryPlanMembersMax = 100;
/** Bytes of database in one BackupChunk: well below messageBytesMax, so a chunk and its header always fit. */
export const backupChunkBytes = 1 * MiB;
/** Backups streamed at once: each is a full copy of the database in the data directory while it streams. */
export const backupsRunningMax = 2;

assert.ok(backupChunkBytes + 64 * KiB <= messageBytesMax, 'a BackupChunk fits in one message');

// Master target: failover, commit and test-failover cleanup (docs/failover.md).
/** The master target's start hook (StartMachine) is killed after this long; configuration (hookTimeoutMs) chooses within the bounds. A machine may take minutes to boot, so this is longer than the agent's hooks; a caller's deadline must exceed the configured value. */
export const startHookTimeoutMsMax = 10 * 60_000;
/** Below the default gRPC call deadline (30 s), so a failing hook is reported as its own error rather than a caller's timeout. */
export const startHookTimeoutMsDefault = 20_000;
export const startHookTimeoutMsMin = 100;
/** The tail of a start hook's combined output kept in StartMachineResponse.output. */
export const startHookOutputBytesMax = 4 * KiB;
/** StartMachine calls running or waiting for their machine's previous hook at once; more are refused (RESOURCE_EXHAUSTED). */
export const startMachineCallsMax = 16;

assert.ok(startHookTimeoutMsMin <= startHookTimeoutMsDefault && startHookTimeoutMsDefault <= startHookTimeoutMsMax);
assert.ok(hookErrorOutputBytesMax <= startHookOutputBytesMax, 'the output quoted in an error is a tail of the output kept');

// Agent: planned failover (ShutdownSource, docs/failover.md).
/** The tail of the shutdown hook's combined output kept in ShutdownSourceResponse.hook_output. */
export const shutdownHookOutputBytesMax = 4 * KiB;
/** ShutdownSource's reason: it is quoted in every refused write, so it must fit a gRPC status message beside the path. */
export const shutdownReasonLengthMax = 512;

/**
 * Process server: a replica's block hashes (8 bytes per 4 KiB block) held while a scan capture's first pass is
 * filtered against them (first-pass-filter.ts); 1 GiB covers a 512 GiB disk. A larger replica's first pass sends every block.
 */
export const firstPassReplicaHashBytesMax = 1 * GiB;
/** Agent: replica hashes held for scan captures about to start (PutScanBaseline), all disks together. */
export const scanBaselineBytesMax = firstPassReplicaHashBytesMax;

assert.ok(hookErrorOutputBytesMax <= shutdownHookOutputBytesMax, 'the output quoted in a shutdown error is a tail of the output kept');
assert.ok(shutdownReasonLengthMax + pathLengthMax + 256 <= 8 * KiB, 'a refused write quoting the reason fits a gRPC status message');

// Agent: the NBD server of the source disks (daemons/agent/nbd-server.ts, docs/nbd.md).
/**
 * The largest READ or WRITE payload, advertised as the maximum payload in NBD_INFO_BLOCK_SIZE. The NBD protocol asks
 * a server to take at least 2^25 bytes from a client that did not ask for size constraints (nbd-client, old qemu).
 */
export const nbdRequestBytesMax = 32 * MiB;
/** The preferred block size advertised: writes of whole 4 KiB blocks need no read-modify-write. */
export const nbdPreferredBlockBytes = blockBytes;
/**
 * Payload bytes of one connection's requests accepted and not yet answered (writes being applied, read replies not
 * yet taken by the socket); past it the server stops reading that connection's requests until answers go out.
 */
export const nbdConnectionBytesInFlightMax = 64 * MiB;
/** Requests of one connection accepted and not yet answered (bounds a flood of FLUSH or zero-length commands). */
export const nbdRequestsInFlightMax = 256;
/** NBD connections served at once; more are closed at once (each may hold nbdConnectionBytesInFlightMax). */
export const nbdConnectionsMax = 64;
/** One option's data during the handshake (an export name is at most 4096 bytes); a longer one closes the connection. */
export const nbdOptionBytesMax = 64 * KiB;
/** Options one connection may send before it chooses an export; past it the connection is closed (a client looping). */
export const nbdOptionsPerConnectionMax = 1024;
/** A connection must have chosen an export this long after it was accepted, or it is closed. */
export const nbdHandshakeTimeoutMs = 30_000;
/**
 * NBD writes of one disk applied at once (their blocks distinct: a write over blocks another is writing waits for it).
 * Writes over 64 KiB and fdatasyncs go to libuv's thread pool (4 threads): 8 keeps it busy with the next ones ready,
 * and bounds how far held records may pass heldBytesMax (each write checks for room before it writes).
 */
export const nbdWritesInFlightPerDiskMax = 8;

assert.ok(nbdRequestBytesMax >= 32 * MiB, 'the NBD protocol: a server takes payloads of 2^25 bytes from clients that did not negotiate sizes');
assert.ok(nbdConnectionBytesInFlightMax >= nbdRequestBytesMax, 'one request of the largest size is always admitted');
assert.ok(nbdPreferredBlockBytes >= 512 && (nbdPreferredBlockBytes & (nbdPreferredBlockBytes - 1)) === 0, 'the NBD preferred block size is a power of 2, at least 512');
assert.ok(nbdOptionBytesMax >= 4 + pathLengthMax + 2 + 2 * 64, 'an NBD_OPT_GO naming an export by its longest path fits');

// Integrity holes (issue 13): source clocks and epochs.
/**
 * A point's source time comes from the agent's clock. One further ahead of the process server's clock than this is
 * dated with the process server's clock instead (and SOURCE_CLOCK_SKEW is raised): a point dated in the future would
 * stay inside every retention window, and stop pruning, until that future came. A minute covers NTP-kept clocks
 * with room; the master target bounds what it records by the same amount against its own clock.
 */
export const sourceClockSkewMsMax = 60_000;
/**
 * The most a SetEpoch or RetireReplica may raise a replica's epoch at once. The configuration server raises a disk's
 * epoch by one per change of ownership (enable, failover, reprotect), so a replica left behind on one master target
 * trails by a few per failover cycle; a thousand is far beyond any real history. Unbounded, one call with 2^53-1
 * would leave no newer epoch to issue and fence the disk for ever.
 */
export const epochStepMax = 1_000;

// Configuration server: ended jobs kept (succeeded, failed, stopped). Nothing deleted them, so the database grew by
// every job ever run. A job that a machine, a plan or a kept job still names (a failed failback to restart, a plan's
// children) is kept whatever these say. Configuration (endedJobsKeptMax, endedJobAgeMsMax) may lower them.
/** Ended jobs kept: the oldest beyond this many are deleted. */
export const endedJobsKeptMax = 10_000;
/** An ended job older than the configured age (default endedJobAgeMsDefault, at most this) is deleted. */
export const endedJobAgeMsMax = 365 * 24 * 60 * 60_000;
/** Thirty days: longer than any retention window (policyRetentionMsMax), so a point's job outlives the point. */
export const endedJobAgeMsDefault = 30 * 24 * 60 * 60_000;
/** The shortest age configuration may set (tests lower it; production keeps days). */
export const endedJobAgeMsMin = 1_000;

assert.ok(endedJobAgeMsMin <= endedJobAgeMsDefault && endedJobAgeMsDefault <= endedJobAgeMsMax);
assert.ok(endedJobAgeMsDefault >= policyRetentionMsMax, 'an ended job outlives the points it made');

// Resources a caller can hold (issue 13): streams per peer, idle streams, barriers, hash-tree memory.
// A peer is a certificate's name under mTLS, an address otherwise (shared/stream-guard.ts).
/**
 * ApplyBatches streams one peer holds on a master target: a process server keeps one per disk it replicates or
 * syncs there, and a retry may overlap the stream it replaces for a moment. Each may hold
 * (applyQueueBatchesMax + 2) * batchBytesMax of batch data.
 */
export const batchStreamsPerPeerMax = 2 * disksPerMasterTargetMax;
/**
 * An ApplyBatches stream that neither sends a frame nor is sent an acknowledgement for this long is ended
 * (DEADLINE_EXCEEDED). An idle disk still gets a batch per crash-consistent interval, whose longest is an hour.
 */
export const batchStreamIdleMsMax = crashConsistentIntervalMsMax + 10 * 60_000;
/** StreamChanges streams one peer holds on an agent: one per captured disk, and a replacement overlapping for a moment. */
export const changeStreamsPerPeerMax = 2 * disksPerMachineMax;
/**
 * A StreamChanges stream whose caller neither sends (the first request, acknowledgements) nor takes a message
 * (the agent sends a watermark every watermarkIntervalMs) for this long is ended (DEADLINE_EXCEEDED).
 */
export const changeStreamIdleMsMax = 5 * 60_000;
/** ReadDisk calls one peer holds on an agent (a sync reads with one at a time; each holds readSlotsPerCallMax slots). */
export const readDiskCallsPerPeerMax = disksPerMachineMax;
/** A ReadDisk call whose caller takes nothing for this long is ended (its read-ahead slots and file handle freed). */
export const readDiskIdleMsMax = 5 * 60_000;
/** Backup streams one peer holds (backupsRunningMax for everyone): one operator cannot take every backup slot. */
export const backupStreamsPerPeerMax = 1;
/** A Backup stream whose caller takes nothing for this long is ended and its copy of the database deleted. */
export const backupIdleMsMax = 5 * 60_000;
/**
 * Group barriers an agent remembers (prepared, or expired and kept for their ReleaseBarrier's answer). Past it the
 * oldest expired one is forgotten; with none expired, PrepareBarrier is refused (RESOURCE_EXHAUSTED).
 */
export const barriersKeptMax = 1_024;

/**
 * Memory of one open hash tree: 8 bytes per node of the levels it keeps (the agent keeps its leaves, 8 bytes per
 * 4 KiB block; the master target the levels above them). Checked before the tree is built, so a sparse giant is
 * refused (RESOURCE_EXHAUSTED) instead of allocated: 2 GiB is an agent's disk of 0.9 TiB, a master target's of 15 TiB.
 */
export const hashTreeBytesMax = 2 * GiB;
/** Memory of every hash tree a daemon keeps open; opening one more closes the oldest until it fits. */
export const hashTreesBytesMax = 4 * GiB;

assert.ok(hashTreeBytesMax <= hashTreesBytesMax, 'one tree of the largest size can be opened');
assert.ok(batchStreamIdleMsMax > crashConsistentIntervalMsMax + heartbeatIntervalMs, 'an idle disk sends a batch before its stream is idle');
assert.ok(changeStreamIdleMsMax > 10 * watermarkIntervalMs, 'a reading caller takes watermarks long before its stream is idle');
assert.ok(backupStreamsPerPeerMax <= backupsRunningMax, 'one peer cannot take more backups than run at once');
assert.ok(barriersKeptMax >= recoveryPlanMembersMax, 'a plan of single machines can hold one barrier each');
