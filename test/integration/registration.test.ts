// Registration with the configuration server: the passphrase is required and
// checked before anything is stored; heartbeats make a server healthy; the
// registry survives a restart (LMDB); start-up errors say what is wrong.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { configurationServerClient, unary } from '../helpers/clients';

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
