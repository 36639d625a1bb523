// Daemon configuration: a JSON file (--config) overlaid by command-line flags,
// validated with zod at start-up. An error names the key and the problem.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';

export const listenAddress = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'must be host:port, e.g. 127.0.0.1:7101');

export const configurationServerLink = z.strictObject({
  /** host:port of the configuration server. */
  address: listenAddress,
  /** The passphrase, or a file that holds it (the file wins). */
  passphrase: z.string().optional(),
  passphraseFile: z.string().optional(),
});

/** Mutual TLS: this daemon's certificate and key, and the deployment CA that signs every peer's (docs/security.md). */
export const tlsConfig = z.strictObject({
  /** PEM file of the deployment CA: peers (daemons, drctl, grpcurl) must present a certificate it signed. */
  caFile: z.string().min(1),
  /** PEM certificate of this daemon (its SANs must hold the host or address peers dial). */
  certFile: z.string().min(1),
  /** PEM private key of certFile. */
  keyFile: z.string().min(1),
});

export const logLevels = ['trace', 'debug', 'info', 'warn', 'error'] as const;

/**
 * The registration passphrase when no file or config key gives it. Never a
 * flag: a command line is visible to every user in ps and stays in shell
 * histories.
 */
export const passphraseEnvironment = 'DRPLANE_PASSPHRASE';

/** Sets logLevel when neither the config file nor a flag does (`DRPLANE_LOG_LEVEL=debug npm start`). */
export const logLevelEnvironment = 'DRPLANE_LOG_LEVEL';

export const commonConfig = z.strictObject({
  /** Name under which the daemon registers; unique per kind. */
  name: z.string().min(1).max(128).regex(/^[A-Za-z0-9._-]+$/, 'letters, digits, dot, dash and underscore only'),
  listen: listenAddress,
  /** The address peers use to reach this daemon (default: listen). */
  advertise: listenAddress.optional(),
  dataDir: z.string().min(1),
  logLevel: z.enum(logLevels).default('info'),
  /** Mutual TLS for the gRPC listener and every call this daemon makes; without it, plaintext (loopback and tests). */
  tls: tlsConfig.optional(),
  /** A plaintext listener serving only grpc.health.v1, reflection and read-only status calls (for monitoring next to a TLS listener). */
  statusListen: listenAddress.optional(),
  /** host:port of the Prometheus endpoint (HTTP GET /metrics); off when not set. */
  metricsListen: listenAddress.optional(),
  /** Allows a plaintext gRPC listener on an address that is not loopback (every caller is then trusted: docs/security.md). */
  insecurePlaintext: z.boolean().default(false),
});

/** Whether a listen host (as in host:port) is a loopback address: 127.0.0.0/8, ::1 or localhost. */
export function isLoopbackHost(host: string): boolean {
  const bare = host.replace(/^\[|\]$/g, '');
  return bare === 'localhost' || bare === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(bare);
}

/**
 * An integer setting with its limits and unit: a flag's text ("8") counts as a
 * number; anything else outside [min, max] is refused by the schema itself, so
 * it fails before the daemon touches its data.
 */
export function limitedInteger(key: string, min: number, max: number, unit: string) {
  const error = (issue: { input?: unknown }) => `${key} must be an integer from ${min} to ${max}, got ${JSON.stringify(issue.input) ?? 'nothing'} (${unit})`;
  const fromFlag = (value: unknown) => (typeof value === 'string' && value.trim() !== '' && Number.isFinite(Number(value)) ? Number(value) : value);
  return z.preprocess(fromFlag, z.number({ error }).int({ error }).min(min, { error }).max(max, { error })).meta({ unit });
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/**
 * A flag: `key` names the config key it sets when that is not the flag in
 * camelCase; `value` (its argument's placeholder), `keyText` (what the usage
 * shows in brackets, the key by default) and `help` make its usage line.
 */
export type FlagSpec = Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string; key?: string; value?: string; keyText?: string; help?: string }>;

/** The flags every daemon takes before its own (its identity), in usage order. */
const identityFlags = {
  config: { type: 'string', value: 'FILE', keyText: '', help: 'JSON file with the same keys (camelCase); flags win over it' },
  name: { type: 'string', value: 'NAME' },
  'data-dir': { type: 'string', value: 'DIR' },
  listen: { type: 'string', value: 'HOST:PORT' },
  advertise: { type: 'string', value: 'HOST:PORT', help: 'address peers use (default: listen)' },
} as const satisfies FlagSpec;

/** The link to the configuration server (every daemon but the configuration server). */
const registrationFlags = {
  'configuration-server': { type: 'string', value: 'HOST:PORT', keyText: 'configurationServer.address', help: 'register with it' },
  'passphrase-file': { type: 'string', value: 'FILE', keyText: 'configurationServer.passphraseFile', help: `the registration passphrase (or configurationServer.passphrase in --config, or $${passphraseEnvironment})` },
} as const satisfies FlagSpec;

