// Goal (issue 12: NBD writes of a disk run concurrently where their blocks
// differ): many writes at queue depth 32, overlapping and not (aligned,
// unaligned, 512 bytes, large, write-zeroes, TRIM, FUA, flushes), from a raw
// client that keeps 32 in flight and from fio's nbd engine at iodepth 32
// (random offsets over a small disk, so they overlap too). The source holds
// what the writes in the order sent make of it (overlapping writes of one
// connection land in that order); the change records, replayed in sequence
// order onto the disk's old copy, give the source; and with replication on,
// the latest point materialises equal to the source (qemu-img compare too).
// Prints its seed.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import type { RecoveryPoint__Output } from '../../generated/drplane/v1/RecoveryPoint';
import { unary } from '../../shared/grpc';
import { tempDir } from '../helpers/daemons';
import { createImage, randomBytes, seededRandom, sha256File } from '../helpers/disks';
import { ChangeReplay, mustSucceed, nbdUri, run, startNbdAgent, whyNoNbdClients } from '../helpers/nbd';
import { CMD, RawClient } from '../helpers/nbd-raw-client';
import { eventually, startStack } from '../helpers/stack';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const KiB = 1024;
const diskBytes = 16 * MiB;
const queueDepth = 32;
const requests = 3000;
const why = whyNoNbdClients(['qemu-img', 'fio']);
const FUA = 1;

/** One request of the raw workload: a write (with data), write-zeroes, TRIM or flush, and what it makes of the model. */
interface Request {
  type: number;
  offset: number;
  length: number;
  flags: number;
  payload?: Buffer;
}

function randomRequest(random: () => number): Request {
  const kind = random();
  // Half the writes land in the first 256 KiB, so requests in flight overlap often.
  const span = random() < 0.5 ? 256 * KiB : diskBytes;
  const flags = random() < 0.05 ? FUA : 0;
  if (kind < 0.03) return { type: CMD.flush, offset: 0, length: 0, flags: 0 };
  let length: number;
  let offset: number;
  if (kind < 0.25) {
    length = 512 * (1 + Math.floor(random() * 16)); // unaligned, sub-block
    offset = Math.floor(random() * ((span - length) / 512)) * 512 + (random() < 0.3 ? 100 : 0);
  } else if (kind < 0.85) {
    length = 4 * KiB * (1 + Math.floor(random() * 16));
    offset = Math.floor(random() * ((span - length) / (4 * KiB))) * 4 * KiB;
  } else {
    length = 256 * KiB + Math.floor(random() * 2 * MiB);
    offset = Math.floor(random() * (diskBytes - length));
  }
  if (kind > 0.95) return { type: random() < 0.5 ? CMD.writeZeroes : CMD.trim, offset, length, flags };
  return { type: CMD.write, offset, length, flags, payload: randomBytes(Math.ceil(length / 8) * 8, random).subarray(0, length) };
}

/** Sends `requests` requests, `queueDepth` in flight; applies each to `model` in the order sent; every reply must be success. */
async function rawWorkload(raw: RawClient, random: () => number, model: Buffer): Promise<{ errors: number; maxInFlight: number }> {
  let inFlight = 0;
  let maxInFlight = 0;
  let errors = 0;
  let answered = 0;
  const replies = (async () => {
    while (answered < requests) {
      const reply = await raw.reply();
      if (reply.error !== 0) errors++;
      answered++;
      inFlight--;
    }
  })();
  for (let sent = 0; sent < requests; sent++) {
    while (inFlight >= queueDepth) await new Promise((resolve) => setImmediate(resolve));
    const request = randomRequest(random);
    raw.request(request.type, request.offset, request.length, { flags: request.flags, payload: request.payload });
    if (request.payload) request.payload.copy(model, request.offset);
    else if (request.type !== CMD.flush) model.fill(0, request.offset, request.offset + request.length);
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
  }
  await replies;
  return { errors, maxInFlight };
}

