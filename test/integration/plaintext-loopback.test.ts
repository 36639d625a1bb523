// Goal (issue 13, item 4): plaintext has no certificates and so no roles; a
// daemon refuses to listen in plaintext on an address that is not loopback
// (exit 2, one line naming the key, its data directory not even created)
// unless the operator says --insecure-plaintext, which it then logs at warn
// on every start. Loopback plaintext (the all-in-one, the tests) is as before.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startDaemon, tempDir, type DaemonName } from '../helpers/daemons';

const warning = 'insecurePlaintext: listening in plaintext on an address that is not loopback; anyone who reaches it may call every method (configure tls: docs/security.md)';

t.test('plaintext on a non-loopback address: exit 2 with one line, unless --insecure-plaintext (then a warning)', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const argsOf: Record<DaemonName, string[]> = {
    'configuration-server': [],
    'process-server': ['--name', 'ps1'],
    'master-target': ['--name', 'mt1', '--datastore-root', path.join(dir, 'ds')],
    agent: ['--name', 'agent1', '--disk-root', dir],
  };
  for (const [name, args] of Object.entries(argsOf) as [DaemonName, string[]][]) {
    const dataDir = path.join(dir, name);
    const refused = await startDaemon(name, { args: ['--listen', '0.0.0.0:0', '--data-dir', dataDir, ...args], expectExit: true });
    t.same(await refused.exited, { code: 2, signal: null }, `${name} on 0.0.0.0 in plaintext: exit 2`);
    t.same(refused.stderr, [`${name}: config key listen: 0.0.0.0:0 is not a loopback address and tls is not configured: in plaintext anyone who reaches it may call every method; configure tls (docs/security.md) or, to accept that, --insecure-plaintext (config key insecurePlaintext)`], 'one line naming the key and the way out');
    t.notOk(fs.existsSync(dataDir), 'its data directory was not even created');
  }

  const allowed = await startDaemon('process-server', { args: ['--name', 'ps1', '--listen', '0.0.0.0:0', '--data-dir', path.join(dir, 'allowed'), '--insecure-plaintext'] });
  t.teardown(() => allowed.stop());
  const line = await allowed.waitForLog((entry) => entry.msg === warning);
  t.equal(line.level, 40, 'with --insecure-plaintext it starts, and says so at warn');
  t.equal(line.listen, '0.0.0.0:0', 'naming the address');

  const fromFile = path.join(dir, 'agent.json');
  fs.writeFileSync(fromFile, JSON.stringify({ name: 'agent1', listen: '0.0.0.0:0', dataDir: path.join(dir, 'agent-file'), diskRoots: [dir], insecurePlaintext: true }));
  const agent = await startDaemon('agent', { args: ['--config', fromFile] });
  t.teardown(() => agent.stop());
  await agent.waitForLog((entry) => entry.msg === warning);
  t.pass('the config key insecurePlaintext does the same');

  const loopback = await startDaemon('process-server', { args: ['--name', 'ps2', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'loopback')] });
  t.teardown(() => loopback.stop());
  t.notOk(loopback.logs.some((entry) => entry.msg === warning), 'loopback plaintext starts as before, without a warning');
});
