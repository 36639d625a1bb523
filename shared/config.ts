// Daemon configuration: a JSON file (--config) overlaid by command-line flags,
// validated with zod at start-up. An error names the key and the problem.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { z } from 'zod';

export const listenAddress = z
  .string()
  .regex(/^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/, 'must be host:port, e.g. 127.0.0.1:7101');

export const configurationServerLink = z.object({
  /** host:port of the configuration server. */
  address: listenAddress,
  /** The passphrase, or a file that holds it (the file wins). */
  passphrase: z.string().optional(),
  passphraseFile: z.string().optional(),
});

export const commonConfig = z.object({
  /** Name under which the daemon registers; unique per kind. */
  name: z.string().min(1).max(128).regex(/^[A-Za-z0-9._-]+$/, 'letters, digits, dot, dash and underscore only'),
  listen: listenAddress,
  /** The address peers use to reach this daemon (default: listen). */
  advertise: listenAddress.optional(),
  dataDir: z.string().min(1),
  logLevel: z.enum(['trace', 'debug', 'info', 'warn', 'error']).default('info'),
});

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** Flags every daemon takes; each maps to the config key of the same name. */
const commonFlags = {
  config: { type: 'string' },
  name: { type: 'string' },
  listen: { type: 'string' },
  advertise: { type: 'string' },
  'data-dir': { type: 'string' },
  'log-level': { type: 'string' },
  'configuration-server': { type: 'string' },
  passphrase: { type: 'string' },
  'passphrase-file': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
} as const;

/** A flag; `key` names the config key it sets when that is not the flag in camelCase. */
export type FlagSpec = Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string; key?: string }>;

const camel = (flag: string) => flag.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());

/**
 * Reads --config FILE (JSON) and the flags, and validates the result.
 * Flags win over the file. Throws ConfigError with one line per problem.
 */
export function loadConfig<S extends z.ZodType>(schema: S, argv: string[], extraFlags: FlagSpec = {}, defaults: Record<string, unknown> = {}): z.infer<S> & { help?: boolean } {
  let parsed;
  try {
    const options = Object.fromEntries(Object.entries({ ...commonFlags, ...extraFlags } as FlagSpec).map(([flag, { key: _key, ...option }]) => [flag, option]));
    parsed = parseArgs({ args: argv, options, allowPositionals: false, strict: true });
  } catch (error) {
    throw new ConfigError((error as Error).message);
  }
  const values = parsed.values as Record<string, unknown>;
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
    merged[extraFlags[flag]?.key ?? camel(flag)] = value;
  }
  const result = schema.safeParse(merged);
  if (!result.success) {
    const lines = result.error.issues.map((issue) => `config key ${issue.path.join('.') || '(root)'}: ${issue.message}`);
    throw new ConfigError(lines.join('\n'));
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
  throw new ConfigError('config key configurationServer.passphrase: required (or passphraseFile)');
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