t.test('concurrent NBD writes at queue depth 32: the source and the records agree with the order sent', { skip: why || false }, async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = tempDir('drplane-nbd-concurrent-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const disk = path.join(dir, 'disk.img');
  createImage(disk, diskBytes, seed);
  const { client, socket } = await startNbdAgent(t, dir, [disk]);
  await unary(client, client.startCapture, { path: disk, mode: 'CAPTURE_WRITE_THROUGH' });
  const replica = path.join(dir, 'replica.img');
  fs.copyFileSync(disk, replica);
  const replay = new ChangeReplay(client, disk, replica);
  t.teardown(() => replay.close());
  const model = fs.readFileSync(disk);

  const raw = await RawClient.connect(socket);
  t.teardown(() => raw.destroy());
  await raw.hello();
  if ((await raw.go('')).at(-1)!.type !== 1) throw new Error('GO of the default export failed');
  const started = Date.now();
  const { errors, maxInFlight } = await rawWorkload(raw, random, model);
  t.comment(`${requests} requests, up to ${maxInFlight} in flight, in ${Date.now() - started} ms`);
  t.equal(errors, 0, 'every request succeeded');
  t.equal(maxInFlight, queueDepth, `the client kept ${queueDepth} requests in flight`);
  t.ok(fs.readFileSync(disk).equals(model), 'the source holds what the writes, in the order sent, make of it');

  // fio at iodepth 32, random offsets over the whole (small) disk: its writes overlap too.
  const fio = await run('fio', ['--name=overlap', '--ioengine=nbd', `--uri=${nbdUri(socket)}`, '--rw=randwrite', '--bsrange=4k-128k', `--iodepth=${queueDepth}`, `--size=${diskBytes}`, `--io_size=${64 * MiB}`, `--randseed=${seed}`, '--norandommap', '--output-format=json'], { allowFailure: true, timeoutMs: 120_000 });
  t.equal(fio.code, 0, `fio wrote 64 MiB at iodepth ${queueDepth} (${fio.stderr.slice(-300)})`);

  const capture = (await unary(client, client.listCaptures, {})).captures.find((entry) => entry.path === disk)!;
  await eventually('every record replayed', async () => (replay.replayedThrough >= Number(capture.nextSequence) - 1 ? true : undefined), 60_000, 50);
  replay.check();
  t.equal(replay.captureIds.size, 1, 'one capture throughout (no overflow)');
  t.equal(sha256File(replica), sha256File(disk), `the ${replay.records} change records, replayed in sequence order onto the old copy, give the source byte for byte`);
});

t.test('concurrent NBD writes replicated: the latest point materialises equal to the source', { skip: why || false }, async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed + 1);
  const dir = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'drplane-nbd-concurrent-rep-'));
  const source = path.join(dir, 'vm1-disk0.img');
  createImage(source, diskBytes, seed);
  const socket = path.join(dir, 'nbd.sock');
  const stack = await startStack(t, { dir, agents: [{ name: 'agent1', disks: [source], args: ['--nbd-listen', `unix:${socket}`] }] });
  await stack.drctlJson('policy', 'create', 'fast', '--crash-interval', '1s', '--retention', '1h', '--rpo-threshold', '1m', '--app-interval', '0', '--group-interval', '0');
  await stack.drctlJson('machine', 'add', 'vm1', '--agent', 'agent1', '--disk', source);
  const job = await stack.drctlJson<{ jobId: string }>('enable', 'vm1', '--datastore', path.join(stack.datastore, 'vm1'), '--policy', 'fast', '--capture', 'write-through', '--no-watch');
  const watched = await stack.drctl('job', 'watch', job.jobId);
  t.equal(watched.code, 0, `the enable job succeeded (${watched.stderr.trim()})`);

  const raw = await RawClient.connect(socket);
  t.teardown(() => raw.destroy());
  await raw.hello();
  if ((await raw.go('')).at(-1)!.type !== 1) throw new Error('GO of the default export failed');
  const model = fs.readFileSync(source);
  const { errors } = await rawWorkload(raw, random, model);
  t.equal(errors, 0, 'every request succeeded');
  t.ok(fs.readFileSync(source).equals(model), 'the source holds what the writes make of it');
  const fio = await run('fio', ['--name=overlap', '--ioengine=nbd', `--uri=${nbdUri(socket)}`, '--rw=randwrite', '--bsrange=4k-128k', `--iodepth=${queueDepth}`, `--size=${diskBytes}`, `--io_size=${32 * MiB}`, `--randseed=${seed}`, '--norandommap', '--output-format=json'], { allowFailure: true, timeoutMs: 120_000 });
  t.equal(fio.code, 0, `fio wrote 32 MiB at iodepth ${queueDepth}`);

  const latest = await stack.drctlJson<{ recoveryPoints: RecoveryPoint__Output[] }>('points', 'vm1', '--select', 'latest');
  const point = latest.recoveryPoints[0]!;
  const materialised = await unary(stack.csClient, stack.csClient.materialiseRecoveryPoint, { recoveryPointId: point.id, path: path.join(stack.datastore, 'restore', 'latest.img') });
  t.equal(sha256File(materialised.path), sha256File(source), `the latest point (${point.id}) materialises equal to the source`);
  t.match(mustSucceed(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', materialised.path, nbdUri(socket)]), 'qemu-img compare').stdout, /Images are identical/, 'qemu-img compare through NBD agrees');
});
