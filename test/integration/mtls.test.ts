// Goal: a daemon configured for TLS speaks only mutual TLS with peers whose
// certificates the deployment CA signed. Daemons register and heartbeat over
// it; an operator with a CA-signed certificate (drctl, or grpcurl's reflection
// calls) is served; a client with no certificate, with one from another CA, or
// in plaintext is refused and changes nothing; a daemon with another CA's
// certificate cannot register; the optional plaintext status listener answers
// health, reflection and read-only calls only. Certificates come from
// deploy/drplane-certs (openssl), as the operators' documentation says.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { createClient, unary } from '../../shared/grpc';
import { v1 } from '../../shared/proto';
import { repoRoot, startDaemon, tempDir } from '../helpers/daemons';
import { eventually, spawnDrctl } from '../helpers/stack';
import { whyNoOpenssl } from '../helpers/netns';
import { findGrpcurl, grpcurl, grpcurlMissing } from '../helpers/grpcurl';

const grpcurlBinary = findGrpcurl();

const certs = path.join(repoRoot, 'deploy', 'drplane-certs');
const reflectionProto = path.join(path.dirname(require.resolve('@grpc/reflection')), '..', 'proto');
const definition = protoLoader.loadSync(['grpc/reflection/v1/reflection.proto', path.basename(healthProtoPath)], {
  includeDirs: [reflectionProto, path.dirname(healthProtoPath)],
  keepCase: true,
  enums: String,
  defaults: true,
});
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const loaded = grpc.loadPackageDefinition(definition) as any;

function listServices(address: string, credentials: grpc.ChannelCredentials): Promise<string[]> {
  const client = new loaded.grpc.reflection.v1.ServerReflection(address, credentials);
  return new Promise((resolve, reject) => {
    const call = client.ServerReflectionInfo();
    call.on('data', (answer: { list_services_response?: { service: { name: string }[] } }) => {
      resolve((answer.list_services_response?.service ?? []).map((service) => service.name).sort());
      call.end();
      client.close();
    });
    call.on('error', (error: Error) => {
      client.close();
      reject(error);
    });
    call.write({ list_services: '' });
  });
}

/** drctl with the given arguments and environment (its TLS options can come from either). */
const runDrctl = (args: string[], options: { env?: NodeJS.ProcessEnv } = {}) => spawnDrctl(args, options);

function health(address: string, credentials: grpc.ChannelCredentials): Promise<string> {
  const client = new loaded.grpc.health.v1.Health(address, credentials);
  return new Promise((resolve, reject) =>
    client.Check({ service: '' }, { deadline: Date.now() + 5_000 }, (error: grpc.ServiceError | null, answer: { status: string }) => {
      client.close();
      if (error) reject(error);
      else resolve(answer.status);
    }),
  );
}

