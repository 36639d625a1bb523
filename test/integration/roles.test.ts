// Goal (issue 13, roles and authorization): under mTLS each daemon allows each
// method only to the roles its table names (daemons/<name>/roles.ts). Every
// method of the configuration server, a process server, a master target and an
// agent is called
// with a certificate of each role and one without a role: where the table
// refuses, the answer is PERMISSION_DENIED naming the role and the method;
// where it allows a read, the call is served; and the sweep changes nothing
// (servers, machines, replicas and their epochs, captures, disk files). Then
// the named cases: an agent's certificate cannot SetEpoch on a master target
// nor ReadDisk on another agent (a process server can), a viewer reads status
// but cannot add a machine, the refusal is logged and counted in
// drplane_calls_refused_total; and registration: a server registers only under
// its certificate's CN and with its role, and a name stays bound to the
// certificate that registered it until a newer one (a renewal) takes it over,
// after which the older one is refused. Certificates come from deploy/drplane-certs.
import t from 'tap';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { createClient, unary } from '../../shared/grpc';
import { packageDefinition, v1 } from '../../shared/proto';
import type { MethodRoles, Role } from '../../shared/roles';
import { configurationServerRoles } from '../../daemons/configuration-server/roles';
import { masterTargetRoles } from '../../daemons/master-target/roles';
import { agentRoles } from '../../daemons/agent/roles';
import { processServerRoles } from '../../daemons/process-server/roles';
import { makeAuthority } from '../helpers/certificates';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { whyNoOpenssl } from '../helpers/netns';
import { eventually } from '../helpers/stack';
import { findGrpcurl, grpcurl, grpcurlMissing } from '../helpers/grpcurl';

const MiB = 1024 * 1024;
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const healthService = (grpc.loadPackageDefinition(packageDefinition) as any).grpc.health.v1.Health.service as grpc.ServiceDefinition;

interface Outcome {
  code: grpc.status;
  details: string;
  /** Messages a response stream delivered. */
  messages: number;
  /** drplane's own error code (the drplane-error-code metadata), when the call failed. */
  errorCode?: unknown;
}

/** Calls any method with a request (empty by default) and resolves with the status; a request stream is ended at once. */
function callMethod(client: grpc.Client, method: grpc.MethodDefinition<object, object>, request: object = {}): Promise<Outcome> {
  const options = { deadline: Date.now() + 10_000 };
  const metadata = new grpc.Metadata();
  const { path: methodPath, requestSerialize, responseDeserialize } = method;
  return new Promise((resolve) => {
    let messages = 0;
    if (!method.requestStream && !method.responseStream) {
      client.makeUnaryRequest(methodPath, requestSerialize, responseDeserialize, request, metadata, options, (error) => resolve({ code: error ? error.code : grpc.status.OK, details: error?.details ?? '', messages: error ? 0 : 1, errorCode: error?.metadata?.get('drplane-error-code')[0] }));
      return;
    }
    const call = method.requestStream
      ? method.responseStream
        ? client.makeBidiStreamRequest(methodPath, requestSerialize, responseDeserialize, metadata, options)
        : client.makeClientStreamRequest(methodPath, requestSerialize, responseDeserialize, metadata, options, () => undefined)
      : client.makeServerStreamRequest(methodPath, requestSerialize, responseDeserialize, request, metadata, options);
    call.on('data', () => messages++);
    call.on('error', () => undefined);
    call.on('status', (status: grpc.StatusObject) => resolve({ code: status.code, details: status.details, messages, errorCode: status.metadata.get('drplane-error-code')[0] }));
    if ('end' in call && method.requestStream) call.end();
  });
}

const sha256OfFile = (file: string) => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

