// Goal: a request that does not decode is INVALID_ARGUMENT naming the method
// and the message type (grpc-js alone answers INTERNAL, which says the daemon
// broke), on every daemon's services, and the daemon keeps serving. Found by
// the fuzzer (npm run fuzz, seed 1).
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { startMasterTarget, unary } from '../helpers/clients';
import { startDaemon, tempDir } from '../helpers/daemons';
import fs from 'node:fs';
import path from 'node:path';

const identity = (bytes: Buffer) => bytes;

function rawCall(address: string, method: string, bytes: Buffer): Promise<grpc.ServiceError | null> {
  const client = new grpc.Client(address, grpc.credentials.createInsecure());
  return new Promise((resolve) => {
    client.makeUnaryRequest(method, identity, identity, bytes, { deadline: Date.now() + 10_000 }, (error) => {
      client.close();
      resolve(error);
    });
  });
}

t.test('an undecodable request is INVALID_ARGUMENT and changes nothing', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { mt, client, datastore } = await startMasterTarget(t, dir);
  // A tag of field 1 with wire type 7, which protobuf does not have: it cannot decode.
  const truncated = Buffer.from([0x0f]);
  const error = await rawCall(mt.address, '/drplane.v1.MasterTarget/CreateReplica', truncated);
  t.equal(error?.code, grpc.status.INVALID_ARGUMENT, 'INVALID_ARGUMENT, not INTERNAL');
  t.match(error?.details, /drplane\.v1\.MasterTarget\/CreateReplica: the request does not decode as drplane\.v1\.CreateReplicaRequest .*nothing was done/);
  t.same(error?.metadata.get('drplane-error-code'), ['invalid-argument'], "drplane's error code in the metadata, as for every other refusal");
  t.same((await unary(client, client.listReplicas, {})).replicas, [], 'no replica was made');
  t.equal((await rawCall(mt.address, '/drplane.v1.MasterTarget/CreateReplica', Buffer.from([0xff, 0xff, 0xff])))?.code, grpc.status.INVALID_ARGUMENT, 'garbage too');

  // A stream: a garbage frame after nothing else ends ApplyBatches with INVALID_ARGUMENT; the replica is untouched.
  await unary(client, client.createReplica, { diskId: 'd', path: path.join(datastore, 'd.img'), diskBytes: 1 << 20, epoch: 1 });
  const stream = await new Promise<grpc.StatusObject>((resolve) => {
    const raw = new grpc.Client(mt.address, grpc.credentials.createInsecure());
    const call = raw.makeBidiStreamRequest('/drplane.v1.MasterTarget/ApplyBatches', identity, identity, new grpc.Metadata(), { deadline: Date.now() + 10_000 });
    call.on('data', () => undefined);
    call.on('error', () => undefined);
    call.on('status', (status: grpc.StatusObject) => (raw.close(), resolve(status)));
    call.write(Buffer.from([0x0f]));
    call.end();
  });
  t.equal(stream.code, grpc.status.INVALID_ARGUMENT, 'a garbage frame ends the batch stream with INVALID_ARGUMENT');
  t.match(stream.details, /MasterTarget\/ApplyBatches: the request does not decode as drplane\.v1\.BatchFrame/);
  t.equal(Number((await unary(client, client.getReplica, { diskId: 'd' })).appliedSequence), 0, 'nothing applied');
});

t.test('a configuration server asked for a machine by a name longer than any key finds none (was INTERNAL)', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const cs = await startDaemon('configuration-server', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'cs')] });
  t.teardown(() => cs.stop());
  const { packageDefinition } = await import('../../shared/proto');
  const service = packageDefinition['drplane.v1.ConfigurationServer'] as grpc.ServiceDefinition;
  for (const name of ['x'.repeat(5_000), '\u00e9'.repeat(3_000)]) {
    const error = await rawCall(cs.address, '/drplane.v1.ConfigurationServer/GetMachine', service.GetMachine!.requestSerialize({ machine: name }));
    t.equal(error?.code, grpc.status.NOT_FOUND, `a ${Buffer.byteLength(name)}-byte name: NOT_FOUND`);
  }
});
