// Goal: grpcurl, the real client operators query the daemons with, sees the
// .proto files as written. For every daemon: `list` names its service and
// grpc.health.v1.Health; `describe` of its service lists the .proto's methods;
// `describe` of every message of its .proto files (and common.proto) gives the
// .proto's field names (snake_case) and numbers; a request with a snake_case
// field and the same request in camelCase are both understood. Skips, naming
// both places, where grpcurl is missing.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import * as protobuf from 'protobufjs';
import { repoRoot } from '../helpers/daemons';
import { findGrpcurl, grpcurl, grpcurlMissing } from '../helpers/grpcurl';
import { startStack } from '../helpers/stack';
import { createImage } from '../helpers/disks';

const binary = findGrpcurl();
const protoDir = path.join(repoRoot, 'proto');

/** The .proto files as written (field names kept), and the messages each defines. */
function protoMessages(file: string): protobuf.Type[] {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(protoDir, target);
  root.loadSync(`drplane/v1/${file}`, { keepCase: true });
  const types: protobuf.Type[] = [];
  const visit = (namespace: protobuf.NamespaceBase) => {
    for (const nested of namespace.nestedArray) {
      if (nested instanceof protobuf.Type && nested.filename?.endsWith(file)) types.push(nested);
      if (nested instanceof protobuf.Namespace || nested instanceof protobuf.Type) visit(nested);
    }
  };
  visit(root);
  return types;
}

/** Field name -> number from grpcurl's describe of a message ("  string disk_id = 1;", "  repeated .drplane.v1.Extent extents = 4;"). */
function describedFields(text: string): Map<string, number> {
  const fields = new Map<string, number>();
  for (const match of text.matchAll(/^\s+(?:repeated |optional )?(?:map<[^>]+>|[\w.]+) (\w+) = (\d+)/gm)) fields.set(match[1]!, Number(match[2]));
  return fields;
}

t.test('grpcurl sees every daemon as its .proto is written', { skip: binary ? false : grpcurlMissing }, async (t) => {
  const dir = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'drplane-grpcurl-'));
  const disk = path.join(dir, 'vm1-disk0.img');
  createImage(disk, 4 * 1024 * 1024, 1);
  const stack = await startStack(t, { dir, agents: [{ name: 'agent1', disks: [disk] }] });
  const daemons = [
    { name: 'configuration server', address: stack.cs.address, service: 'ConfigurationServer', file: 'configuration_server.proto' },
    { name: 'process server', address: stack.ps.address, service: 'ProcessServer', file: 'process_server.proto' },
    { name: 'master target', address: stack.mt.address, service: 'MasterTarget', file: 'master_target.proto' },
    { name: 'agent', address: stack.agents.get('agent1')!.address, service: 'Agent', file: 'agent.proto' },
  ];
  const run = (...args: string[]) => grpcurl(binary!, ['-plaintext', ...args]);
  for (const daemon of daemons) {
    const listed = run(daemon.address, 'list');
    t.equal(listed.status, 0, `${daemon.name}: grpcurl list exits 0 ${listed.stderr}`);
    const services = listed.stdout.trim().split('\n');
    t.ok(services.includes(`drplane.v1.${daemon.service}`) && services.includes('grpc.health.v1.Health'), `${daemon.name}: list names drplane.v1.${daemon.service} and grpc.health.v1.Health (${services.join(', ')})`);

    const root = new protobuf.Root();
    root.resolvePath = (_origin, target) => path.join(protoDir, target);
    root.loadSync(`drplane/v1/${daemon.file}`, { keepCase: true });
    const service = root.lookupService(`drplane.v1.${daemon.service}`);
    const described = run(daemon.address, 'describe', `drplane.v1.${daemon.service}`);
    t.equal(described.status, 0, `${daemon.name}: describe of its service exits 0 ${described.stderr}`);
    const methods = [...described.stdout.matchAll(/rpc (\w+) \(/g)].map((match) => match[1]);
    t.same(methods.sort(), Object.keys(service.methods).sort(), `${daemon.name}: describe lists the .proto's ${methods.length} methods`);

    let mismatches = 0;
    const messages = [...protoMessages(daemon.file), ...protoMessages('common.proto')];
    for (const type of messages) {
      const answer = run(daemon.address, 'describe', type.fullName.slice(1));
      const fields = describedFields(answer.stdout);
      const expected = new Map(type.fieldsArray.map((field) => [field.name, field.id]));
      if (answer.status !== 0 || fields.size !== expected.size || [...expected].some(([name, id]) => fields.get(name) !== id)) {
        mismatches++;
        t.fail(`${daemon.name}: describe ${type.fullName} is not the .proto's ${JSON.stringify([...expected])}: ${answer.stdout}${answer.stderr}`);
      }
    }
    t.equal(mismatches, 0, `${daemon.name}: describe of each of its ${messages.length} messages has the .proto's field names and numbers`);
  }

  // A request field with an underscore, in both spellings: the .proto's name and its JSON name.
  for (const body of ['{"disk_id":"vm1-disk0"}', '{"diskId":"vm1-disk0"}']) {
    const answer = run('-d', body, stack.mt.address, 'drplane.v1.MasterTarget/GetReplica');
    t.match(answer.stderr, /NotFound|not found|does not exist/i, `${body} is understood (the master target answers that the replica is unknown, not that the field is)`);
    t.notMatch(answer.stderr, /no known field/, `${body}: no "no known field" error`);
  }
  for (const daemon of daemons) {
    const health = run('-d', `{"service":"drplane.v1.${daemon.service}"}`, daemon.address, 'grpc.health.v1.Health/Check');
    t.match(health.stdout, /"status": "SERVING"/, `health of the ${daemon.name} through grpcurl`);
  }
});