t.test('roles: each daemon allows each method only to the roles its table names', async (t) => {
  const noOpenssl = await whyNoOpenssl();
  if (noOpenssl) return t.plan(0, noOpenssl);
  const dir = tempDir('drplane-roles-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const ca = makeAuthority(path.join(dir, 'ca'));
  // An mt1 of a master target's role issued before the one mt1 runs with: an older certificate of the same name.
  ca.issue('mt1', 'master-target', { file: 'mt1-older' });
  ca.issue('cs', 'configuration-server');
  ca.issue('mt1', 'master-target');
  ca.issue('agent1', 'agent');
  ca.issue('agent2', 'agent');
  ca.issue('ps1', 'process-server');
  ca.issue('ops', 'operator');
  ca.issue('watcher', 'viewer');
  ca.issue('mt1', 'process-server', { file: 'mt1-as-process-server' });
  ca.issue('mt2', 'master-target');
  ca.issueWithoutRole('no-role');

  const source = path.join(dir, 'disks', 'source.img');
  fs.mkdirSync(path.dirname(source), { recursive: true });
  fs.writeFileSync(source, crypto.randomBytes(MiB));
  const datastore = path.join(dir, 'ds');
  const daemons: RunningDaemon[] = [];
  t.teardown(async () => {
    await Promise.all(daemons.map((daemon) => daemon.stop()));
  });
  const cs = await startDaemon('configuration-server', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'cs'), '--heartbeat-interval-ms', '500', ...ca.flags('cs')] });
  daemons.push(cs);
  const passphraseFile = path.join(dir, 'cs', 'passphrase');
  const link = ['--configuration-server', cs.address, '--passphrase-file', passphraseFile];
  const [mt, agent1, agent2, ps] = await Promise.all([
    startDaemon('master-target', { args: ['--name', 'mt1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt'), '--datastore-root', datastore, '--metrics-listen', '127.0.0.1:0', ...link, ...ca.flags('mt1')] }),
    startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'agent1'), '--disk', source, ...link, ...ca.flags('agent1')] }),
    startDaemon('agent', { args: ['--name', 'agent2', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'agent2'), '--disk-root', path.join(dir, 'disks'), ...link, ...ca.flags('agent2')] }),
    startDaemon('process-server', { args: ['--name', 'ps1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'ps'), '--hash-threads', '1', ...link, ...ca.flags('ps1')] }),
  ]);
  daemons.push(mt, agent1, agent2, ps);

  // The callers: one certificate per role (agent2's for the agent role: to agent1 it is another agent), and one without.
  const callerFiles: Record<Role | 'none', string> = { 'configuration-server': 'cs', 'process-server': 'ps1', 'master-target': 'mt1', agent: 'agent2', operator: 'ops', viewer: 'watcher', none: 'no-role' };
  const clients: grpc.Client[] = [];
  t.teardown(() => clients.forEach((client) => client.close()));
  const clientOf = <C extends grpc.Client>(Constructor: new (address: string, credentials: grpc.ChannelCredentials) => C, address: string, file: string): C => {
    const client = createClient(Constructor as never, address, ca.credentials(file)) as C;
    clients.push(client);
    return client;
  };
  const operatorCs = clientOf(v1.ConfigurationServer, cs.address, 'ops');
  await eventually('mt1, agent1, agent2 and ps1 to register over mTLS', async () => {
    const { servers } = await unary(operatorCs, operatorCs.listServers, {});
    return servers.length === 4 ? servers : undefined;
  });

  // State the sweep must not change: a replica at epoch 1 on mt1 (made as the configuration server makes one).
  const csMt = clientOf(v1.MasterTarget, mt.address, 'cs');
  const replicaPath = path.join(datastore, 'vm1', 'disk0.img');
  await unary(csMt, csMt.createReplica, { diskId: 'd1', path: replicaPath, diskBytes: MiB, epoch: 1 });
  const opsMt = clientOf(v1.MasterTarget, mt.address, 'ops');
  const opsAgent1 = clientOf(v1.Agent, agent1.address, 'ops');
  const opsPs = clientOf(v1.ProcessServer, ps.address, 'ops');
  const state = async () => ({
    servers: (await unary(operatorCs, operatorCs.listServers, {})).servers.map(({ name, address, kind }) => ({ name, address, kind })),
    machines: (await unary(operatorCs, operatorCs.listMachines, {})).machines,
    replicas: (await unary(opsMt, opsMt.listReplicas, {})).replicas.map(({ diskId, epoch, appliedSequence, path: file }) => ({ diskId, epoch, appliedSequence, file })),
    captures: (await unary(opsAgent1, opsAgent1.listCaptures, {})).captures,
    syncs: (await unary(opsPs, opsPs.listSyncs, {})).syncs,
    replications: (await unary(opsPs, opsPs.listReplications, {})).replications,
    source: sha256OfFile(source),
    replica: sha256OfFile(replicaPath),
  });
  const before = await state();
  t.equal(before.replicas[0]?.epoch, 1, 'the replica d1 is at epoch 1');

  await t.test('every method with every role: refused where the table says, served reads elsewhere, nothing written', async (t) => {
    const targets: { daemon: string; address: string; service: string; definition: grpc.ServiceDefinition; roles: MethodRoles }[] = [
      { daemon: 'configuration server', address: cs.address, service: 'drplane.v1.ConfigurationServer', definition: v1.ConfigurationServer.service, roles: configurationServerRoles },
      { daemon: 'master target', address: mt.address, service: 'drplane.v1.MasterTarget', definition: v1.MasterTarget.service, roles: masterTargetRoles },
      { daemon: 'agent agent1', address: agent1.address, service: 'drplane.v1.Agent', definition: v1.Agent.service, roles: agentRoles },
      { daemon: 'process server', address: ps.address, service: 'drplane.v1.ProcessServer', definition: v1.ProcessServer.service, roles: processServerRoles },
    ];
    const counts = { refused: 0, served: 0, notCalled: 0 };
    const wrong: string[] = [];
    for (const target of targets) {
      for (const [role, file] of Object.entries(callerFiles) as [Role | 'none', string][]) {
        const client = clientOf(grpc.Client, target.address, file);
        await Promise.all(
          Object.entries(target.definition).map(async ([name, method]) => {
            const grantees = target.roles[name]!;
            const allowed = role !== 'none' && grantees.includes(role);
            const isRead = grantees.includes('viewer');
            // Allowed calls that change state are not made here (the other integration tests make them); allowed reads are.
            if (allowed && !isRead) return void counts.notCalled++;
            const outcome = await callMethod(client, method as grpc.MethodDefinition<object, object>);
            const fullName = `${target.service}/${name}`;
            if (!allowed) {
              const named = role === 'none' ? outcome.details.includes('CN=no-role') && outcome.details.includes('carries no drplane role') : outcome.details.includes(`role ${role} `);
              if (outcome.code !== grpc.status.PERMISSION_DENIED || !named || !outcome.details.includes(fullName)) wrong.push(`${role} -> ${fullName}: expected PERMISSION_DENIED naming the role and method, got ${grpc.status[outcome.code]} ${outcome.details}`);
              else if (outcome.errorCode !== 'permission-denied') wrong.push(`${role} -> ${fullName}: PERMISSION_DENIED without drplane's error code in the metadata (${String(outcome.errorCode)})`);
              else counts.refused++;
            } else if (outcome.code === grpc.status.PERMISSION_DENIED) wrong.push(`${role} -> ${fullName}: the table allows it, got PERMISSION_DENIED ${outcome.details}`);
            else counts.served++;
          }),
        );
        // Health and reflection: every role; a certificate without a role: nothing at all.
        const health = await callMethod(client, healthService.Check as grpc.MethodDefinition<object, object>, { service: '' });
        if (role === 'none' ? health.code !== grpc.status.PERMISSION_DENIED : health.code !== grpc.status.OK) wrong.push(`${role} -> ${target.daemon} health: got ${grpc.status[health.code]} ${health.details}`);
        else counts[role === 'none' ? 'refused' : 'served']++;
      }
    }
    t.same(wrong, [], 'every call answered as the tables say');
    t.ok(counts.refused > 300, `${counts.refused} calls refused with PERMISSION_DENIED naming the role and the method`);
    t.ok(counts.served > 50, `${counts.served} reads and health checks served to the roles allowed them (${counts.notCalled} allowed changes not called here)`);
    t.same(await state(), before, 'nothing changed: servers, machines, replicas and epochs, captures, syncs, replications, the source disk and the replica file');
  });

  await t.test('an agent certificate cannot SetEpoch on a master target; the refusal is logged and counted', async (t) => {
    const agentMt = clientOf(v1.MasterTarget, mt.address, 'agent2');
    const refused = await unary(agentMt, agentMt.setEpoch, { diskId: 'd1', epoch: 2 ** 40 }).catch((error: grpc.ServiceError) => error);
    t.equal((refused as grpc.ServiceError).code, grpc.status.PERMISSION_DENIED, 'PERMISSION_DENIED');
    t.match((refused as grpc.ServiceError).details, /^the role agent \(certificate CN=agent2\) may not call drplane\.v1\.MasterTarget\/SetEpoch: it is for configuration-server/, (refused as grpc.ServiceError).details);
    t.equal((await unary(opsMt, opsMt.getReplica, { diskId: 'd1' })).epoch, 1, 'the replica is still at epoch 1');
    const line = await mt.waitForLog((entry) => entry.msg === "call refused: the caller's role may not call this method" && entry.method === 'drplane.v1.MasterTarget/SetEpoch' && entry.role === 'agent');
    t.equal(line.certificate, 'agent2', 'the master target logs the refusal with the role, the method and the certificate');
    const metricsAddress = String(mt.logs.find((entry) => entry.msg === 'listening')?.metricsAddress);
    const text = await (await fetch(`http://${metricsAddress}/metrics`)).text();
    const counted = /^drplane_calls_refused_total\{role="agent",method="drplane\.v1\.MasterTarget\/SetEpoch"\} (\d+)$/m.exec(text);
    t.ok(counted && Number(counted[1]) >= 2, `drplane_calls_refused_total counts it (${counted?.[0]})`);
    // The configuration server's certificate may: the table is not a wall for everyone.
    await unary(csMt, csMt.setEpoch, { diskId: 'd1', epoch: 2 });
    t.equal((await unary(opsMt, opsMt.getReplica, { diskId: 'd1' })).epoch, 2, 'the configuration server sets the epoch');
  });

  await t.test("an agent cannot read another agent's disk; a process server can", async (t) => {
    const method = v1.Agent.service.ReadDisk as grpc.MethodDefinition<object, object>;
    const request = { path: source, ranges: [{ offset: 0, length: MiB }] };
    const byAgent = await callMethod(clientOf(grpc.Client, agent1.address, 'agent2'), method, request);
    t.equal(byAgent.code, grpc.status.PERMISSION_DENIED, `agent2's certificate: ${byAgent.details}`);
    t.match(byAgent.details, /role agent .*drplane\.v1\.Agent\/ReadDisk: it is for process-server/);
    t.equal(byAgent.messages, 0, 'not one piece of the disk was sent');
    const byProcessServer = await callMethod(clientOf(grpc.Client, agent1.address, 'ps1'), method, request);
    t.equal(byProcessServer.code, grpc.status.OK, 'a process server reads it');
    t.ok(byProcessServer.messages > 0, `${byProcessServer.messages} messages of disk data`);
    // Writes through an agent come only from its own certificate (the machine's workload).
    const write = v1.Agent.service.Write as grpc.MethodDefinition<object, object>;
    const writeRequest = { path: source, offset: 0, data: Buffer.alloc(4096, 1) };
    const byOther = await callMethod(clientOf(grpc.Client, agent1.address, 'agent2'), write, writeRequest);
    t.equal(byOther.code, grpc.status.PERMISSION_DENIED, `another agent cannot write: ${byOther.details}`);
    t.equal(sha256OfFile(source), before.source, 'the source is unchanged');
  });

  await t.test('a viewer reads status but cannot change anything; a certificate without a role gets nothing', async (t) => {
    const viewerCs = clientOf(v1.ConfigurationServer, cs.address, 'watcher');
    const status = await unary(viewerCs, viewerCs.getStatus, {});
    t.ok(status, 'the viewer reads the configuration server status');
    const added = await unary(viewerCs, viewerCs.addMachine, { name: 'vm9', agent: 'agent1', disks: [{ sourcePath: source }] }).catch((error: grpc.ServiceError) => error);
    t.equal((added as grpc.ServiceError).code, grpc.status.PERMISSION_DENIED, 'AddMachine is refused');
    t.match((added as grpc.ServiceError).details, /the role viewer \(certificate CN=watcher\) may not call drplane\.v1\.ConfigurationServer\/AddMachine: it is for operator/);
    const enable = await unary(viewerCs, viewerCs.enableReplication, { machine: 'vm9' }).catch((error: grpc.ServiceError) => error);
    t.equal((enable as grpc.ServiceError).code, grpc.status.PERMISSION_DENIED, 'EnableReplication is refused');
    t.same((await unary(operatorCs, operatorCs.listMachines, {})).machines, [], 'no machine was added');
    const noRole = clientOf(v1.ConfigurationServer, cs.address, 'no-role');
    const refused = await unary(noRole, noRole.getStatus, {}).catch((error: grpc.ServiceError) => error);
    t.equal((refused as grpc.ServiceError).code, grpc.status.PERMISSION_DENIED, 'a certificate without a role cannot even read the status');
    t.match((refused as grpc.ServiceError).details, /certificate CN=no-role may not call drplane\.v1\.ConfigurationServer\/GetStatus: it carries no drplane role/);
  });

  await t.test('a viewer with the real grpcurl: reflection and reads work, a change is PermissionDenied', { skip: findGrpcurl() ? false : grpcurlMissing }, async (t) => {
    const binary = findGrpcurl()!;
    const tls = ['-cacert', ca.caFile, '-cert', path.join(ca.dir, 'watcher.crt'), '-key', path.join(ca.dir, 'watcher.key')];
    const listed = grpcurl(binary, [...tls, cs.address, 'list']);
    t.match(listed.stdout, /drplane\.v1\.ConfigurationServer/, `reflection lists the services ${listed.stderr}`);
    const status = grpcurl(binary, [...tls, mt.address, 'drplane.v1.MasterTarget/GetStatus']);
    t.equal(status.status, 0, `the master target's GetStatus ${status.stderr}`);
    const retire = grpcurl(binary, [...tls, '-d', '{"disk_id":"d1","epoch":3}', mt.address, 'drplane.v1.MasterTarget/RetireReplica']);
    t.not(retire.status, 0, 'RetireReplica fails');
    t.match(retire.stderr, /Code: PermissionDenied\s+Message: the role viewer \(certificate CN=watcher\) may not call drplane\.v1\.MasterTarget\/RetireReplica: it is for configuration-server/, retire.stderr.trim());
    t.equal((await unary(opsMt, opsMt.getReplica, { diskId: 'd1' })).epoch, 2, 'the replica is not retired and keeps its epoch');
  });

  await t.test('registration: only under the certificate\'s name and role; a name stays bound to its certificate', async (t) => {
    const passphrase = fs.readFileSync(passphraseFile, 'utf8').trim();
    const registered = () => state().then((now) => now.servers);
    const serversBefore = await registered();
    const attempt = (file: string, kind: 'MASTER_TARGET' | 'PROCESS_SERVER' | 'AGENT', name: string) => {
      const client = clientOf(v1.ConfigurationServer, cs.address, file);
      return unary(client, client.registerServer, { kind, name, address: '127.0.0.1:1', passphrase, version: 'rogue' }).catch((error: grpc.ServiceError) => error);
    };
    const cases: [string, Promise<unknown>, RegExp, grpc.status][] = [
      ['an agent certificate re-registering mt1', attempt('agent2', 'MASTER_TARGET', 'mt1'), /the certificate \(CN=agent2\) has the role agent, and a master target registers with a certificate of role master-target/, grpc.status.PERMISSION_DENIED],
      ['a process-server certificate named mt1 registering the master target mt1', attempt('mt1-as-process-server', 'MASTER_TARGET', 'mt1'), /has the role process-server, and a master target registers with a certificate of role master-target/, grpc.status.PERMISSION_DENIED],
      ['a master target certificate of another name (mt2) registering mt1', attempt('mt2', 'MASTER_TARGET', 'mt1'), /a server registers under the name in its certificate, CN=mt2/, grpc.status.PERMISSION_DENIED],
      ['an older certificate named mt1, of the right role', attempt('mt1-older', 'MASTER_TARGET', 'mt1'), /that name is bound to another certificate .* was not issued after it/, grpc.status.PERMISSION_DENIED],
      ['an operator registering a process server', attempt('ops', 'PROCESS_SERVER', 'ops'), /the role operator \(certificate CN=ops\) may not call drplane\.v1\.ConfigurationServer\/RegisterServer/, grpc.status.PERMISSION_DENIED],
    ];
    for (const [what, outcome, details, code] of cases) {
      const error = (await outcome) as grpc.ServiceError;
      t.equal(error.code, code, `${what}: ${grpc.status[code]}`);
      t.match(error.details, details, `${what}: ${error.details}`);
    }
    t.same(await registered(), serversBefore, 'mt1 keeps its address; no server was added or changed');
    // mt1 itself still heartbeats and is healthy.
    const { servers } = await unary(operatorCs, operatorCs.listServers, { kind: 'MASTER_TARGET' });
    t.ok(servers.find((server) => server.name === 'mt1')?.healthy, 'mt1 is still registered and healthy');

    // A renewal: an mt1 certificate issued after the bound one (a second later: notBefore has whole seconds) takes the name over,
    // and then the older certificate, the one the running mt1 still holds, is refused: the daemon says so and exits 2.
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    ca.issue('mt1', 'master-target', { file: 'mt1-renewed' });
    const renewed = (await attempt('mt1-renewed', 'MASTER_TARGET', 'mt1')) as { serverId?: string };
    t.ok(renewed.serverId, `a newer certificate named mt1 re-registers it (${renewed.serverId})`);
    t.same(await mt.exited, { code: 2, signal: null }, 'the master target with the older certificate is refused when it registers again, and exits 2');
    t.match(mt.stderr.join('\n'), /registration refused by the configuration server: .*that name is bound to another certificate/, mt.stderr.join(' '));
  });
});
