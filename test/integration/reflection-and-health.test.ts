// Goal: every daemon answers grpcurl's questions without .proto files: server
// reflection lists its services and describes them, and grpc.health.v1 says
// SERVING, over reflection v1 and v1alpha. (grpcurl itself is not packaged for this machine; this test speaks
// the same reflection protocol grpcurl uses.)
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { startDaemon, tempDir, type DaemonName } from '../helpers/daemons';

const reflectionProto = path.join(path.dirname(require.resolve('@grpc/reflection')), '..', 'proto');
const definition = protoLoader.loadSync(['grpc/reflection/v1/reflection.proto', 'grpc/reflection/v1alpha/reflection.proto', path.basename(healthProtoPath)], {
  includeDirs: [reflectionProto, path.dirname(healthProtoPath)],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
});
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const loaded = grpc.loadPackageDefinition(definition) as any;

interface ReflectionAnswer {
  list_services_response?: { service: { name: string }[] };
  file_descriptor_response?: { file_descriptor_proto: Buffer[] };
  error_response?: { error_message: string };
}

/** grpcurl asks v1 first; older grpcurl releases ask only v1alpha. */
function ask(address: string, request: Record<string, unknown>, version: 'v1' | 'v1alpha' = 'v1'): Promise<ReflectionAnswer> {
  const client = new loaded.grpc.reflection[version].ServerReflection(address, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) => {
    const call = client.ServerReflectionInfo();
    call.on('data', (answer: ReflectionAnswer) => {
      resolve(answer);
      call.end();
      client.close();
    });
    call.on('error', reject);
    call.write(request);
  });
}

function health(address: string, service: string): Promise<string> {
  const client = new loaded.grpc.health.v1.Health(address, grpc.credentials.createInsecure());
  return new Promise((resolve, reject) =>
    client.Check({ service }, (error: grpc.ServiceError | null, answer: { status: string }) => {
      client.close();
      if (error) reject(error);
      else resolve(answer.status);
    }),
  );
}

const daemons: { name: DaemonName; service: string; args: (dir: string) => string[] }[] = [
  { name: 'master-target', service: 'drplane.v1.MasterTarget', args: (dir) => ['--data-dir', path.join(dir, 'mt'), '--datastore-root', path.join(dir, 'ds')] },
  { name: 'process-server', service: 'drplane.v1.ProcessServer', args: (dir) => ['--data-dir', path.join(dir, 'ps')] },
  {
    name: 'agent',
    service: 'drplane.v1.Agent',
    args: (dir) => {
      fs.writeFileSync(path.join(dir, 'disk.img'), Buffer.alloc(65536));
      return ['--data-dir', path.join(dir, 'agent'), '--disk', path.join(dir, 'disk.img')];
    },
  },
  { name: 'configuration-server', service: 'drplane.v1.ConfigurationServer', args: (dir) => ['--data-dir', path.join(dir, 'cs')] },
];

for (const daemon of daemons) {
  t.test(`${daemon.name} serves reflection and health`, async (t) => {
    const dir = tempDir();
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const running = await startDaemon(daemon.name, { args: ['--listen', '127.0.0.1:0', ...daemon.args(dir)] });
    t.teardown(() => running.stop());
    const listed = await ask(running.address, { list_services: '' });
    const names = listed.list_services_response?.service.map((s) => s.name) ?? [];
    t.ok(names.includes(daemon.service), `lists ${daemon.service}`);
    t.ok(names.includes('grpc.health.v1.Health'), 'lists grpc.health.v1.Health');
    const alpha = await ask(running.address, { list_services: '' }, 'v1alpha');
    t.same(alpha.list_services_response?.service.map((s) => s.name).sort(), [...names].sort(), 'reflection v1alpha lists the same services (older grpcurl)');
    const described = await ask(running.address, { file_containing_symbol: daemon.service });
    t.ok((described.file_descriptor_response?.file_descriptor_proto.length ?? 0) > 0, `describes ${daemon.service} (grpcurl describe)`);
    t.equal(await health(running.address, ''), 'SERVING', 'the server is SERVING');
    t.equal(await health(running.address, daemon.service), 'SERVING', `${daemon.service} is SERVING`);
    const stopped = await running.stop();
    t.equal(stopped.code, 0, 'SIGTERM stops it cleanly');
  });
}
