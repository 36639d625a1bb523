// Goal: the configuration key endedJobAgeMsMax was called endedJobAgeMaxMs
// (flag --ended-job-age-max-ms) before the limits took their qualifier last.
// The old key and flag are still accepted: they set endedJobAgeMsMax, and
// deprecationWarnings gives the line the server logs at start, naming the new
// key. Giving both is a configuration error naming the old key; the new key
// alone warns of nothing. The keys are quoted here on purpose: the old one is
// the alias under test, not an identifier to rename.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { ConfigError, loadConfig } from '../../shared/config';
import { defaults, deprecationWarnings, flags, schema } from '../../daemons/configuration-server/config';

const oldKey = 'endedJobAgeMaxMs';
const newKey = 'endedJobAgeMsMax';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'drplane-alias-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Loads the configuration server's configuration from a file holding `file` and the flags. */
function load(file: Record<string, unknown>, args: string[] = []): Record<string, unknown> {
  const configPath = path.join(dir, 'config.json');
  fs.writeFileSync(configPath, JSON.stringify({ dataDir: dir, ...file }));
  return loadConfig(schema, ['--config', configPath, ...args], flags, defaults) as Record<string, unknown>;
}

t.test('the old key in the file sets the new one, with a warning naming it', async (t) => {
  const config = load({ [oldKey]: 5_000 });
  t.equal(config[newKey], 5_000);
  const warnings = deprecationWarnings(config);
  t.equal(warnings.length, 1, 'one warning line');
  t.match(warnings[0], newKey, 'it names the new key');
  t.match(warnings[0], '--ended-job-age-ms-max', 'and the new flag');
});

t.test('the old flag sets the new key, with the warning', async (t) => {
  const config = load({}, ['--ended-job-age-max-ms', '6000']);
  t.equal(config[newKey], 6_000);
  t.equal(deprecationWarnings(config).length, 1);
});

t.test('the new key or flag alone: its value, no warning', async (t) => {
  const fromFile = load({ [newKey]: 7_000 });
  t.equal(fromFile[newKey], 7_000);
  t.same(deprecationWarnings(fromFile), []);
  const fromFlag = load({}, ['--ended-job-age-ms-max', '8000']);
  t.equal(fromFlag[newKey], 8_000);
  t.same(deprecationWarnings(fromFlag), []);
});

t.test('neither: the default, no warning', async (t) => {
  const config = load({});
  t.equal(config[newKey], 30 * 24 * 60 * 60_000);
  t.same(deprecationWarnings(config), []);
});

t.test('both, however given, are a configuration error naming the old key', async (t) => {
  const cases: [string, Record<string, unknown>, string[]][] = [
    ['both in the file', { [oldKey]: 5_000, [newKey]: 6_000 }, []],
    ['both flags', {}, ['--ended-job-age-max-ms', '5000', '--ended-job-age-ms-max', '6000']],
    ['the old key in the file, the new flag', { [oldKey]: 5_000 }, ['--ended-job-age-ms-max', '6000']],
    ['the new key in the file, the old flag', { [newKey]: 6_000 }, ['--ended-job-age-max-ms', '5000']],
  ];
  for (const [name, file, args] of cases) {
    t.throws(() => load(file, args), new ConfigError(`config key ${oldKey}: a deprecated alias of ${newKey}, which is given too: give only ${newKey} (--ended-job-age-ms-max)`), name);
  }
});

t.test('the old key keeps its limits, and an error names it', async (t) => {
  t.throws(() => load({ [oldKey]: 10 }), { name: 'ConfigError', message: /^config key endedJobAgeMaxMs: endedJobAgeMaxMs must be an integer from 1000 to / });
});
