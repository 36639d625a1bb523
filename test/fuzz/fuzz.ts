// npm run fuzz -- --seconds N [--seed S]: starts the real daemons (configuration
// server, process server, master target, an agent serving its disk over NBD),
// replicates one disk so there is real state to protect, then sends random and
// mutated messages to every method of every daemon (enumerated from the
// protos): valid protobuf with hostile values (edge numbers, long and
// traversing strings, huge repeated fields, real names with wrong epochs and
// sequences), mutated encodings, garbage and nothing, plus garbage on the NBD
// socket. It prints its seed, ends with one line of counts by status, and
// exits 1 if a daemon died or stopped serving health, a call got INTERNAL or
// UNKNOWN, or the source or the replica changed with no accepted call that
// could have changed them. A short run is part of npm test (fuzz.test.ts).
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { packageDefinition } from '../../shared/proto';
import { startDaemon, tempDir, type RunningDaemon } from '../helpers/daemons';
import { masterTargetClient, processServerClient, unary, waitForSync } from '../helpers/clients';

const diskBytes = 16 * 1024 * 1024;
const callDeadlineMs = 3_000;
const callsInFlight = 4;

/** A seeded generator (mulberry32): the same seed sends the same calls. */
function random(seed: number) {
  let state = seed >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(items: readonly T[]): T => items[int(items.length)]!;
  const bytes = (length: number) => {
    const out = Buffer.allocUnsafe(length);
    for (let i = 0; i < length; i++) out[i] = int(256);
    return out;
  };
  return { next, int, pick, bytes };
}
type Random = ReturnType<typeof random>;

interface FieldDescriptor {
  name: string;
  jsonName?: string;
  type: string;
  label: string;
  typeName?: string;
}
interface TypeDescriptor {
  field?: FieldDescriptor[];
  value?: { name: string; number: number }[];
}

/** A message or enum of the loaded protos by its full name ('.drplane.v1.Extent'). */
function descriptorOf(typeName: string): TypeDescriptor | undefined {
  const entry = (packageDefinition as Record<string, { type?: TypeDescriptor }>)[typeName.replace(/^\./, '')];
  return entry?.type;
}

const camel = (name: string) => name.replace(/_([a-z0-9])/g, (_m, c: string) => c.toUpperCase());

/** A value for one field: mostly edge values, real names now and then (to reach past the first checks). */
function fieldValue(rng: Random, field: FieldDescriptor, names: string[], depth: number): unknown {
  switch (field.type) {
    case 'TYPE_STRING':
      return rng.pick(['', 'x', '..', '../../../../etc/passwd', '/etc/shadow', '/proc/self/mem', 'a'.repeat(rng.pick([100, 5_000, 70_000])), '\u0000\uffff\ud800', 'vm1@1', `${rng.pick(names)}@${rng.int(5)}`, ...names, ...names]);
    case 'TYPE_BOOL':
      return rng.next() < 0.5;
    case 'TYPE_BYTES':
      return rng.bytes(rng.pick([0, 1, 7, 8, 4096, 65_536, 1 << 20]));
    case 'TYPE_DOUBLE':
    case 'TYPE_FLOAT':
      return rng.pick([0, -1, 1e308, Number.NaN, 0.5]);
    case 'TYPE_ENUM': {
      const values = descriptorOf(field.typeName ?? '')?.value ?? [];
      return values.length > 0 && rng.next() < 0.8 ? rng.pick(values).name : rng.int(1000);
    }
    case 'TYPE_MESSAGE':
      return depth > 3 ? {} : message(rng, descriptorOf(field.typeName ?? '') ?? {}, names, depth + 1);
    default: {
      // Integers of every width: edges, block sizes, epochs and sequences near real ones.
      const signed = /INT32|INT64|SFIXED/.test(field.type) && !/UINT/.test(field.type);
      const wide = /64/.test(field.type);
      const value = rng.pick([0, 1, 2, 3, 4095, 4096, 65_536, 1 << 20, diskBytes, diskBytes - 4096, diskBytes + 4096, 2 ** 31 - 1, 2 ** 32 - 1, ...(wide ? [2 ** 53 - 1, 2 ** 40] : []), ...(signed ? [-1, -(2 ** 31)] : []), rng.int(1000)]);
      return value;
    }
  }
}

