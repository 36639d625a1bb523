// FUA writes through the agent's NBD export: a raw NBD client sends 4 KiB
// writes with NBD_CMD_FLAG_FUA to random distinct-or-not blocks, keeping a
// fixed number in flight, to the agent alone (write-through capture on, no
// process server: the records are held, as the agent holds them until a
// process server takes them). Each FUA write is answered only after an
// fdatasync of the source, so this measures how the agent's writes of one disk
// overlap their fdatasyncs (write-queue.ts), which `npm run bench:nbd` (fio's
// nbd engine, no FUA) does not. Reports IOPS, latency p50/p99 and the agent's
// CPU seconds, per queue depth. docs/nbd.md has the figures.
import fs from 'node:fs';
import path from 'node:path';
import { unary } from '../shared/grpc';
import { agentClient } from '../test/helpers/clients';
import { startDaemon } from '../test/helpers/daemons';
import { seededRandom } from '../test/helpers/disks';
import { CMD, RawClient } from '../test/helpers/nbd-raw-client';
import { fail, positiveInteger, readOptions } from './options';
import { cpuTimes, roundCpu } from './process-usage';
import { machineDescription, writeResultFile } from './report';
import { percentile } from './workload';

const repoRoot = path.resolve(__dirname, '..', '..');
const resultsDir = path.join(repoRoot, 'benchmarks', 'results');
const blockBytes = 4096;
const fuaFlag = 1;

const usage = `Usage: npm run bench:nbd-fua -- [options]
  --queue-depths LIST   requests in flight (default 1,32)
  --writes N            FUA writes per queue depth (default 4000)
  --size-mib N          size of the disk, sparse (default 256)
  --work-dir DIR        where the disk goes (default: the system temp dir)
  --seed N              seed of the offsets (default 1)
`;

interface Options {
  queueDepths: number[];
  writes: number;
  diskBytes: number;
  workParent: string;
  seed: number;
}

function parseOptions(argv: string[]): Options {
  const { values, workParent, seed } = readOptions(
    argv,
    {
      'queue-depths': { type: 'string', default: '1,32' },
      writes: { type: 'string', default: '4000' },
      'size-mib': { type: 'string', default: '256' },
    },
    usage,
  );
  return {
    queueDepths: values['queue-depths'].split(',').map((text) => positiveInteger('queue-depths', text.trim())),
    writes: positiveInteger('writes', values.writes),
    diskBytes: positiveInteger('size-mib', values['size-mib']) * 1024 * 1024,
    workParent,
    seed,
  };
}

interface Row {
  queueDepth: number;
  writes: number;
  seconds: number;
  iops: number;
  latencyP50Us: number;
  latencyP99Us: number;
  agentCpuSeconds: number;
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  const startedAt = new Date();
  const dir = fs.mkdtempSync(path.join(options.workParent, 'drplane-bench-nbd-fua-'));
  const disk = path.join(dir, 'disk.img');
  fs.writeFileSync(disk, '');
  fs.truncateSync(disk, options.diskBytes);
  const socket = path.join(dir, 'nbd.sock');
  const agent = await startDaemon('agent', { args: ['--name', 'bench-agent', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'agent'), '--disk', disk, '--nbd-listen', `unix:${socket}`] });
  const client = agentClient(agent.address);
  const rows: Row[] = [];
  try {
    await unary(client, client.startCapture, { path: disk, mode: 'CAPTURE_WRITE_THROUGH' });
    const random = seededRandom(options.seed);
    const payload = Buffer.alloc(blockBytes, 0x5a);
    const blocks = options.diskBytes / blockBytes;
    for (const queueDepth of options.queueDepths) {
      const raw = await RawClient.connect(socket);
      await raw.hello();
      if ((await raw.go('')).at(-1)?.type !== 1) throw new Error('NBD_OPT_GO of the default export failed');
      const sentAtNs = new Map<bigint, bigint>();
      const latenciesUs: number[] = [];
      let inFlight = 0;
      const cpuBefore = cpuTimes(agent.process.pid!).ownSeconds;
      const startedNs = process.hrtime.bigint();
      const replies = (async () => {
        for (let answered = 0; answered < options.writes; answered++) {
          const reply = await raw.reply();
          if (reply.error !== 0) throw new Error(`a FUA write failed with NBD error ${reply.error}`);
          latenciesUs.push(Number(process.hrtime.bigint() - sentAtNs.get(reply.handle)!) / 1000);
          sentAtNs.delete(reply.handle);
          inFlight--;
        }
      })();
      for (let sent = 0; sent < options.writes; sent++) {
        while (inFlight >= queueDepth) await new Promise((resolve) => setImmediate(resolve));
        const handle = raw.request(CMD.write, Math.floor(random() * blocks) * blockBytes, blockBytes, { flags: fuaFlag, payload });
        sentAtNs.set(handle, process.hrtime.bigint());
        inFlight++;
      }
      await replies;
      const seconds = Number(process.hrtime.bigint() - startedNs) / 1e9;
      raw.destroy();
      latenciesUs.sort((a, b) => a - b);
      rows.push({
        queueDepth,
        writes: options.writes,
        seconds: Number(seconds.toFixed(3)),
        iops: Math.round(options.writes / seconds),
        latencyP50Us: Math.round(percentile(latenciesUs, 0.5)),
        latencyP99Us: Math.round(percentile(latenciesUs, 0.99)),
        agentCpuSeconds: roundCpu(cpuTimes(agent.process.pid!).ownSeconds - cpuBefore),
      });
    }
  } finally {
    client.close();
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  process.stdout.write('queue depth  writes  IOPS    lat p50   p99       agent cpu s\n');
  for (const row of rows) {
    process.stdout.write(`${String(row.queueDepth).padEnd(11)}  ${String(row.writes).padEnd(6)}  ${String(row.iops).padEnd(6)}  ${`${row.latencyP50Us} us`.padEnd(8)}  ${`${row.latencyP99Us} us`.padEnd(8)}  ${row.agentCpuSeconds}\n`);
  }
  const file = writeResultFile(resultsDir, startedAt, { kind: 'nbd-fua', startedAt: startedAt.toISOString(), options, machine: machineDescription(), results: rows });
  process.stdout.write(`results in ${file}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`bench: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
