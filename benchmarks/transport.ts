// npm run bench:transport: what the fixed transport costs with no work at all.
//
// A full sync carries each byte over two gRPC hops (agent -> process server ->
// master target). This command moves the same bytes over the same hops with
// nothing else done: a source process serves 1 MiB messages from one reused
// buffer (as the agent's ReadDisk does), a relay reads them as a client and
// streams them on to a sink (as the process server does to ApplyBatches), and
// the sink counts them. Each runs as its own process with the daemons' Node
// flags and the daemons' gRPC servers, clients and HTTP/2 windows
// (shared/grpc.ts); messages are raw bytes, so protobufjs is not measured.
// rsync --whole-file moves a file of the same size in the same run.
//
// The time and CPU-seconds per GiB this reports are a floor for the data path
// on this machine: no drplane sync over these two hops can be faster.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import * as grpc from '@grpc/grpc-js';
import { channelOptions, startGrpcServer } from '../shared/grpc';
import { createLogger } from '../shared/log';
import { daemonNodeFlags } from '../shared/process';
import { writeRandomImage } from './images';
import { bytesPerGibibyte, formatBytes, loadAverage, median, progress } from './measure';
import { positiveInteger, readOptions } from './options';
import { RsyncDaemon, rsyncFlags, rsyncVersion } from './peers';
import { cpuTimes } from './process-usage';

const messageBytes = 1024 * 1024;

const raw = { serialize: (value: Buffer) => value, deserialize: (bytes: Buffer) => bytes };
const service: grpc.ServiceDefinition = {
  Read: { path: '/drplane.bench.Transport/Read', requestStream: false, responseStream: true, requestSerialize: raw.serialize, requestDeserialize: raw.deserialize, responseSerialize: raw.serialize, responseDeserialize: raw.deserialize },
  Apply: { path: '/drplane.bench.Transport/Apply', requestStream: true, responseStream: false, requestSerialize: raw.serialize, requestDeserialize: raw.deserialize, responseSerialize: raw.serialize, responseDeserialize: raw.deserialize },
};
const Client = grpc.makeGenericClientConstructor(service, 'Transport');
type TransportClient = grpc.Client & {
  Read(request: Buffer): grpc.ClientReadableStream<Buffer>;
  Apply(callback: (error: grpc.ServiceError | null, reply?: Buffer) => void): grpc.ClientWritableStream<Buffer>;
};

function countOf(request: Buffer): number {
  return request.length >= 8 ? Number(request.readBigUInt64LE(0)) : 0;
}

/** Serves Read: `count` messages of 1 MiB from one reused buffer, honouring back-pressure. */
async function runSource(listen: string): Promise<string> {
  const payload = Buffer.alloc(messageBytes, 0xa5);
  const started = await startGrpcServer(listen, [{
    name: 'drplane.bench.Transport',
    definition: service,
    roles: { Read: ['process-server'], Apply: ['master-target'] },
    implementation: {
      Read: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
        let left = countOf(call.request);
        const pump = () => {
          while (left > 0) {
            left--;
            if (!call.write(payload)) return void call.once('drain', pump);
          }
          call.end();
        };
        pump();
      },
      Apply: (_call: unknown, callback: grpc.sendUnaryData<Buffer>) => callback({ code: grpc.status.UNIMPLEMENTED }),
    },
  }], createLogger('bench-source', 'warn'));
  return listen.startsWith('unix:') ? listen : started.address;
}

/** Serves Apply: counts the bytes and answers with the count. */
async function runSink(listen: string): Promise<string> {
  const started = await startGrpcServer(listen, [{
    name: 'drplane.bench.Transport',
    definition: service,
    roles: { Read: ['process-server'], Apply: ['process-server'] },
    implementation: {
      Read: (call: grpc.ServerWritableStream<Buffer, Buffer>) => call.destroy(new Error('not here')),
      Apply: (call: grpc.ServerReadableStream<Buffer, Buffer>, callback: grpc.sendUnaryData<Buffer>) => {
        let bytes = 0;
        call.on('data', (message: Buffer) => (bytes += message.length));
        call.on('end', () => {
          const reply = Buffer.alloc(8);
          reply.writeBigUInt64LE(BigInt(bytes));
          callback(null, reply);
        });
      },
    },
  }], createLogger('bench-sink', 'warn'));
  return listen.startsWith('unix:') ? listen : started.address;
}