/** A message of the type: each field set or left out at random; repeated fields from none to a huge count. */
function message(rng: Random, descriptor: TypeDescriptor, names: string[], depth = 0): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const field of descriptor.field ?? []) {
    if (rng.next() < 0.3) continue;
    const key = camel(field.name);
    if (field.label === 'LABEL_REPEATED') {
      const count = rng.pick([0, 1, 2, 3, depth === 0 ? rng.pick([1_000, 40_000]) : 4]);
      out[key] = Array.from({ length: count }, () => fieldValue(rng, field, names, depth));
    } else out[key] = fieldValue(rng, field, names, depth);
  }
  return out;
}

interface Method {
  daemon: string;
  address: string;
  path: string;
  requestStream: boolean;
  responseStream: boolean;
  encode(rng: Random): Buffer;
}

/** Every method of every service the daemons serve, with a request maker. */
function methods(addresses: Record<string, string>, names: string[]): Method[] {
  const services: Record<string, string> = { 'drplane.v1.Agent': 'agent', 'drplane.v1.ProcessServer': 'process-server', 'drplane.v1.MasterTarget': 'master-target', 'drplane.v1.ConfigurationServer': 'configuration-server' };
  const out: Method[] = [];
  for (const [service, daemon] of Object.entries(services)) {
    const definition = packageDefinition[service] as grpc.ServiceDefinition;
    for (const method of Object.values(definition)) {
      const requestType = (method as unknown as { requestType: { type: TypeDescriptor } }).requestType.type;
      out.push({
        daemon,
        address: addresses[daemon]!,
        path: method.path,
        requestStream: method.requestStream,
        responseStream: method.responseStream,
        encode: (rng) => {
          const mode = rng.next();
          if (mode < 0.1) return Buffer.alloc(0);
          if (mode < 0.2) return rng.bytes(rng.pick([1, 5, 64, 4096]));
          let encoded: Buffer;
          try {
            encoded = method.requestSerialize(message(rng, requestType, names));
          } catch {
            return rng.bytes(32);
          }
          if (mode < 0.35 && encoded.length > 0) {
            // Mutated: a flipped byte, or cut short.
            const copy = Buffer.from(encoded);
            if (rng.next() < 0.5) copy[rng.int(copy.length)] ^= 1 << rng.int(8);
            return rng.next() < 0.5 ? copy : copy.subarray(0, rng.int(copy.length));
          }
          return encoded;
        },
      });
    }
  }
  return out;
}

const identity = (value: Buffer) => value;

/** One call; resolves with its status name and details (streams are read a little, then ended or cancelled). */
function call(clients: Map<string, grpc.Client>, method: Method, rng: Random): Promise<{ status: string; details: string; messages: Buffer[] }> {
  const client = clients.get(method.address)!;
  const deadline = Date.now() + callDeadlineMs;
  const messages = method.requestStream ? Array.from({ length: 1 + rng.int(3) }, () => method.encode(rng)) : [method.encode(rng)];
  return new Promise((resolve) => {
    const done = (error: grpc.ServiceError | null | undefined) => resolve({ status: grpc.status[error ? error.code : grpc.status.OK]!, details: error?.details ?? '', messages });
    if (!method.requestStream && !method.responseStream) {
      client.makeUnaryRequest(method.path, identity, identity, messages[0]!, { deadline }, (error) => done(error));
      return;
    }
    if (method.requestStream && !method.responseStream) {
      const stream = client.makeClientStreamRequest(method.path, identity, identity, { deadline }, (error) => done(error));
      for (const item of messages) stream.write(item);
      stream.end();
      return;
    }
    const stream = method.requestStream ? client.makeBidiStreamRequest(method.path, identity, identity, new grpc.Metadata(), { deadline }) : client.makeServerStreamRequest(method.path, identity, identity, messages[0]!, new grpc.Metadata(), { deadline });
    let settled = false;
    let received = 0;
    stream.on('data', () => {
      // Enough of an answer: cancel (counted as the daemon's answer so far).
      if (++received >= 3 && !settled) stream.cancel();
    });
    stream.on('status', (status: grpc.StatusObject) => {
      if (settled) return;
      settled = true;
      resolve({ status: received > 0 && status.code === grpc.status.CANCELLED ? 'OK' : grpc.status[status.code]!, details: status.details, messages });
    });
    stream.on('error', () => undefined);
    if (method.requestStream) {
      for (const item of messages) (stream as grpc.ClientDuplexStream<Buffer, Buffer>).write(item);
      (stream as grpc.ClientDuplexStream<Buffer, Buffer>).end();
    }
  });
}

