// The master target's configuration: the schema (validated at start-up; an error names the key),
// the flags that set its keys, the defaults and the usage text. Every key is
// documented in docs/configuration.md (test/unit/configuration-reference.test.ts keeps the two together).
import fs from 'node:fs';
import { z } from 'zod';
import { commonConfig, limitedInteger, configurationServerLink, usageText, type FlagSpec } from '../../shared/config';
import {
  disksPerMasterTargetMax,
  pruneIntervalMsDefault,
  pruneIntervalMsMax,
  pruneIntervalMsMin,
  pruneKeysPerTransactionMax,
  retentionFreeBytesMin,
  retentionFreeBytesMinConfiguredMax,
  startHookTimeoutMsDefault,
  startHookTimeoutMsMax,
  startHookTimeoutMsMin,
  hashThreadsMax,
} from '../../shared/limits';

/**
 * Why a datastore root cannot be one, or undefined: it must be a directory or
 * not exist yet (it is created). Checked by the schema, because the roots are
 * created only after the retention store has been opened.
 */
function notADirectory(dir: string): string | undefined {
  try {
    return fs.statSync(dir).isDirectory() ? undefined : `${dir} exists and is not a directory`;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    return `${dir} cannot be a directory (${code === 'ENOTDIR' ? 'a parent is a file' : (code ?? (error as Error).message)})`;
  }
}

export const schema = commonConfig.extend({
  /** Directories where replica disks and materialised points may be written. */
  datastoreRoots: z
    .array(
      z
        .string()
        .min(1)
        .superRefine((dir, context) => {
          const problem = notADirectory(dir);
          if (problem) context.addIssue({ code: 'custom', message: problem, input: dir });
        }),
      { error: (issue) => (issue.input === undefined ? 'required: at least one datastore root (--datastore-root DIR)' : `must be a list of directories, got ${JSON.stringify(issue.input)}`) },
    )
    .min(1, 'at least one datastore root is needed (--datastore-root DIR)'),
  /** Directory of the retention store (LMDB), on a volume of its own; default <dataDir>/retention (on the data volume). */
  retentionDir: z.string().min(1).optional(),
  /** Free space the retention volume must have at start-up. */
  retentionFreeBytesMin: limitedInteger('retentionFreeBytesMin', 0, retentionFreeBytesMinConfiguredMax, 'bytes').default(retentionFreeBytesMin),
  /** A process server's cache directory on this host: the retention volume must not share its file system. */
  processServerCacheDir: z.string().min(1).optional(),
  /** How often the pruner runs. */
  pruneIntervalMs: limitedInteger('pruneIntervalMs', pruneIntervalMsMin, pruneIntervalMsMax, 'milliseconds').default(pruneIntervalMsDefault),
  /** Keys the pruner deletes in one LMDB transaction. */
  pruneKeysPerTransaction: limitedInteger('pruneKeysPerTransaction', 1, pruneKeysPerTransactionMax, 'keys').default(pruneKeysPerTransactionMax),
  /** Replica disks this master target serves. */
  disksMax: limitedInteger('disksMax', 1, disksPerMasterTargetMax, 'replica disks').default(disksPerMasterTargetMax),
  /** Worker threads that hash replicas (default min(cores, 4)). */
  hashThreads: limitedInteger('hashThreads', 1, hashThreadsMax, 'threads').optional(),
  configurationServer: configurationServerLink.optional(),
  /** StartMachine runs this shell command (/bin/sh -c) for a failed-over machine; only ever from this configuration. */
  startHook: z.string().min(1).optional(),
  /** The start hook is killed after this long. */
  hookTimeoutMs: limitedInteger('hookTimeoutMs', startHookTimeoutMsMin, startHookTimeoutMsMax, 'milliseconds').default(startHookTimeoutMsDefault),
});

export const flags: FlagSpec = {
  'datastore-root': { type: 'string', multiple: true, key: 'datastoreRoots', value: 'DIR', help: "where replica disks may be written (repeat for more; flags replace the file's list)" },
  'retention-dir': { type: 'string', value: 'DIR', help: 'the retention store, on a volume of its own (default DATA_DIR/retention, on the data volume)' },
  'process-server-cache-dir': { type: 'string', value: 'DIR', help: "a process server's cache on this host: the retention volume must not share its file system" },
  'start-hook': { type: 'string', value: 'COMMAND', help: 'StartMachine runs it with /bin/sh -c to start a failed-over machine, with DRPLANE_MACHINE, DRPLANE_DISKS (space-separated paths), DRPLANE_EPOCH and DRPLANE_POINTS in its environment; without it StartMachine answers hook_ran=false (the operator starts the machine)' },
  'hook-timeout-ms': { type: 'string', value: 'MS', help: `the start hook is killed after this long, ${startHookTimeoutMsMin} to ${startHookTimeoutMsMax} (default ${startHookTimeoutMsDefault}); a caller's deadline must be longer` },
};

export const usage = usageText({
  synopsis: 'master-target --datastore-root DIR [options]',
  description: `Owns replica disks under its datastore roots, applies batches atomically, keeps
recovery points for each replica's retention window and prunes older ones.`,
  flags,
  identity: { name: 'default mt1', 'data-dir': 'default ./data/master-target', listen: 'default 127.0.0.1:7102' },
  registers: true,
  footer: `Only in the file: retentionFreeBytesMin (bytes, 0 to ${retentionFreeBytesMinConfiguredMax}, default ${retentionFreeBytesMin}),
pruneIntervalMs (${pruneIntervalMsMin} to ${pruneIntervalMsMax}, default ${pruneIntervalMsDefault}), pruneKeysPerTransaction (1 to ${pruneKeysPerTransactionMax},
default ${pruneKeysPerTransactionMax}), disksMax (1 to ${disksPerMasterTargetMax}, default ${disksPerMasterTargetMax}), hashThreads (1 to ${hashThreadsMax}, default min(cores, 4)).`,
});

export const defaults: Record<string, unknown> = { name: 'mt1', listen: '127.0.0.1:7102', dataDir: './data/master-target' };
