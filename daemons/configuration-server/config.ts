// The configuration server's configuration: the schema (validated at start-up; an error names the key),
// the flags that set its keys, the defaults and the usage text. Every key is
// documented in docs/configuration.md (test/unit/configuration-reference.test.ts keeps the two together).
import { z } from 'zod';
import { commonConfig, limitedInteger, passphraseEnvironment, usageText, type FlagSpec } from '../../shared/config';
import { endedJobAgeMsDefault, endedJobAgeMsMax, endedJobAgeMsMin, endedJobsKeptMax, heartbeatIntervalMs } from '../../shared/limits';
import { passphraseLengthMin } from './entities/passphrase';

/** The shortest heartbeat interval that may be configured (tests lower it; production keeps the limit). */
const heartbeatIntervalMsMin = 100;
/** How often the health monitor asks every process server for its sessions (health.ts). */
export const statusPollIntervalMs = 1_000;
/** The shortest status poll interval that may be configured. */
const statusPollIntervalMsMin = 100;
/** The longest poll interval that may be configured (the RPO shown is at most this stale). */
export const statusPollIntervalMsMax = 60_000;

/** The old name of endedJobAgeMsMax, still accepted (a warning at start); both at once are refused. */
const deprecatedEndedJobAgeKey = 'endedJobAgeMaxMs';

/** The keys of the file (the schema below, without the flag mapping). */
const settings = commonConfig.extend({
  /** The registration passphrase; default: generated into <dataDir>/passphrase on first start. */
  passphrase: z.string().min(passphraseLengthMin, `the passphrase must have at least ${passphraseLengthMin} characters`).optional(),
  /** A file holding the passphrase (it wins over passphrase). */
  passphraseFile: z.string().min(1).optional(),
  /** The interval servers heartbeat at; missing three makes a server unhealthy. */
  heartbeatIntervalMs: limitedInteger('heartbeatIntervalMs', heartbeatIntervalMsMin, heartbeatIntervalMs, 'milliseconds').default(heartbeatIntervalMs),
  /** How often process servers are asked for RPO and backlog. */
  statusPollIntervalMs: limitedInteger('statusPollIntervalMs', statusPollIntervalMsMin, statusPollIntervalMsMax, 'milliseconds').default(statusPollIntervalMs),
  /** Ended jobs kept: the oldest beyond this many are deleted (jobs a machine or plan still names stay). */
  endedJobsKeptMax: limitedInteger('endedJobsKeptMax', 1, endedJobsKeptMax, 'jobs').default(endedJobsKeptMax),
  /** Ended jobs older than this are deleted (jobs a machine or plan still names stay). */
  endedJobAgeMsMax: limitedInteger('endedJobAgeMsMax', endedJobAgeMsMin, endedJobAgeMsMax, 'milliseconds').default(endedJobAgeMsDefault),
  /** Deprecated alias of endedJobAgeMsMax (its name before the units moved ahead of the qualifier); a warning at start names the new key. */
  [deprecatedEndedJobAgeKey]: limitedInteger(deprecatedEndedJobAgeKey, endedJobAgeMsMin, endedJobAgeMsMax, 'milliseconds').optional(),
});

/** A warning line for each deprecated key the configuration gives (logged at start). */
export function deprecationWarnings(config: { [deprecatedEndedJobAgeKey]?: number }): string[] {
  if (config[deprecatedEndedJobAgeKey] === undefined) return [];
  return [`config key ${deprecatedEndedJobAgeKey} (--ended-job-age-max-ms) is deprecated: use endedJobAgeMsMax (--ended-job-age-ms-max); it will be removed`];
}

export const schema = z.preprocess(
  // --passphrase-file is parsed as the link to a configuration server (what the
  // other daemons need); here it is this server's own, and as a flag it wins
  // over the file. Anything else in the link (an address) is
  // left for the strict object to refuse: a configuration server links to none.
  (input, context) => {
    if (typeof input === 'object' && input !== null && Object.hasOwn(input, deprecatedEndedJobAgeKey) && Object.hasOwn(input, 'endedJobAgeMsMax')) {
      context.addIssue({ code: 'custom', path: [deprecatedEndedJobAgeKey], input, message: 'a deprecated alias of endedJobAgeMsMax, which is given too: give only endedJobAgeMsMax (--ended-job-age-ms-max)' });
      return input;
    }
    const { configurationServer, ...rest } = input as Record<string, unknown> & { configurationServer?: unknown };
    if (typeof configurationServer !== 'object' || configurationServer === null || Array.isArray(configurationServer)) return input;
    const { passphrase, passphraseFile, ...other } = configurationServer as Record<string, unknown>;
    return {
      ...rest,
      ...(passphrase !== undefined && { passphrase }),
      ...(passphraseFile !== undefined && { passphraseFile }),
      ...(Object.keys(other).length > 0 && { configurationServer: other }),
    };
  },
  // The deprecated key, when given, sets endedJobAgeMsMax.
  settings.transform((config) => (config[deprecatedEndedJobAgeKey] === undefined ? config : { ...config, endedJobAgeMsMax: config[deprecatedEndedJobAgeKey] })),
);

export const flags: FlagSpec = {
  'passphrase-file': { type: 'string', value: 'FILE', help: `the registration passphrase, at least ${passphraseLengthMin} characters (or the key passphrase in --config, or $${passphraseEnvironment}; default: generated into DIR/passphrase on first start)` },
  'heartbeat-interval-ms': { type: 'string', value: 'MS', help: `interval servers heartbeat at, ${heartbeatIntervalMsMin} to ${heartbeatIntervalMs} (default ${heartbeatIntervalMs})` },
  'status-poll-interval-ms': { type: 'string', value: 'MS', help: `how often process servers are asked for RPO and backlog, ${statusPollIntervalMsMin} to ${statusPollIntervalMsMax} (default ${statusPollIntervalMs})` },
  'ended-jobs-kept-max': { type: 'string', value: 'N', help: `ended jobs kept, 1 to ${endedJobsKeptMax} (default ${endedJobsKeptMax})` },
  'ended-job-age-ms-max': { type: 'string', value: 'MS', help: `ended jobs older than this are deleted, ${endedJobAgeMsMin} to ${endedJobAgeMsMax} (default ${endedJobAgeMsDefault}, 30 days)` },
  'ended-job-age-max-ms': { type: 'string', value: 'MS', help: 'deprecated: use --ended-job-age-ms-max' },
};

export const usage = usageText({
  synopsis: 'configuration-server --data-dir DIR [options]',
  description: `The control plane: registers process servers, master targets and agents, keeps
machines, jobs, policies and replication groups, drives continuous replication,
takes app- and group-consistent points, and watches replication health.`,
  flags,
  identity: { name: 'default configuration-server', 'data-dir': 'state (config.lmdb) and the generated passphrase', listen: 'gRPC address (default 127.0.0.1:7100)' },
  registers: false,
});

export const defaults: Record<string, unknown> = { name: 'configuration-server', listen: '127.0.0.1:7100' };