/** The flags every daemon takes after its own. */
const trailingFlags = {
  'tls-ca-file': { type: 'string', value: 'FILE', keyText: 'tls.caFile', help: 'mutual TLS: the deployment CA (PEM)' },
  'tls-cert-file': { type: 'string', value: 'FILE', keyText: 'tls.certFile', help: "this daemon's certificate (PEM), signed by the CA" },
  'tls-key-file': { type: 'string', value: 'FILE', keyText: 'tls.keyFile', help: 'its private key (PEM)' },
  'status-listen': { type: 'string', value: 'HOST:PORT', help: 'plaintext health, reflection and read-only status' },
  'metrics-listen': { type: 'string', value: 'HOST:PORT', help: 'Prometheus GET /metrics (default: off)' },
  'insecure-plaintext': { type: 'boolean', help: 'allow listen on a non-loopback address without tls (every caller is trusted; logged at warn on each start)' },
  'log-level': { type: 'string', value: 'LEVEL', help: `trace, debug, info, warn, error (default info, or $${logLevelEnvironment})` },
  help: { type: 'boolean', short: 'h', keyText: '', help: 'this text' },
} as const satisfies FlagSpec;

/** Flags every daemon takes; each maps to the config key of the same name. */
const commonFlags = {
  ...identityFlags,
  ...registrationFlags,
  ...trailingFlags,
  // Parsed only to be refused with a reason (loadConfig): never in the usage.
  passphrase: { type: 'string' },
} as const satisfies FlagSpec;

/** Where an option's text starts, and the width it is wrapped to. */
const usageHelpColumn = 30;
const usageWidth = 100;

/** An option's lines: `  --flag VALUE` then `[key] help`, wrapped, with continuation lines under the help's start. */
function optionUsage(flag: string, spec: FlagSpec[string]): string {
  const left = `  ${spec.short ? `-${spec.short}, ` : ''}--${flag}${spec.value ? ` ${spec.value}` : ''}`;
  const key = spec.keyText ?? spec.key ?? camel(flag);
  const text = [key ? `[${key}]` : '', spec.help ?? ''].filter(Boolean).join(' ');
  const lines: string[] = [];
  let line = left.length + 2 <= usageHelpColumn ? left.padEnd(usageHelpColumn) : `${left}  `;
  let empty = true;
  for (const word of text.split(' ')) {
    if (!empty && line.length + 1 + word.length > usageWidth) {
      lines.push(line);
      line = ' '.repeat(usageHelpColumn);
      empty = true;
    }
    line += empty ? word : ` ${word}`;
    empty = false;
  }
  lines.push(line.trimEnd());
  return lines.join('\n') + '\n';
}

export interface UsageSpec {
  /** After "Usage: ". */
  synopsis: string;
  /** What the daemon does, one paragraph. */
  description: string;
  /** The daemon's own flags, in usage order, each with its help. */
  flags: FlagSpec;
  /** Help of the identity flags (name, data-dir, listen) for this daemon: its defaults. */
  identity: Partial<Record<'name' | 'data-dir' | 'listen', string>>;
  /** It registers with a configuration server (--configuration-server, --passphrase-file). */
  registers: boolean;
  /** Lines after the options (keys only in the file). */
  footer?: string;
}

/** A daemon's --help text, made from its flag table and the common flags: a flag cannot be added without its line. */
export function usageText(spec: UsageSpec): string {
  const identity = Object.entries(identityFlags).map(([flag, flagSpec]) => optionUsage(flag, { ...flagSpec, help: spec.identity[flag as keyof UsageSpec['identity']] ?? ('help' in flagSpec ? flagSpec.help : '') }));
  const own = Object.entries(spec.flags).map(([flag, flagSpec]) => optionUsage(flag, flagSpec));
  const registration = spec.registers ? Object.entries(registrationFlags).map(([flag, flagSpec]) => optionUsage(flag, flagSpec)) : [];
  const trailing = Object.entries(trailingFlags).map(([flag, flagSpec]) => optionUsage(flag, flagSpec));
  return [
    `Usage: ${spec.synopsis}\n\n${spec.description}\n\n`,
    'Options (each sets the config key in brackets; docs/configuration.md lists every key):\n',
    ...identity,
    ...own,
    ...registration,
    ...trailing,
    spec.footer ? `\n${spec.footer}\n` : '\n',
    'A bad configuration exits with code 2 and one line on stderr naming the key.\n',
  ].join('');
}

const camel = (flag: string) => flag.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());

/**
 * Reads --config FILE (JSON) and the flags, and validates the result.
 * Flags win over the file. Throws ConfigError with one line per problem.
 */
