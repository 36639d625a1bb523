// Registration with the configuration server: the passphrase is required and
// checked before anything is stored; heartbeats make a server healthy; the
// registry survives a restart (LMDB); start-up errors say what is wrong;
// wrong passphrases are limited per peer address; the passphrase is never a
// flag and has at least 20 characters (issue 13).
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { configurationServerClient, unary } from '../helpers/clients';
import { registrationFailuresPerPeerMax } from '../../shared/limits';

async function startConfigurationServer(t: tap.Test, dataDir: string): Promise<RunningDaemon> {
  const daemon = await startDaemon('configuration-server', { args: ['--listen', '127.0.0.1:0', '--data-dir', dataDir] });
  t.teardown(() => daemon.stop());
  return daemon;
}

function client(t: tap.Test, address: string) {
  const cs = configurationServerClient(address);
  t.teardown(() => cs.close());
  return cs;
}

t.test('a wrong passphrase is refused and nothing is stored; the right one registers a healthy server', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const daemon = await startConfigurationServer(t, dir);
  const passphraseFile = path.join(dir, 'passphrase');
  t.equal(fs.statSync(passphraseFile).mode & 0o777, 0o600, 'the generated passphrase is readable by its owner only');
  const passphrase = fs.readFileSync(passphraseFile, 'utf8').trim();
  t.ok(passphrase.length >= 32, 'the generated passphrase is long');
  const cs = client(t, daemon.address);

  const refused = await unary(cs, cs.registerServer, { kind: 'PROCESS_SERVER', name: 'ps1', address: '127.0.0.1:7101', passphrase: 'not-the-passphrase', version: '0.1.0' }).catch((error: grpc.ServiceError) => error);
  t.equal((refused as grpc.ServiceError).code, grpc.status.UNAUTHENTICATED);
  t.match((refused as grpc.ServiceError).details, /wrong passphrase/);
  t.match((refused as grpc.ServiceError).details, passphraseFile, 'the error says where the passphrase is');
  t.same((await unary(cs, cs.listServers, {})).servers, [], 'nothing stored');

  const registered = await unary(cs, cs.registerServer, { kind: 'PROCESS_SERVER', name: 'ps1', address: '127.0.0.1:7101', passphrase, version: '0.1.0' });
  t.ok(registered.serverId);
  t.ok(registered.token);
  t.ok(registered.heartbeatIntervalMs > 0);
  const heartbeat = await unary(cs, cs.heartbeat, { serverId: registered.serverId, token: registered.token });
  t.ok(heartbeat.serverTimeMs > 0);
  const listed = (await unary(cs, cs.listServers, { kind: 'PROCESS_SERVER' })).servers;
  t.equal(listed.length, 1);
  t.match(listed[0], { serverId: registered.serverId, kind: 'PROCESS_SERVER', name: 'ps1', address: '127.0.0.1:7101', version: '0.1.0', healthy: true });
  t.same((await unary(cs, cs.listServers, { kind: 'MASTER_TARGET' })).servers, [], 'the kind filter applies');

  const badToken = await unary(cs, cs.heartbeat, { serverId: registered.serverId, token: 'forged' }).catch((error: grpc.ServiceError) => error);
  t.equal((badToken as grpc.ServiceError).code, grpc.status.UNAUTHENTICATED);
  const unknown = await unary(cs, cs.heartbeat, { serverId: 'ps-999', token: registered.token }).catch((error: grpc.ServiceError) => error);
  t.equal((unknown as grpc.ServiceError).code, grpc.status.NOT_FOUND);

  const again = await unary(cs, cs.registerServer, { kind: 'PROCESS_SERVER', name: 'ps1', address: '127.0.0.1:7201', passphrase, version: '0.1.1' });
  t.equal(again.serverId, registered.serverId, 'the same kind and name keep their id');
  t.not(again.token, registered.token, 'with a new token');
  const old = await unary(cs, cs.heartbeat, { serverId: registered.serverId, token: registered.token }).catch((error: grpc.ServiceError) => error);
  t.equal((old as grpc.ServiceError).code, grpc.status.UNAUTHENTICATED, 'the old token no longer works');
  const updated = (await unary(cs, cs.listServers, {})).servers;
  t.equal(updated.length, 1);
  t.equal(updated[0]!.address, '127.0.0.1:7201');

  const badName = await unary(cs, cs.registerServer, { kind: 'AGENT', name: 'no spaces', address: '127.0.0.1:7103', passphrase, version: '' }).catch((error: grpc.ServiceError) => error);
  t.equal((badName as grpc.ServiceError).code, grpc.status.INVALID_ARGUMENT);
});

t.test('registered servers survive a restart, and the passphrase is reused', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const first = await startDaemon('configuration-server', { args: ['--listen', '127.0.0.1:0', '--data-dir', dir] });
  t.teardown(() => first.stop());
  const passphrase = fs.readFileSync(path.join(dir, 'passphrase'), 'utf8').trim();
  const cs1 = configurationServerClient(first.address);
  const registered = await unary(cs1, cs1.registerServer, { kind: 'MASTER_TARGET', name: 'mt1', address: '127.0.0.1:7102', passphrase, version: '0.1.0' });
  cs1.close();
  t.equal((await first.stop()).code, 0, 'stops cleanly on SIGTERM');

  const second = await startConfigurationServer(t, dir);
  t.equal(fs.readFileSync(path.join(dir, 'passphrase'), 'utf8').trim(), passphrase, 'the passphrase is reused');
  const cs2 = client(t, second.address);
  const listed = (await unary(cs2, cs2.listServers, {})).servers;
  t.equal(listed.length, 1);
  t.match(listed[0], { serverId: registered.serverId, kind: 'MASTER_TARGET', name: 'mt1' });
  await unary(cs2, cs2.heartbeat, { serverId: registered.serverId, token: registered.token });
  t.pass('the token still works after the restart');
});

