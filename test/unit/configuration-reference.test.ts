// Goal: docs/configuration.md cannot drift from the schemas. For each daemon,
// every key of its schema (nested ones too: tls.caFile,
// configurationServer.address, hooks.freeze) has a row in the common section or
// the daemon's own, and no row names a key the schema lacks; each row shows the
// key's flags, its default and, for a number, its limits and unit; the usage
// text lists every flag; and the example file in the daemon's section passes
// its schema. The precedence the page describes (defaults, the file, the
// flags) is checked too.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import type { z } from 'zod';
import { commonConfig, loadConfig, type FlagSpec } from '../../shared/config';
import * as agent from '../../daemons/agent/config';
import * as configurationServer from '../../daemons/configuration-server/config';
import * as masterTarget from '../../daemons/master-target/config';
import * as processServer from '../../daemons/process-server/config';
import { repoRoot } from '../helpers/daemons';

interface DaemonConfigModule {
  schema: z.ZodType;
  flags: Record<string, { key?: string }>;
  defaults: Record<string, unknown>;
  usage: string;
}

const daemons: Record<string, DaemonConfigModule> = {
  'configuration-server': configurationServer,
  'process-server': processServer,
  'master-target': masterTarget,
  agent,
};

/** Keys whose default depends on the machine, so the page describes it instead of giving a value. */
const machineDefaults: Record<string, string[]> = {
  'process-server': ['hashThreads'], // min(cores, 4)
  agent: ['name'], // the host name
};

/** The flags shared/config.ts gives every daemon, and the key each sets (--config and --help set none). */
const commonFlagKeys: Record<string, string> = {
  name: 'name',
  listen: 'listen',
  advertise: 'advertise',
  'data-dir': 'dataDir',
  'log-level': 'logLevel',
  'tls-ca-file': 'tls.caFile',
  'tls-cert-file': 'tls.certFile',
  'tls-key-file': 'tls.keyFile',
  'status-listen': 'statusListen',
  'metrics-listen': 'metricsListen',
  'insecure-plaintext': 'insecurePlaintext',
  'configuration-server': 'configurationServer.address',
  'passphrase-file': 'configurationServer.passphraseFile',
};

// ---- The schemas: zod v4 definitions, walked without zod's internals types.

interface Definition {
  type: string;
  innerType?: Schema;
  in?: Schema;
  out?: Schema;
  defaultValue?: unknown;
  shape?: Record<string, Schema>;
}
interface Schema {
  def: Definition;
  minValue?: number | null;
  maxValue?: number | null;
  meta(): Record<string, unknown> | undefined;
}

interface Leaf {
  key: string;
  /** The default when the key is absent, if the schema has one. */
  byDefault?: unknown;
  hasDefault: boolean;
  /** The innermost schema (a number, a string, an array ...). */
  inner: Schema;
  unit?: string;
}

/** Through optional, default and preprocess wrappers to the schema that checks the value. */
function unwrap(schema: Schema): { inner: Schema; byDefault?: unknown; hasDefault: boolean; unit?: string } {
  let current = schema;
  let hasDefault = false;
  let byDefault: unknown;
  let unit: string | undefined;
  for (;;) {
    const meta = current.meta();
    if (typeof meta?.unit === 'string') unit ??= meta.unit;
    const def = current.def;
    if (def.type === 'default' || def.type === 'prefault') {
      hasDefault = true;
      byDefault = def.defaultValue;
      current = def.innerType!;
    } else if (def.type === 'optional' || def.type === 'nullable' || def.type === 'readonly') {
      current = def.innerType!;
    } else if (def.type === 'pipe') {
      // z.preprocess(fn, schema) is a pipe from a transform into the schema.
      current = def.in!.def.type === 'transform' ? def.out! : def.in!;
    } else {
      return { inner: current, byDefault, hasDefault, unit };
    }
  }
}

/** Every key, an object's keys spelt parent.child. */
function leaves(schema: Schema, prefix = ''): Leaf[] {
  const { inner } = unwrap(schema);
  if (inner.def.type !== 'object') throw new Error(`${prefix || 'the schema'} is not an object`);
  return Object.entries(inner.def.shape!).flatMap(([name, child]) => {
    const key = prefix ? `${prefix}.${name}` : name;
    const unwrapped = unwrap(child);
    if (unwrapped.inner.def.type === 'object') return leaves(child, key);
    return [{ key, ...unwrapped }];
  });
}

// ---- The page: its sections and the rows of their tables.

interface Row {
  key: string;
  flag: string;
  type: string;
  byDefault: string;
  unit: string;
  limits: string;
  meaning: string;
}

