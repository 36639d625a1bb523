// Goal: DRPLANE_LOG_LEVEL sets a daemon's log level when neither its config
// file nor a flag does (a flag wins over the file, the file over the
// environment), a real daemon follows it, and an invalid value there is
// refused like a bad key: one line naming the variable, exit 2, before the
// data directory exists.
import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { commonConfig, ConfigError, loadConfig } from '../../shared/config';
import { configurationServerClient, unary } from '../helpers/clients';
import { distRoot, tempDir, withoutTapHook } from '../helpers/daemons';
import { freePort, until } from '../helpers/wait';

const required = ['--name', 'x', '--listen', '127.0.0.1:7999', '--data-dir', '/nonexistent/x'];

function withEnvironment<T>(value: string | undefined, run: () => T): T {
  const before = process.env.DRPLANE_LOG_LEVEL;
  if (value === undefined) delete process.env.DRPLANE_LOG_LEVEL;
  else process.env.DRPLANE_LOG_LEVEL = value;
  try {
    return run();
  } finally {
    if (before === undefined) delete process.env.DRPLANE_LOG_LEVEL;
    else process.env.DRPLANE_LOG_LEVEL = before;
  }
}

t.test('precedence: flag, then file, then DRPLANE_LOG_LEVEL, then info', async (t) => {
  const dir = tempDir('drplane-log-level-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'config.json');
  fs.writeFileSync(file, JSON.stringify({ logLevel: 'warn' }));
  t.equal(withEnvironment(undefined, () => loadConfig(commonConfig, required)).logLevel, 'info', 'nothing set: info');
  t.equal(withEnvironment('debug', () => loadConfig(commonConfig, required)).logLevel, 'debug', 'the environment alone: debug');
  t.equal(withEnvironment('debug', () => loadConfig(commonConfig, [...required, '--config', file])).logLevel, 'warn', 'the file wins over the environment');
  t.equal(withEnvironment('debug', () => loadConfig(commonConfig, [...required, '--config', file, '--log-level', 'error'])).logLevel, 'error', 'a flag wins over both');
  t.throws(() => withEnvironment('loud', () => loadConfig(commonConfig, required)), new ConfigError('environment DRPLANE_LOG_LEVEL: must be one of trace, debug, info, warn, error, got "loud"'));
  t.equal(withEnvironment('loud', () => loadConfig(commonConfig, [...required, '--log-level', 'info'])).logLevel, 'info', 'an invalid environment value set aside by a flag is not read');
});

t.test('a real daemon follows DRPLANE_LOG_LEVEL; an invalid value exits 2 touching nothing', async (t) => {
  const dir = tempDir('drplane-log-level-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const main = path.join(distRoot, 'daemons', 'configuration-server', 'main.js');

  // warn: the daemon serves and stops, and its info lines (listening, stopping, stopped) are not written.
  const address = await freePort();
  const [command, ...commandArgs] = withoutTapHook([process.execPath, main, '--listen', address, '--data-dir', path.join(dir, 'quiet')]);
  const quiet = spawn(command!, commandArgs, { env: { ...process.env, DRPLANE_LOG_LEVEL: 'warn' }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  quiet.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => quiet.once('exit', resolve));
  t.teardown(() => void quiet.kill('SIGKILL'));
  const client = configurationServerClient(address);
  t.teardown(() => client.close());
  await until('the configuration server to serve', () => unary(client, client.listMachines, {}).catch(() => undefined));
  quiet.kill('SIGTERM');
  t.equal(await exited, 0, 'it served and stopped with exit 0');
  t.equal(stdout, '', 'and wrote no info lines at level warn');

  const dataDir = path.join(dir, 'bad');
  const [badCommand, ...badArgs] = withoutTapHook([process.execPath, main, '--listen', '127.0.0.1:0', '--data-dir', dataDir]);
  const bad = spawnSync(badCommand!, badArgs, { env: { ...process.env, DRPLANE_LOG_LEVEL: 'loud' }, encoding: 'utf8', timeout: 30_000 });
  t.equal(bad.status, 2, 'an invalid value: exit 2, a configuration error');
  t.same(bad.stderr.trim().split('\n'), ['configuration-server: environment DRPLANE_LOG_LEVEL: must be one of trace, debug, info, warn, error, got "loud"'], 'one line naming the variable');
  t.notOk(fs.existsSync(dataDir), 'the data directory was not created');
});