t.test('mutual TLS between daemons and for operators', async (t) => {
  const noOpenssl = await whyNoOpenssl();
  // A plan of 0 marks the test skipped, with the reason.
  if (noOpenssl) return t.plan(0, noOpenssl);
  const dir = tempDir('drplane-mtls-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const ca = path.join(dir, 'ca');
  const other = path.join(dir, 'other-ca');
  execFileSync(certs, ['init', ca]);
  execFileSync(certs, ['init', other]);
  execFileSync(certs, ['issue', ca, 'cs', '--role', 'configuration-server', '--ip', '127.0.0.1', '--dns', 'localhost']);
  execFileSync(certs, ['issue', ca, 'mt1', '--role', 'master-target', '--ip', '127.0.0.1', '--dns', 'localhost']);
  execFileSync(certs, ['issue', ca, 'ops', '--role', 'operator']);
  execFileSync(certs, ['issue', other, 'ps-foreign', '--role', 'process-server', '--ip', '127.0.0.1']);
  execFileSync(certs, ['issue', other, 'ops', '--role', 'operator']);
  const read = (file: string) => fs.readFileSync(file);
  const tlsArgs = (authority: string, name: string) => ['--tls-ca-file', path.join(authority, 'ca.crt'), '--tls-cert-file', path.join(authority, `${name}.crt`), '--tls-key-file', path.join(authority, `${name}.key`)];
  const operator = grpc.credentials.createSsl(read(path.join(ca, 'ca.crt')), read(path.join(ca, 'ops.key')), read(path.join(ca, 'ops.crt')));

  const cs = await startDaemon('configuration-server', {
    args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'cs'), '--heartbeat-interval-ms', '500', '--status-listen', '127.0.0.1:0', ...tlsArgs(ca, 'cs')],
  });
  t.teardown(() => cs.stop());
  const listening = cs.logs.find((line) => line.msg === 'listening')!;
  t.equal(listening.tls, true, 'the configuration server says it listens with mTLS');
  const statusAddress = String(listening.statusAddress);
  const link = ['--configuration-server', cs.address, '--passphrase-file', path.join(dir, 'cs', 'passphrase')];
  const mt = await startDaemon('master-target', {
    args: ['--name', 'mt1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt'), '--datastore-root', path.join(dir, 'ds'), ...link, ...tlsArgs(ca, 'mt1')],
  });
  t.teardown(() => mt.stop());
  // A process server whose certificate another CA signed: consistent in itself, so it starts, but no peer accepts it.
  const foreign = await startDaemon('process-server', {
    args: ['--name', 'ps-foreign', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'ps'), ...link, ...tlsArgs(other, 'ps-foreign')],
  });
  t.teardown(() => foreign.stop());

  const client = createClient(v1.ConfigurationServer, cs.address, operator);
  t.teardown(() => client.close());
  await eventually('mt1 to register', async () => {
    const { servers } = await unary(client, client.listServers, {});
    return servers.some((server) => server.name === 'mt1' && server.healthy) ? true : undefined;
  });
  t.pass('the master target registered and heartbeats over mTLS');
  await foreign.waitForLog((line) => line.msg === 'configuration server unreachable; retrying');
  const { servers } = await unary(client, client.listServers, {});
  t.same(
    servers.map((server) => server.name),
    ['mt1'],
    'the process server with another CA\'s certificate could not register',
  );

  t.test('refused: no certificate, another CA\'s certificate, plaintext; nothing is written', async (t) => {
    const caCert = read(path.join(ca, 'ca.crt'));
    const attempts: [string, grpc.ChannelCredentials][] = [
      ['no client certificate', grpc.credentials.createSsl(caCert)],
      ['a client certificate from another CA', grpc.credentials.createSsl(caCert, read(path.join(other, 'ops.key')), read(path.join(other, 'ops.crt')))],
      ['plaintext', grpc.credentials.createInsecure()],
    ];
    for (const [what, credentials] of attempts) {
      for (const address of [cs.address, mt.address]) {
        const intruder = createClient(v1.ConfigurationServer, address, credentials);
        const error = await unary(intruder, intruder.addMachine, { name: 'intruder', agent: 'agent1', disks: [] }, { timeoutMs: 5_000 }).then(
          () => undefined,
          (failure: grpc.ServiceError) => failure,
        );
        intruder.close();
        t.equal(error?.code, grpc.status.UNAVAILABLE, `${what} to ${address === cs.address ? 'the configuration server' : 'the master target'}: refused at the handshake (${error?.details})`);
      }
      await t.rejects(listServices(cs.address, credentials), `${what}: reflection refused too`);
    }
    const { machines } = await unary(client, client.listMachines, {});
    t.same(machines, [], 'no machine was added by the refused calls');
    t.equal(await health(cs.address, operator), 'SERVING', 'the configuration server still serves');
  });

  t.test('an operator with the CA\'s certificate: drctl and grpcurl\'s reflection list', async (t) => {
    const services = await listServices(cs.address, operator);
    t.comment(`reflection over mTLS lists: ${services.join(', ')}`);
    t.same(services, ['drplane.v1.ConfigurationServer', 'grpc.health.v1.Health'], 'reflection over mTLS lists what the configuration server serves');
    t.same(await listServices(mt.address, operator).then((names) => names.includes('drplane.v1.MasterTarget')), true, 'and the master target lists its own');
    const env = { DRPLANE_CA_FILE: path.join(ca, 'ca.crt'), DRPLANE_CERT_FILE: path.join(ca, 'ops.crt'), DRPLANE_KEY_FILE: path.join(ca, 'ops.key') };
    const status = await runDrctl(['--server', cs.address, '--json', 'servers'], { env });
    t.equal(status.code, 0, `drctl with DRPLANE_CA_FILE/CERT/KEY is served: ${status.stderr}`);
    t.match(status.stdout, /mt1/, 'and lists the master target');
    const flags = await runDrctl(['--server', cs.address, '--ca-file', env.DRPLANE_CA_FILE, '--cert-file', env.DRPLANE_CERT_FILE, '--key-file', env.DRPLANE_KEY_FILE, 'status']);
    t.equal(flags.code, 0, 'drctl with --ca-file/--cert-file/--key-file is served');
    t.equal(flags.stderr, '', 'and prints no warning');
    const plain = await runDrctl(['--server', cs.address, 'status']);
    t.equal(plain.code, 1, 'drctl without certificates fails');
    t.match(plain.stderr, /UNAVAILABLE: .*closed the connection during set-up.*--ca-file, --cert-file and --key-file/, `and says what to give: ${plain.stderr.trim()}`);
    const foreignOperator = await runDrctl(['--server', cs.address, '--ca-file', path.join(other, 'ca.crt'), '--cert-file', path.join(other, 'ops.crt'), '--key-file', path.join(other, 'ops.key'), 'status']);
    t.match(foreignOperator.stderr, /UNAVAILABLE: the TLS handshake with .* failed/, `drctl with another CA's files: ${foreignOperator.stderr.trim()}`);
    const mixed = await runDrctl(['--server', cs.address, '--ca-file', path.join(ca, 'ca.crt'), '--cert-file', path.join(other, 'ops.crt'), '--key-file', path.join(other, 'ops.key'), 'status']);
    t.match(mixed.stderr, /INVALID_ARGUMENT: --cert-file: .* was not signed by the CA in/, `a certificate that does not match --ca-file is caught before dialling: ${mixed.stderr.trim()}`);
    const partial = await runDrctl(['--server', cs.address, '--ca-file', path.join(ca, 'ca.crt'), 'status']);
    t.match(partial.stderr, /INVALID_ARGUMENT: mTLS needs all three/, 'one of the three files alone is refused');
    await t.test('the real grpcurl with -cacert/-cert/-key', { skip: grpcurlBinary ? false : grpcurlMissing }, async (t) => {
      const tls = ['-cacert', env.DRPLANE_CA_FILE, '-cert', env.DRPLANE_CERT_FILE, '-key', env.DRPLANE_KEY_FILE];
      const listed = grpcurl(grpcurlBinary!, [...tls, cs.address, 'list']);
      t.match(listed.stdout, /drplane\.v1\.ConfigurationServer/, `grpcurl -cacert/-cert/-key lists the services ${listed.stderr}`);
      const described = grpcurl(grpcurlBinary!, [...tls, mt.address, 'describe', 'drplane.v1.GetReplicaRequest']);
      t.match(described.stdout, /string disk_id = 1;/, 'describe over mTLS shows the .proto as written');
      const status = grpcurl(grpcurlBinary!, [...tls, cs.address, 'drplane.v1.ConfigurationServer/GetStatus']);
      t.equal(status.status, 0, `GetStatus over mTLS ${status.stderr}`);
      const noCertificate = grpcurl(grpcurlBinary!, ['-cacert', env.DRPLANE_CA_FILE, cs.address, 'list']);
      t.not(noCertificate.status, 0, 'without a client certificate grpcurl is refused');
    });
  });

  t.test('the plaintext status listener: health, reflection and reads only', async (t) => {
    const plaintext = grpc.credentials.createInsecure();
    t.equal(await health(statusAddress, plaintext), 'SERVING', 'health answers in plaintext on statusListen');
    t.ok((await listServices(statusAddress, plaintext)).includes('drplane.v1.ConfigurationServer'), 'reflection answers there');
    const status = createClient(v1.ConfigurationServer, statusAddress, plaintext);
    t.teardown(() => status.close());
    const { servers } = await unary(status, status.listServers, {});
    t.ok(servers.some((server) => server.name === 'mt1'), 'a read-only call (ListServers) is served');
    const error = await unary(status, status.addMachine, { name: 'sneaky', agent: 'agent1', disks: [] }).then(
      () => undefined,
      (failure: grpc.ServiceError) => failure,
    );
    t.equal(error?.code, grpc.status.UNIMPLEMENTED, 'a call that changes state is not served there');
    const { machines } = await unary(client, client.listMachines, {});
    t.same(machines, [], 'and nothing was written');
  });
});
