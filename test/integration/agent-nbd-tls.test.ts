// Goal (issue 12, item 5): an agent with `tls` configured requires
// NBD_OPT_STARTTLS on its TCP NBD listener, with the same deployment CA as
// its gRPC mTLS: a plaintext client is told TLS is required and gets nothing;
// a client with a certificate the CA signed (nbdinfo, qemu-io, with gnutls)
// reads and writes; a client without a certificate is refused. Without tls, a
// non-loopback NBD listener is refused at start-up. Certificates from
// deploy/drplane-certs (openssl).
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { repoRoot, startDaemon, tempDir } from '../helpers/daemons';
import { createImage } from '../helpers/disks';
import { mustSucceed, nbdAddressOf, run, whyNoNbdClients } from '../helpers/nbd';

const MiB = 1024 * 1024;
const why = whyNoNbdClients(['nbdinfo', 'qemu-io', 'openssl']);

t.test('NBD over TLS (NBD_OPT_STARTTLS, mutual)', { skip: why || false }, async (t) => {
  const dir = tempDir('drplane-nbd-tls-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const certs = path.join(dir, 'certs');
  const tool = path.join(repoRoot, 'deploy', 'drplane-certs');
  mustSucceed(await run(tool, ['init', certs]), 'drplane-certs init');
  mustSucceed(await run(tool, ['issue', certs, 'agent1', '--role', 'agent', '--ip', '127.0.0.1', '--dns', 'localhost']), 'drplane-certs issue agent1');
  mustSucceed(await run(tool, ['issue', certs, 'hypervisor', '--role', 'agent']), 'drplane-certs issue hypervisor');
  // gnutls (libnbd, qemu) reads a directory with these names: the CA, and the client's certificate and key.
  const clientDir = path.join(dir, 'client');
  fs.mkdirSync(clientDir);
  fs.copyFileSync(path.join(certs, 'ca.crt'), path.join(clientDir, 'ca-cert.pem'));
  fs.copyFileSync(path.join(certs, 'hypervisor.crt'), path.join(clientDir, 'client-cert.pem'));
  fs.copyFileSync(path.join(certs, 'hypervisor.key'), path.join(clientDir, 'client-key.pem'));
  const caOnlyDir = path.join(dir, 'ca-only');
  fs.mkdirSync(caOnlyDir);
  fs.copyFileSync(path.join(certs, 'ca.crt'), path.join(caOnlyDir, 'ca-cert.pem'));

  const disk = path.join(dir, 'disk.img');
  createImage(disk, 8 * MiB, 5);
  const agent = await startDaemon('agent', {
    args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'), '--disk', disk, '--nbd-listen', '127.0.0.1:0', '--tls-ca-file', path.join(certs, 'ca.crt'), '--tls-cert-file', path.join(certs, 'agent1.crt'), '--tls-key-file', path.join(certs, 'agent1.key')],
  });
  t.teardown(() => agent.stop());
  const address = nbdAddressOf(agent.logs);
  const port = address.split(':').pop()!;

  const plain = await run('nbdinfo', [`nbd://127.0.0.1:${port}/disk.img`], { allowFailure: true });
  t.not(plain.code, 0, 'a plaintext client gets nothing');
  // The server answers NBD_REP_ERR_TLS_REQD; libnbd reports it as "not supported" for the export.
  t.match(plain.stderr, /TLS|not supported/i, `its NBD_OPT_GO is refused (${plain.stderr.trim().split('\n')[0]})`);

  const info = JSON.parse(mustSucceed(await run('nbdinfo', ['--json', `nbds://127.0.0.1:${port}/disk.img?tls-certificates=${clientDir}`]), 'nbdinfo over TLS').stdout) as { protocol: string; TLS: boolean; exports: { 'export-size': number }[] };
  t.equal(info.exports[0]!['export-size'], 8 * MiB, 'with a certificate the CA signed, nbdinfo describes the export');
  t.equal(info.TLS, true, 'over TLS');

  const expected = fs.readFileSync(disk);
  expected.fill(0x5a, 4096, 4096 + MiB);
  const written = await run('qemu-io', ['--object', `tls-creds-x509,id=tls0,dir=${clientDir},endpoint=client`, '--image-opts', `driver=nbd,host=127.0.0.1,port=${port},export=disk.img,tls-creds=tls0`, '-c', `write -P 0x5a 4096 ${MiB}`, '-c', 'flush', '-c', `read -P 0x5a 4096 ${MiB}`], { allowFailure: true });
  t.equal(written.code, 0, `qemu-io over TLS ran (${(written.stdout + written.stderr).trim().split('\n').pop()})`);
  t.notMatch(written.stdout + written.stderr, /failed|error/i, 'and its writes and reads succeeded');
  t.ok(fs.readFileSync(disk).equals(expected), 'the write reached the source');

  const noCert = await run('nbdinfo', [`nbds://127.0.0.1:${port}/disk.img?tls-certificates=${caOnlyDir}`], { allowFailure: true });
  t.not(noCert.code, 0, `a client without a certificate is refused (${noCert.stderr.trim().split('\n')[0]})`);
  t.equal(agent.process.exitCode, null, 'and the agent serves on');

  const refused = await startDaemon('agent', { args: ['--name', 'agent2', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data2'), '--disk', disk, '--nbd-listen', '0.0.0.0:0'], expectExit: true });
  const exit = await refused.exited;
  t.equal(exit.code, 2, 'without tls, an NBD listener off loopback stops the agent at start-up (exit 2)');
  t.match(refused.stderr.join('\n'), /nbdListen.*plaintext/, 'naming nbdListen and why');
});