const page = fs.readFileSync(path.join(repoRoot, 'docs', 'configuration.md'), 'utf8');
const sections = new Map<string, string>();
for (const part of page.split(/^## /m).slice(1)) {
  const newline = part.indexOf('\n');
  sections.set(part.slice(0, newline).trim(), part.slice(newline + 1));
}

/** The rows of the key tables (those whose header starts "| Key | Flag |"). */
function rowsOf(section: string): Map<string, Row> {
  const rows = new Map<string, Row>();
  let inTable = false;
  for (const line of section.split('\n')) {
    if (line.startsWith('| Key | Flag |')) {
      inTable = true;
      continue;
    }
    if (!line.startsWith('|')) {
      inTable = false;
      continue;
    }
    if (!inTable || line.startsWith('|---')) continue;
    const cells = line.slice(1, -1).split('|').map((cell) => cell.trim());
    const key = /^`([^`]+)`$/.exec(cells[0] ?? '')?.[1];
    if (!key) throw new Error(`a row without a key: ${line}`);
    if (cells.length !== 7) throw new Error(`${key}: ${cells.length} cells, not 7`);
    const [, flag, type, byDefault, unit, limits, meaning] = cells as [string, string, string, string, string, string, string];
    if (rows.has(key)) throw new Error(`${key} has two rows`);
    rows.set(key, { key, flag, type, byDefault, unit, limits, meaning });
  }
  return rows;
}

function sectionOf(title: (name: string) => boolean): string {
  const found = [...sections.keys()].filter(title);
  if (found.length !== 1) throw new Error(`expected one section, found ${JSON.stringify(found)}`);
  return sections.get(found[0]!)!;
}

const commonSection = sectionOf((name) => name.startsWith('Common keys'));
const commonRows = rowsOf(commonSection);

t.test('the common section lists exactly the keys every daemon shares', async (t) => {
  const schemaKeys = leaves(commonConfig as unknown as Schema).map((leaf) => leaf.key).sort();
  t.ok(schemaKeys.includes('tls.caFile') && schemaKeys.includes('metricsListen'), 'nested and new keys are walked');
  t.same([...commonRows.keys()].sort(), schemaKeys);
});

for (const [name, module] of Object.entries(daemons)) {
  t.test(`${name}: docs/configuration.md matches daemons/${name}/config.ts`, async (t) => {
    const section = sectionOf((title) => title.includes(`(\`${name}\`)`));
    const ownRows = rowsOf(section);
    const rows = new Map([...commonRows, ...ownRows]);
    const schemaLeaves = leaves(module.schema as unknown as Schema);
    const schemaKeys = new Set(schemaLeaves.map((leaf) => leaf.key));

    t.same(schemaLeaves.map((leaf) => leaf.key).filter((key) => !rows.has(key)), [], 'every key of the schema has a row');
    t.same([...rows.keys()].filter((key) => !schemaKeys.has(key)), [], 'every row names a key of the schema');
    t.same([...ownRows.keys()].filter((key) => commonRows.has(key)), [], 'no common key is listed again in the section');

    // Flags: each applicable flag is shown on its key's row and in the usage text; no row shows a flag the daemon lacks.
    const flagKeys: Record<string, string> = { ...commonFlagKeys };
    if (name === 'configuration-server') Object.assign(flagKeys, { 'passphrase-file': 'passphraseFile' });
    for (const [flag, spec] of Object.entries(module.flags)) flagKeys[flag] = spec.key ?? flag.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());
    const applicable = Object.entries(flagKeys).filter(([, key]) => schemaKeys.has(key));
    t.ok(applicable.length >= 10, `${applicable.length} flags set keys of this daemon`);
    for (const [flag, key] of applicable) {
      t.ok(rows.get(key)?.flag.includes(`\`--${flag}\``), `--${flag} is shown on the row of ${key}`);
      t.ok(module.usage.includes(`--${flag}`), `the usage text lists --${flag}`);
    }
    const known = new Set(applicable.map(([flag]) => flag));
    for (const row of rows.values()) {
      for (const [, flag] of row.flag.matchAll(/`--([a-z-]+)/g)) t.ok(known.has(flag!), `${row.key}: --${flag} is a flag of ${name}`);
    }

    // Defaults, limits and units.
    for (const leaf of schemaLeaves) {
      const row = rows.get(leaf.key);
      if (!row) continue;
      const given = Object.hasOwn(module.defaults, leaf.key) ? module.defaults[leaf.key] : leaf.byDefault;
      const hasDefault = Object.hasOwn(module.defaults, leaf.key) || leaf.hasDefault;
      if (hasDefault && ['string', 'number', 'boolean'].includes(typeof given) && !machineDefaults[name]?.includes(leaf.key)) {
        t.ok(row.byDefault.includes(String(given)), `${leaf.key}: the default ${String(given)} is shown (${row.byDefault})`);
      }
      if (leaf.inner.def.type === 'number') {
        for (const bound of [leaf.inner.minValue, leaf.inner.maxValue]) {
          t.ok(typeof bound === 'number' && Number.isFinite(bound), `${leaf.key}: the schema bounds it (${bound})`);
          t.ok(row.limits.includes(String(bound)), `${leaf.key}: the limit ${bound} is shown (${row.limits})`);
        }
        t.ok(leaf.unit && row.unit.includes(leaf.unit), `${leaf.key}: the unit ${leaf.unit} is shown (${row.unit})`);
      }
    }

    // The example file of the section is a valid configuration.
    const example = /```json\n([\s\S]*?)```/.exec(section)?.[1];
    t.ok(example, 'the section has an example file');
    const parsed = module.schema.safeParse({ ...module.defaults, ...(JSON.parse(example!) as Record<string, unknown>) });
    t.ok(parsed.success, `the example passes the schema${parsed.success ? '' : `: ${JSON.stringify(parsed.error.issues)}`}`);
    const keysOf = (value: Record<string, unknown>): string[] => Object.entries(value).flatMap(([key, inner]) => (inner && typeof inner === 'object' && !Array.isArray(inner) ? keysOf(inner as Record<string, unknown>).map((child) => `${key}.${child}`) : [key]));
    const exampleKeys = keysOf(JSON.parse(example!) as Record<string, unknown>);
    t.ok(exampleKeys.includes('tls.certFile') && exampleKeys.includes('metricsListen'), 'the example configures tls and metricsListen');
  });
}

t.test('precedence as the page says: defaults, then the file, then the flags', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'drplane-config-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const load = (module: DaemonConfigModule, file: Record<string, unknown>, flags: string[]) => {
    const configPath = path.join(dir, 'config.json');
    fs.writeFileSync(configPath, JSON.stringify(file));
    return loadConfig(module.schema, ['--config', configPath, ...flags], module.flags as FlagSpec, module.defaults) as Record<string, unknown>;
  };
  const tlsFiles = { caFile: '/file/ca.crt', certFile: '/file/mt.crt', keyFile: '/file/mt.key' };
  const master = load(masterTarget, { dataDir: '/file/mt', datastoreRoots: ['/file/ds1', '/file/ds2'], disksMax: 10, tls: tlsFiles, configurationServer: { address: 'cs:7100', passphraseFile: '/file/pass' } }, [
    '--datastore-root', dir, '--tls-key-file', '/flag/mt.key', '--configuration-server', 'cs2:7100',
  ]);
  t.equal(master.name, 'mt1', 'a default where neither sets the key');
  t.equal(master.dataDir, '/file/mt', 'the file over the default');
  t.equal(master.disksMax, 10, 'a key only the file sets');
  t.same(master.datastoreRoots, [dir], "a repeatable flag replaces the file's whole list");
  t.same(master.tls, { ...tlsFiles, keyFile: '/flag/mt.key' }, 'a --tls-* flag replaces one key of the file\'s tls');
  t.same(master.configurationServer, { address: 'cs2:7100', passphraseFile: '/file/pass' }, '--configuration-server replaces one key of the link');

  const processServerConfig = load(processServer, { batchBytesMax: 4 * 1024 * 1024, compression: true }, ['--batch-bytes-max', String(2 * 1024 * 1024), '--compression', 'false']);
  t.equal(processServerConfig.batchBytesMax, 2 * 1024 * 1024, 'a number flag over the file');
  t.equal(processServerConfig.compression, false, 'a boolean flag over the file');

  const server = load(configurationServer, { dataDir: '/file/cs', passphraseFile: '/file/passphrase' }, ['--passphrase-file', '/flag/passphrase']);
  t.equal(server.passphraseFile, '/flag/passphrase', "the configuration server's own --passphrase-file over the file");
  t.notOk('configurationServer' in server, 'and it is not a link');
  // A passphrase on the command line would be in ps for every user: refused with the ways to give it instead.
  for (const module of [configurationServer, masterTarget]) {
    t.throws(() => load(module, { dataDir: '/file/x', datastoreRoots: [dir] }, ['--passphrase', 'a-passphrase-of-thirty-characters']), { name: 'ConfigError', message: /^--passphrase: a passphrase on the command line is visible to every user in ps .* --passphrase-file FILE .* \$DRPLANE_PASSPHRASE$/ }, '--passphrase is refused');
  }

  const agentConfig = load(agent, { disks: ['/file/disk'], hooks: { freeze: 'file-freeze' } }, ['--freeze-hook', 'flag-freeze']);
  t.equal(agentConfig.freezeHook, 'flag-freeze', 'the flag form of a hook');
  t.same(agentConfig.hooks, { freeze: 'file-freeze' }, 'beside the file form (the agent takes the flag first)');

  t.throws(() => load(masterTarget, { datastoreRoots: [dir] }, ['--disks-max', '3']), { name: 'ConfigError' }, 'a key without a flag cannot be set by one');
});