/** Reads `count` messages from the source and streams each on to the sink (or, with no sink, drops them). */
function relay(sourceAddress: string, sinkAddress: string | undefined, count: number): Promise<number> {
  const source = new Client(sourceAddress, grpc.credentials.createInsecure(), channelOptions) as unknown as TransportClient;
  const request = Buffer.alloc(8);
  request.writeBigUInt64LE(BigInt(count));
  const reading = source.Read(request);
  if (!sinkAddress) {
    return new Promise((resolve, reject) => {
      let bytes = 0;
      reading.on('data', (message: Buffer) => (bytes += message.length));
      reading.on('end', () => resolve(bytes));
      reading.on('error', reject);
    });
  }
  const sink = new Client(sinkAddress, grpc.credentials.createInsecure(), channelOptions) as unknown as TransportClient;
  return new Promise((resolve, reject) => {
    const writing = sink.Apply((error, reply) => (error ? reject(error) : resolve(Number(reply!.readBigUInt64LE(0)))));
    reading.on('data', (message: Buffer) => {
      if (!writing.write(message)) {
        reading.pause();
        writing.once('drain', () => reading.resume());
      }
    });
    reading.on('end', () => writing.end());
    reading.on('error', reject);
  });
}

// ---- the roles, when this file runs as a child ----

async function child(role: string, args: string[]): Promise<void> {
  if (role === 'source' || role === 'sink') {
    const listen = args[0] ?? '127.0.0.1:0';
    const address = role === 'source' ? await runSource(listen) : await runSink(listen);
    process.stdout.write(`listening ${address}\n`);
    return; // serves until killed
  }
  const [sourceAddress, sinkAddress, count] = args;
  const bytes = await relay(sourceAddress!, sinkAddress === '-' ? undefined : sinkAddress, Number(count));
  process.stdout.write(`moved ${bytes}\n`);
  process.exit(0);
}

// ---- the benchmark ----

interface Started {
  child: ChildProcess;
  line: string;
}