/** Garbage on the NBD socket: random bytes, or the start of a real handshake and then garbage. */
function nbdGarbage(socketPath: string, rng: Random): Promise<void> {
  return new Promise((resolve) => {
    const socket = net.createConnection(socketPath);
    const end = () => {
      socket.destroy();
      resolve();
    };
    socket.on('error', end);
    socket.on('connect', () => {
      const prefix = rng.next() < 0.5 ? Buffer.from('0000000049484156454f5054', 'hex') : Buffer.alloc(0);
      socket.write(Buffer.concat([prefix, rng.bytes(rng.pick([1, 16, 200, 5000]))]));
      setTimeout(end, 50);
    });
  });
}

async function healthy(client: grpc.Client): Promise<boolean> {
  return new Promise((resolve) => {
    const request = Buffer.alloc(0); // HealthCheckRequest{service: ""}
    client.makeUnaryRequest('/grpc.health.v1.Health/Check', identity, identity, request, { deadline: Date.now() + 5_000 }, (error, response) => {
      // HealthCheckResponse{status: SERVING (1)} encodes as 08 01.
      resolve(!error && response !== undefined && response.equals(Buffer.from([0x08, 0x01])));
    });
  });
}

const sha256 = (file: string) => (fs.existsSync(file) ? crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex') : 'missing');

/** A call that, answered OK, may change a disk (anything but reads). */
const mayChangeDisks = (method: Method) => !/\/(Get|List|Describe|Watch|Check|Read|Open|Close|Compare|Select|Inspect|Backup)/.test(method.path);

export interface FuzzResult {
  seed: number;
  calls: number;
  byStatus: Record<string, number>;
  problems: string[];
}

export async function fuzz(seconds: number, seed: number, log: (line: string) => void = () => undefined): Promise<FuzzResult> {
  const rng = random(seed);
  const dir = tempDir('drplane-fuzz-');
  const daemons: RunningDaemon[] = [];
  const clients = new Map<string, grpc.Client>();
  const problems: string[] = [];
  const byStatus: Record<string, number> = {};
  let calls = 0;
  try {
    const source = path.join(dir, 'vm1.img');
    fs.writeFileSync(source, crypto.randomBytes(diskBytes));
    const datastore = path.join(dir, 'ds');
    const cs = await startDaemon('configuration-server', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'cs')] });
    daemons.push(cs);
    const link = ['--configuration-server', cs.address, '--passphrase-file', path.join(dir, 'cs', 'passphrase')];
    const nbdSocket = path.join(dir, 'nbd.sock');
    daemons.push(
      ...(await Promise.all([
        startDaemon('process-server', { args: ['--listen', '127.0.0.1:0', '--name', 'ps1', '--data-dir', path.join(dir, 'ps'), ...link] }),
        startDaemon('master-target', { args: ['--listen', '127.0.0.1:0', '--name', 'mt1', '--data-dir', path.join(dir, 'mt'), '--datastore-root', datastore, ...link] }),
        startDaemon('agent', { args: ['--listen', '127.0.0.1:0', '--name', 'vm1', '--data-dir', path.join(dir, 'agent'), '--disk', source, '--nbd-listen', `unix:${nbdSocket}`, ...link] }),
      ])),
    );
    const [, ps, mt, agent] = daemons as [RunningDaemon, RunningDaemon, RunningDaemon, RunningDaemon];
    // Real state to protect: a replica with a point, made by a full sync.
    const replica = path.join(datastore, 'fz0.img');
    const mtClient = masterTargetClient(mt.address);
    const psClient = processServerClient(ps.address);
    await unary(mtClient, mtClient.createReplica, { diskId: 'fz0', path: replica, diskBytes, epoch: 3 });
    await unary(psClient, psClient.startSync, { diskId: 'fz0', syncId: 's1', mode: 'SYNC_MODE_FULL', epoch: 3, agentAddress: agent.address, sourcePath: source, masterTargetAddress: mt.address });
    const synced = await waitForSync(psClient, 'fz0');
    if (synced.state !== 'SYNC_STATE_COMPLETED') throw new Error(`the setup sync ended ${synced.state}: ${synced.error}`);
    mtClient.close();
    psClient.close();
    const before = { source: sha256(source), replica: sha256(replica) };

    const addresses = { 'configuration-server': cs.address, 'process-server': ps.address, 'master-target': mt.address, agent: agent.address };
    for (const address of Object.values(addresses)) clients.set(address, new grpc.Client(address, grpc.credentials.createInsecure(), { 'grpc.max_send_message_length': 64 << 20 }));
    const names = ['fz0', 'vm1', 'ps1', 'mt1', 's1', 'job-1', source, replica, datastore, agent.address, mt.address, ps.address];
    const all = methods(addresses, names);
    const accepted: string[] = [];
    const until = Date.now() + seconds * 1000;
    const worker = async () => {
      while (Date.now() < until && problems.length === 0) {
        const method = rng.pick(all);
        const { status, details, messages } = await call(clients, method, rng);
        calls++;
        byStatus[status] = (byStatus[status] ?? 0) + 1;
        if (status === 'INTERNAL' || status === 'UNKNOWN') {
          // The request, to replay: one file per message (grpcurl cannot send raw bytes; test/fuzz/replay.ts can).
          const saved = messages.map((bytes, index) => {
            const file = path.join(os.tmpdir(), `drplane-fuzz-${seed}-${calls}-${index}.bin`);
            fs.writeFileSync(file, bytes);
            return file;
          });
          problems.push(`${method.path} answered ${status}: ${details} (seed ${seed}, call ${calls}; request in ${saved.join(' ')})`);
        }
        if (status === 'OK' && mayChangeDisks(method)) accepted.push(method.path);
        if (calls % 25 === 0) await nbdGarbage(nbdSocket, rng);
        if (calls % 100 === 0) log(`${calls} calls, ${JSON.stringify(byStatus)}`);
      }
    };
    await Promise.all(Array.from({ length: callsInFlight }, worker));

    for (const daemon of daemons) {
      if (daemon.process.exitCode !== null || daemon.process.signalCode !== null) problems.push(`${daemon.name} died (${daemon.process.exitCode ?? daemon.process.signalCode}): ${daemon.stderr.slice(-3).join(' | ')}`);
      else if (!(await healthy(clients.get(daemon.address) ?? new grpc.Client(daemon.address, grpc.credentials.createInsecure())))) problems.push(`${daemon.name} no longer serves health`);
    }
    const after = { source: sha256(source), replica: sha256(replica) };
    for (const what of ['source', 'replica'] as const) {
      if (after[what] === before[what]) continue;
      if (accepted.length === 0) problems.push(`the ${what} changed, and no call that may change it was accepted`);
      else log(`the ${what} changed; accepted calls that may have: ${[...new Set(accepted)].join(', ')}`);
    }
    return { seed, calls, byStatus, problems };
  } finally {
    for (const client of clients.values()) client.close();
    await Promise.all(daemons.map((daemon) => daemon.stop()));
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (require.main === module) {
  const { values } = parseArgs({ options: { seconds: { type: 'string', default: '60' }, seed: { type: 'string' }, verbose: { type: 'boolean', default: false } } });
  const seconds = Number(values.seconds);
  const seed = values.seed === undefined ? crypto.randomInt(2 ** 31) : Number(values.seed);
  if (!Number.isFinite(seconds) || seconds <= 0 || !Number.isInteger(seed)) {
    process.stderr.write('usage: npm run fuzz -- --seconds N [--seed S] [--verbose]\n');
    process.exit(2);
  }
  process.stdout.write(`fuzz: seed ${seed}, ${seconds} s\n`);
  fuzz(seconds, seed, values.verbose ? (line) => process.stdout.write(`${line}\n`) : undefined).then(
    (result) => {
      const counts = Object.entries(result.byStatus).sort((a, b) => b[1] - a[1]).map(([status, count]) => `${status} ${count}`).join(', ');
      for (const problem of result.problems) process.stdout.write(`problem: ${problem}\n`);
      process.stdout.write(`fuzz: seed ${result.seed}: ${result.calls} calls (${counts}); ${result.problems.length === 0 ? 'every daemon alive and serving, no INTERNAL or UNKNOWN, source and replica unchanged' : `${result.problems.length} problem(s)`}\n`);
      process.exit(result.problems.length === 0 ? 0 : 1);
    },
    (error: unknown) => {
      process.stderr.write(`fuzz: seed ${seed}: could not run: ${(error as Error).stack}\n`);
      process.exit(1);
    },
  );
}