export function loadConfig<S extends z.ZodType>(schema: S, argv: string[], extraFlags: FlagSpec = {}, defaults: Record<string, unknown> = {}): z.infer<S> & { help?: boolean } {
  let parsed;
  try {
    const options = Object.fromEntries(Object.entries({ ...commonFlags, ...extraFlags } as FlagSpec).map(([flag, { type, multiple, short }]) => [flag, { type, ...(multiple && { multiple }), ...(short && { short }) }]));
    parsed = parseArgs({ args: argv, options, allowPositionals: false, strict: true });
  } catch (error) {
    throw new ConfigError((error as Error).message);
  }
  const values = parsed.values as Record<string, unknown>;
  // Parsed only to be refused with a reason (an unknown flag would say less).
  if (values.passphrase !== undefined) {
    throw new ConfigError(`--passphrase: a passphrase on the command line is visible to every user in ps and stays in shell histories; use --passphrase-file FILE (mode 0600), the key passphrase in the --config file, or $${passphraseEnvironment}`);
  }
  if (values.help) return { help: true } as z.infer<S> & { help?: boolean };
  let fromFile: Record<string, unknown> = {};
  if (typeof values.config === 'string') {
    let text: string;
    try {
      text = fs.readFileSync(values.config, 'utf8');
    } catch (error) {
      throw new ConfigError(`config file ${values.config}: ${(error as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : (error as Error).message}`);
    }
    try {
      fromFile = JSON.parse(text) as Record<string, unknown>;
    } catch (error) {
      throw new ConfigError(`config file ${values.config}: not valid JSON: ${(error as Error).message}`);
    }
    if (typeof fromFile !== 'object' || fromFile === null || Array.isArray(fromFile)) throw new ConfigError(`config file ${values.config}: must hold a JSON object`);
  }
  const merged: Record<string, unknown> = { ...defaults, ...fromFile };
  for (const [flag, value] of Object.entries(values)) {
    if (flag === 'config' || flag === 'help' || value === undefined) continue;
    if (flag === 'configuration-server' || flag === 'passphrase' || flag === 'passphrase-file') {
      const link = { ...((merged.configurationServer as Record<string, unknown>) ?? {}) };
      if (flag === 'configuration-server') link.address = value;
      else link[camel(flag)] = value;
      merged.configurationServer = link;
      continue;
    }
    if (flag.startsWith('tls-')) {
      merged.tls = { ...((merged.tls as Record<string, unknown>) ?? {}), [camel(flag.slice(4))]: value };
      continue;
    }
    merged[extraFlags[flag]?.key ?? camel(flag)] = value;
  }
  const levelFromEnvironment = process.env[logLevelEnvironment];
  if (merged.logLevel === undefined && levelFromEnvironment) {
    if (!(logLevels as readonly string[]).includes(levelFromEnvironment)) throw new ConfigError(`environment ${logLevelEnvironment}: must be one of ${logLevels.join(', ')}, got ${JSON.stringify(levelFromEnvironment)}`);
    merged.logLevel = levelFromEnvironment;
  }
  const result = schema.safeParse(merged);
  if (!result.success) {
    const problems = result.error.issues.flatMap((issue) => {
      const at = issue.path.map(String);
      // A misspelt key must not be ignored: it names the key, not the object it is in.
      if (issue.code === 'unrecognized_keys') return issue.keys.map((key) => ({ key: [...at, key].join('.'), message: 'unknown key (docs/configuration.md lists every key)', unknown: true }));
      return [{ key: at.join('.') || '(root)', message: issue.message, unknown: false }];
    });
    // One line, as the journal shows one: unknown keys first (a misspelt key also makes the key it
    // should have been look missing), and the keys of any other problems named after it.
    const [first, ...others] = [...problems.filter((problem) => problem.unknown), ...problems.filter((problem) => !problem.unknown)];
    throw new ConfigError(`config key ${first!.key}: ${first!.message}${others.length > 0 ? ` (and ${others.length} more: ${others.map((problem) => problem.key).join(', ')})` : ''}`);
  }
  return result.data as z.infer<S> & { help?: boolean };
}

/** Resolves the passphrase from the link (a file wins over the inline value). */
export function readPassphrase(link: { passphrase?: string; passphraseFile?: string }): string {
  if (link.passphraseFile) {
    try {
      return fs.readFileSync(link.passphraseFile, 'utf8').trim();
    } catch (error) {
      throw new ConfigError(`config key configurationServer.passphraseFile: cannot read ${link.passphraseFile}: ${(error as Error).message}`);
    }
  }
  if (link.passphrase) return link.passphrase;
  const fromEnvironment = process.env[passphraseEnvironment];
  if (fromEnvironment) return fromEnvironment;
  throw new ConfigError(`config key configurationServer.passphraseFile: required (or configurationServer.passphrase, or $${passphraseEnvironment})`);
}

/** Creates the data directory if needed and proves it is writable, or throws a clear error. */
export function prepareDataDir(dataDir: string): string {
  const dir = path.resolve(dataDir);
  try {
    fs.mkdirSync(dir, { recursive: true });
    const probe = path.join(dir, `.write-probe-${process.pid}`);
    fs.writeFileSync(probe, 'ok');
    fs.rmSync(probe);
  } catch (error) {
    throw new ConfigError(`config key dataDir: ${dir} is not a writable directory (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
  }
  return dir;
}