t.test('start-up errors: an unwritable data directory exits 2, a port in use exits 3 (systemd retries it), each with a clear line', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'not-a-directory');
  fs.writeFileSync(file, 'x');
  const unwritable = await startDaemon('configuration-server', { args: ['--listen', '127.0.0.1:0', '--data-dir', file], expectExit: true });
  const unwritableExit = await unwritable.exited;
  t.equal(unwritableExit.code, 2);
  t.match(unwritable.stderr.join('\n'), /dataDir/);

  const running = await startConfigurationServer(t, path.join(dir, 'first'));
  const clash = await startDaemon('configuration-server', { args: ['--listen', running.address, '--data-dir', path.join(dir, 'second')], expectExit: true });
  const clashExit = await clash.exited;
  t.equal(clashExit.code, 3, 'a port in use may be freed (an old instance still stopping): exit 3, which the units restart');
  t.match(clash.stderr.join('\n'), /config key listen: cannot listen on .*already in use/);
  t.notOk(fs.existsSync(path.join(dir, 'second')), 'and the second data directory was not even created');
});

t.test('wrong passphrases are limited per peer: past 5 in a minute, even the right one is refused for a while (RESOURCE_EXHAUSTED)', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const daemon = await startConfigurationServer(t, dir);
  const passphrase = fs.readFileSync(path.join(dir, 'passphrase'), 'utf8').trim();
  const cs = client(t, daemon.address);
  const register = (given: string) => unary(cs, cs.registerServer, { kind: 'PROCESS_SERVER', name: 'ps1', address: '127.0.0.1:7101', passphrase: given, version: '0.1.0' }).catch((error: grpc.ServiceError) => error);
  for (let guess = 1; guess <= registrationFailuresPerPeerMax; guess++) {
    const refused = (await register(`guess-number-${guess}-of-a-long-passphrase`)) as grpc.ServiceError;
    t.equal(refused.code, grpc.status.UNAUTHENTICATED, `wrong passphrase ${guess}: UNAUTHENTICATED`);
  }
  const limited = (await register(passphrase)) as grpc.ServiceError;
  t.equal(limited.code, grpc.status.RESOURCE_EXHAUSTED, 'then the right passphrase from the same address is refused too');
  t.match(limited.details, /^too many wrong passphrases from 127\.0\.0\.1 \(5 in 60 s\): registration from there is refused for \d+ s more/, limited.details);
  const { servers } = await unary(cs, cs.listServers, {});
  t.same(servers, [], 'nothing was registered');
  t.ok(daemon.logs.filter((line) => line.msg === 'registration refused: wrong passphrase').length === registrationFailuresPerPeerMax, 'each wrong passphrase is logged');
});

t.test('the passphrase: never a flag, at least 20 characters, from a file, the config file or the environment', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const flag = await startDaemon('configuration-server', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'flag'), '--passphrase', 'a-passphrase-of-thirty-characters'], expectExit: true });
  t.same(await flag.exited, { code: 2, signal: null }, '--passphrase: exit 2');
  t.equal(flag.stderr.length, 1, 'one line');
  t.match(flag.stderr[0], /^configuration-server: --passphrase: a passphrase on the command line is visible to every user in ps .*--passphrase-file FILE.*\$DRPLANE_PASSPHRASE$/);
  const agentFlag = await startDaemon('agent', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'agent-flag'), '--configuration-server', '127.0.0.1:1', '--passphrase', 'a-passphrase-of-thirty-characters'], expectExit: true });
  t.same(await agentFlag.exited, { code: 2, signal: null }, 'an agent given --passphrase: exit 2 too');

  const short = await startDaemon('configuration-server', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'short')], env: { DRPLANE_PASSPHRASE: 'nineteen-characters' }, expectExit: true });
  t.same(await short.exited, { code: 2, signal: null }, 'a passphrase of 19 characters: exit 2');
  t.match(short.stderr.join('\n'), /the passphrase must have at least 20 characters/);
  t.equal(short.stderr.length, 1, 'one line');
  const shortFile = path.join(dir, 'short-passphrase');
  fs.writeFileSync(shortFile, 'short-passphrase\n');
  const shortFromFile = await startDaemon('configuration-server', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'short-file'), '--passphrase-file', shortFile], expectExit: true });
  t.same(await shortFromFile.exited, { code: 2, signal: null }, 'a short passphrase in passphraseFile: exit 2');

  // From the environment, on both sides: nothing on a command line.
  const passphrase = 'twenty-four-characters!!';
  const cs = await startDaemon('configuration-server', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'cs'), '--heartbeat-interval-ms', '500'], env: { DRPLANE_PASSPHRASE: passphrase } });
  t.teardown(() => cs.stop());
  t.notOk(fs.existsSync(path.join(dir, 'cs', 'passphrase')), 'no passphrase is generated when the environment gives one');
  const ps = await startDaemon('process-server', { args: ['--name', 'ps1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'ps'), '--configuration-server', cs.address], env: { DRPLANE_PASSPHRASE: passphrase } });
  t.teardown(() => ps.stop());
  await ps.waitForLog((line) => line.msg === 'registered with the configuration server');
  t.pass('a process server registers with $DRPLANE_PASSPHRASE');
  t.notOk(fs.readFileSync(`/proc/${ps.process.pid}/cmdline`, 'utf8').includes(passphrase), 'and the passphrase is not on its command line');
});
