// The roles tables and their parsing, without daemons: each daemon's table
// names exactly the methods of its service (a start-up assertion, checked here
// first); a certificate's role comes from exactly one SAN URI
// drplane://role/ROLE; `self` matches only this daemon's own name and role;
// and the rules of issue 13 hold in the tables themselves.
import t from 'tap';
import { v1 } from '../../shared/proto';
import { grantsByPath, refusal, roleOfSubjectAltName, roles } from '../../shared/roles';
import { configurationServerRoles } from '../../daemons/configuration-server/roles';
import { processServerRoles } from '../../daemons/process-server/roles';
import { masterTargetRoles } from '../../daemons/master-target/roles';
import { agentRoles } from '../../daemons/agent/roles';
import { viewerMethods } from '../../shared/grpc';

const services = [
  { name: 'drplane.v1.ConfigurationServer', definition: v1.ConfigurationServer.service, roles: configurationServerRoles },
  { name: 'drplane.v1.ProcessServer', definition: v1.ProcessServer.service, roles: processServerRoles },
  { name: 'drplane.v1.MasterTarget', definition: v1.MasterTarget.service, roles: masterTargetRoles },
  { name: 'drplane.v1.Agent', definition: v1.Agent.service, roles: agentRoles },
];

t.test('each table names exactly the methods of its service', async (t) => {
  const grants = grantsByPath(services);
  t.equal(grants.get('/drplane.v1.MasterTarget/SetEpoch')?.join(), 'configuration-server');
  t.same(grants.get('/grpc.health.v1.Health/Check'), roles, 'health is open to every role');
  t.throws(() => grantsByPath([{ ...services[2]!, roles: { ...masterTargetRoles, Nonexistent: ['operator'] } }]), /must name each of its methods once/, 'a row for a method that does not exist');
  const { SetEpoch: _dropped, ...missing } = masterTargetRoles;
  t.throws(() => grantsByPath([{ ...services[2]!, roles: missing }]), /must name each of its methods once/, 'a method without a row');
});

t.test('the rules of issue 13 hold in the tables', async (t) => {
  for (const method of ['RetireReplica', 'SetEpoch', 'CreateReplica', 'StartMachine', 'DeleteDisk', 'ConfigureReplica']) t.same(masterTargetRoles[method], ['configuration-server'], `only the configuration server calls MasterTarget/${method}`);
  for (const method of ['ShutdownSource', 'ReleaseSource', 'PrepareBarrier', 'ReleaseBarrier', 'TakeAppConsistentPoint']) t.same(agentRoles[method], ['configuration-server'], `only the configuration server calls Agent/${method}`);
  t.same(masterTargetRoles.ApplyBatches, ['process-server'], 'only process servers stream into ApplyBatches');
  for (const method of ['ReadDisk', 'StreamChanges']) t.same(agentRoles[method], ['process-server'], `only process servers call Agent/${method}`);
  for (const [service, table] of [['MasterTarget', masterTargetRoles], ['Agent', agentRoles], ['ProcessServer', processServerRoles]] as const) {
    t.same(Object.entries(table).filter(([, grantees]) => grantees.includes('agent')), [], `no agent role on ${service}`);
  }
  for (const { name, roles: table } of services) {
    const viewer = viewerMethods({ roles: table });
    t.ok(viewer.includes('GetStatus'), `${name}: the viewer reads the status`);
    t.same(viewer.filter((method) => !/^(Get|List|Watch|Describe)/.test(method)), [], `${name}: the viewer has reads only (${viewer.join(', ')})`);
    t.same(Object.entries(table).filter(([, grantees]) => grantees.includes('viewer') && !grantees.includes('operator')), [], `${name}: an operator may read whatever a viewer may`);
  }
  const operatorChanges = Object.entries(configurationServerRoles).filter(([, grantees]) => grantees.includes('operator') && !grantees.includes('viewer'));
  t.ok(operatorChanges.length > 20, `the operator drives the configuration server's API (${operatorChanges.length} methods beyond the reads)`);
});

t.test('a certificate has exactly one known role', async (t) => {
  t.same(roleOfSubjectAltName('URI:drplane://role/agent, IP Address:10.0.0.1'), { role: 'agent' });
  t.same(roleOfSubjectAltName('IP Address:10.0.0.1, URI:drplane://role/master-target'), { role: 'master-target' });
  t.match(roleOfSubjectAltName('IP Address:10.0.0.1'), { problem: /carries no drplane role/ });
  t.match(roleOfSubjectAltName(undefined), { problem: /carries no drplane role/ });
  t.match(roleOfSubjectAltName('URI:drplane://role/agent, URI:drplane://role/operator'), { problem: /carries 2 drplane roles/ });
  t.match(roleOfSubjectAltName('URI:drplane://role/admin'), { problem: /its role "admin" is none of/ });
  t.match(roleOfSubjectAltName('URI:https://example.net/drplane://role/agent'), { problem: /carries no drplane role/ }, 'only a URI that is the role counts');
});

t.test('self is this daemon\'s own name and role', async (t) => {
  const self = { commonName: 'agent-vm1', role: 'agent' as const };
  const caller = (commonName: string, role: (typeof roles)[number]) => ({ commonName, role, certificateSha256: '', validFromMs: 0 });
  t.equal(refusal(caller('agent-vm1', 'agent'), ['self'], 'drplane.v1.Agent/Write', self), undefined, 'the agent itself writes');
  t.match(refusal(caller('agent-vm2', 'agent'), ['self'], 'drplane.v1.Agent/Write', self), { role: 'agent', details: /^the role agent \(certificate CN=agent-vm2\) may not call drplane\.v1\.Agent\/Write: it is for this agent itself \(agent-vm1\)/ }, 'another agent does not');
  t.match(refusal(caller('agent-vm1', 'operator'), ['self'], 'drplane.v1.Agent/Write', self), { role: 'operator' }, 'nor a certificate of another role with the same name');
  t.match(refusal({ commonName: 'x', problem: 'it carries no drplane role' }, roles, 'grpc.health.v1.Health/Check', self), { role: 'none', details: /certificate CN=x may not call grpc\.health\.v1\.Health\/Check: it carries no drplane role/ });
});