function startChild(role: string, args: string[] = []): Promise<Started> {
  const child = spawn(process.execPath, [...daemonNodeFlags, __filename, '--role', role, ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  process.once('exit', () => child.kill('SIGKILL'));
  return new Promise((resolve, reject) => {
    const lines = readline.createInterface({ input: child.stdout! });
    lines.once('line', (line) => resolve({ child, line }));
    child.once('exit', (code) => reject(new Error(`the ${role} exited (${code}) before it said anything`)));
  });
}

interface TransportSample {
  seconds: number;
  cpuSeconds: Record<string, number>;
}

/** `socketDir`: listen on Unix sockets there instead of TCP on 127.0.0.1. */
async function measureHops(hops: 1 | 2, bytes: number, socketDir?: string): Promise<TransportSample> {
  const listen = (name: string) => {
    if (!socketDir) return [];
    const socket = path.join(socketDir, `${name}.sock`);
    fs.rmSync(socket, { force: true }); // left by the previous run's process, killed
    return [`unix:${socket}`];
  };
  const source = await startChild('source', listen('source'));
  const sink = hops === 2 ? await startChild('sink', listen('sink')) : undefined;
  const address = (started: Started) => started.line.split(' ')[1]!;
  const count = Math.ceil(bytes / messageBytes);
  const sourceCpu = cpuTimes(source.child.pid!).ownSeconds;
  const sinkCpu = sink ? cpuTimes(sink.child.pid!).ownSeconds : 0;
  const startedAt = process.hrtime.bigint();
  const relayChild = spawn(process.execPath, [...daemonNodeFlags, __filename, '--role', 'relay', address(source), sink ? address(sink) : '-', String(count)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let relayCpu = 0;
  const output = await new Promise<string>((resolve, reject) => {
    let text = '';
    relayChild.stdout!.on('data', (chunk: Buffer) => (text += chunk.toString()));
    // Read the relay's CPU just before it is reaped: poll while it runs.
    const poll = setInterval(() => {
      try {
        relayCpu = cpuTimes(relayChild.pid!).ownSeconds;
      } catch {
        // gone
      }
    }, 20);
    relayChild.once('exit', (code) => {
      clearInterval(poll);
      if (code === 0) resolve(text);
      else reject(new Error(`the relay exited with ${code}`));
    });
  });
  const seconds = Number(process.hrtime.bigint() - startedAt) / 1e9;
  const moved = Number(/moved (\d+)/.exec(output)?.[1]);
  if (moved !== count * messageBytes) throw new Error(`the relay moved ${moved} bytes, not ${count * messageBytes}`);
  const cpuSeconds: Record<string, number> = { source: cpuTimes(source.child.pid!).ownSeconds - sourceCpu, relay: relayCpu };
  if (sink) cpuSeconds.sink = cpuTimes(sink.child.pid!).ownSeconds - sinkCpu;
  source.child.kill('SIGKILL');
  sink?.child.kill('SIGKILL');
  return { seconds, cpuSeconds };
}

const usage = `usage: npm run bench:transport -- [--size-mib N] [--repeat N] [--work-dir DIR]
Moves N MiB over one and two bare gRPC hops (the daemons' transport, no work; TCP on 127.0.0.1, and Unix sockets)\nand with rsync --whole-file, in the same run.
`;

async function main(): Promise<void> {
  if (process.argv[2] === '--role') return child(process.argv[3]!, process.argv.slice(4));
  const { values, workParent, seed } = readOptions(process.argv.slice(2), { 'size-mib': { type: 'string', default: '2048' }, repeat: { type: 'string', default: '3' } }, usage);
  const bytes = positiveInteger('size-mib', values['size-mib'] as string) * 1024 * 1024;
  const repeat = positiveInteger('repeat', values.repeat as string);
  const workDir = fs.mkdtempSync(path.join(workParent, 'drplane-transport-'));
  const results: { case: string; seconds: number[]; cpuSeconds: Record<string, number>[] }[] = [];
  try {
    const hasRsync = rsyncVersion() !== undefined;
    const image = path.join(workDir, 'source.img');
    if (hasRsync) {
      progress(`writing a ${formatBytes(bytes)} random image`);
      writeRandomImage(image, bytes, seed);
    }
    const rsync = hasRsync ? await RsyncDaemon.start(path.join(workDir, 'rsyncd'), path.join(workDir, 'rsync-target')) : undefined;
    const cases: [string, () => Promise<TransportSample>][] = [
      ['grpc, 1 hop', () => measureHops(1, bytes)],
      ['grpc, 2 hops', () => measureHops(2, bytes)],
      ['grpc, 2 hops, unix', () => measureHops(2, bytes, workDir)],
    ];
    if (rsync) {
      cases.push(['rsync --whole-file', async () => {
        const sample = await rsync.transfer(image, 'target.img', [...rsyncFlags.wholeFile]);
        return { seconds: sample.seconds, cpuSeconds: { rsync: sample.cpuSeconds ?? 0 } };
      }]);
    }
    for (const [name] of cases) results.push({ case: name, seconds: [], cpuSeconds: [] });
    // Alternate the cases, so a noisy minute hits each of them.
    for (let round = 0; round < repeat; round++) {
      for (const [index, [name, run]] of cases.entries()) {
        progress(`${name}, run ${round + 1} of ${repeat} (load ${loadAverage().toFixed(1)})`);
        const sample = await run();
        results[index]!.seconds.push(sample.seconds);
        results[index]!.cpuSeconds.push(sample.cpuSeconds);
      }
    }
    await rsync?.stop();
    const gib = bytes / bytesPerGibibyte;
    const rsyncSeconds = results.find((row) => row.case.startsWith('rsync')) ? median(results.find((row) => row.case.startsWith('rsync'))!.seconds) : undefined;
    const lines = ['case                  median s  GB/s   CPU-s per GiB (by process)          vs rsync'];
    for (const row of results) {
      const seconds = median(row.seconds);
      const names = Object.keys(row.cpuSeconds[0]!);
      const perProcess = names.map((name) => `${name} ${(median(row.cpuSeconds.map((sample) => sample[name]!)) / gib).toFixed(2)}`);
      const total = median(row.cpuSeconds.map((sample) => Object.values(sample).reduce((a, b) => a + b, 0))) / gib;
      const ratio = rsyncSeconds ? `${(rsyncSeconds / seconds).toFixed(2)}x` : '-';
      lines.push(`${row.case.padEnd(22)}${seconds.toFixed(2).padStart(8)}  ${(bytes / seconds / 1e9).toFixed(2).padStart(5)}  ${total.toFixed(2)} (${perProcess.join(', ')})`.padEnd(74) + ratio);
    }
    process.stdout.write(`${lines.join('\n')}\n`);
    const resultsDir = path.join(__dirname, '..', '..', 'benchmarks', 'results');
    fs.mkdirSync(resultsDir, { recursive: true });
    const file = path.join(resultsDir, `transport-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
    fs.writeFileSync(file, JSON.stringify({ kind: 'transport', bytes, messageBytes, repeat, results }, null, 2));
    progress(`results in ${file}`);
  } finally {
    fs.rmSync(workDir, { recursive: true, force: true });
  }
}

if (require.main === module) {
  main().catch((error) => {
    process.stderr.write(`bench: ${(error as Error).stack ?? error}\n`);
    process.exit(1);
  });
}
