// The agent's configuration: the schema (validated at start-up; an error names the key),
// the flags that set its keys, the defaults and the usage text. Every key is
// documented in docs/configuration.md (test/unit/configuration-reference.test.ts keeps the two together).
import os from 'node:os';
import { z } from 'zod';
import { commonConfig, limitedInteger, configurationServerLink, usageText, type FlagSpec } from '../../shared/config';
import { extentBytesMax, hashThreadsMax, heldBytesMax, hookTimeoutMsMax, pathLengthMax } from '../../shared/limits';

/** A hook is a shell command (run with /bin/sh -c); only the agent's own configuration sets one. */
const hookCommand = z.string().min(1).max(pathLengthMax);

/** The shortest hook timeout that may be configured. */
const hookTimeoutMsMin = 100;

const paths = (what: string) => z.array(z.string().min(1).max(pathLengthMax), { error: (issue) => `must be a list of ${what}, got ${JSON.stringify(issue.input)}` });

export const schema = commonConfig
  .extend({
    /** Paths this agent reads and writes (image files or block devices). */
    disks: paths('paths').default([]),
    /** Directories under which any image file or block device may be read and written too (e.g. a datastore's recovered/ folder). */
    diskRoots: paths('directories').default([]),
    /** Worker threads that hash disks (default: min(cores, 4)). */
    hashThreads: limitedInteger('hashThreads', 1, hashThreadsMax, 'threads').optional(),
    configurationServer: configurationServerLink.optional(),
    /** Bytes of change records held per capture until acknowledged; past it a capture overflows (resync). */
    heldBytesMax: limitedInteger('heldBytesMax', extentBytesMax, heldBytesMax, 'bytes').default(heldBytesMax),
    /** Freeze, thaw, snapshot and shutdown hooks: shell commands with DRPLANE_DISKS, DRPLANE_TAG (and DRPLANE_SNAPSHOT, DRPLANE_MACHINE) in their environment. */
    hooks: z.strictObject({ freeze: hookCommand, thaw: hookCommand, snapshotCreate: hookCommand, snapshotRelease: hookCommand, shutdown: hookCommand }).partial().default({}),
    /** The same hooks from flags (--freeze-hook ...); a flag wins over the file. */
    freezeHook: hookCommand.optional(),
    thawHook: hookCommand.optional(),
    snapshotCreateHook: hookCommand.optional(),
    snapshotReleaseHook: hookCommand.optional(),
    shutdownHook: hookCommand.optional(),
    /** Serve the disks over NBD (docs/nbd.md): `unix:/PATH` (socket file mode 0600) or `HOST:PORT` (loopback only, unless tls is configured: then NBD_OPT_STARTTLS is required). */
    nbdListen: z
      .string()
      .max(pathLengthMax)
      .regex(/^(unix:\/.+|(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5})$/, 'must be unix:/PATH or HOST:PORT, e.g. unix:/run/drplane/nbd.sock or 127.0.0.1:10809')
      .optional(),
    /** The group that may use the NBD Unix socket too (mode 0660 then): a name from /etc/group or a number, e.g. the group QEMU runs in. */
    nbdSocketGroup: z
      .string()
      .regex(/^[A-Za-z0-9._-]{1,64}$/, 'must be a group name or number, e.g. kvm')
      .optional(),
    /** A hook still running after this long is killed and counts as failed. */
    hookTimeoutMs: limitedInteger('hookTimeoutMs', hookTimeoutMsMin, hookTimeoutMsMax, 'milliseconds').default(hookTimeoutMsMax),
  })
  .refine((config) => config.disks.length > 0 || config.diskRoots.length > 0, { message: 'at least one disk is required (--disk PATH, or --disk-root DIR)', path: ['disks'] });

export const flags: FlagSpec = {
  disk: { type: 'string', multiple: true, key: 'disks', value: 'PATH', help: "a source disk this agent may read (repeat for more; flags replace the file's list)" },
  'disk-root': { type: 'string', multiple: true, key: 'diskRoots', value: 'DIR', help: 'any image file or block device under DIR may be read too, even one created later (repeat for more; symlinks must not lead outside DIR)' },
  'hash-threads': { type: 'string', value: 'N', help: `worker threads that hash disks, 1 to ${hashThreadsMax} (default min(cores, 4))` },
  'held-bytes-max': { type: 'string', value: 'BYTES', help: `change records held per capture, ${extentBytesMax} to ${heldBytesMax} (default ${heldBytesMax})` },
  'freeze-hook': { type: 'string', value: 'COMMAND', keyText: 'freezeHook, or hooks.freeze in the file', help: 'run before an app-consistent marker (e.g. fsfreeze -f /data)' },
  'thaw-hook': { type: 'string', value: 'COMMAND', keyText: 'thawHook, hooks.thaw', help: 'run after it, and after a failed freeze' },
  'snapshot-create-hook': { type: 'string', value: 'COMMAND', keyText: 'snapshotCreateHook, hooks.snapshotCreate', help: 'scan capture: prints the path of a snapshot of $DRPLANE_DISKS to read a pass from' },
  'snapshot-release-hook': { type: 'string', value: 'COMMAND', keyText: 'snapshotReleaseHook, hooks.snapshotRelease', help: 'removes the snapshot at $DRPLANE_SNAPSHOT' },
  'shutdown-hook': { type: 'string', value: 'COMMAND', keyText: 'shutdownHook, hooks.shutdown', help: 'planned failover (ShutdownSource): stops machine $DRPLANE_MACHINE whose disks are $DRPLANE_DISKS; a failure shuts nothing down' },
  'nbd-listen': { type: 'string', value: 'ADDR', help: 'serve every disk over NBD (docs/nbd.md), each an export named by its file name (the only disk is also the default export): unix:/PATH (mode 0600) or HOST:PORT (loopback only unless tls is set; with tls, TCP clients must use NBD_OPT_STARTTLS) (default: off)' },
  'nbd-socket-group': { type: 'string', value: 'GROUP', help: "that group may use the NBD Unix socket too (mode 0660; default: only the agent's user, 0600)" },
  'hook-timeout-ms': { type: 'string', value: 'MS', help: `a hook running longer is killed, ${hookTimeoutMsMin} to ${hookTimeoutMsMax} (default ${hookTimeoutMsMax})` },
};

export const usage = usageText({
  synopsis: 'agent (--disk PATH | --disk-root DIR)... [options]',
  description: `Reads the configured source disks for process servers, captures their changes,
and shuts them down as a source for a planned failover.`,
  flags,
  identity: { name: 'default: the host name', 'data-dir': 'default ./data/agent', listen: 'default 127.0.0.1:7103' },
  registers: true,
});

// The agent stands for its protected machine: by default it is named after the host.
export const defaults: Record<string, unknown> = { name: os.hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 128) || 'agent', listen: '127.0.0.1:7103', dataDir: './data/agent', disks: [] };
