// The real agent process, write-through capture: records match the writes in
// order and are forgotten once acknowledged; refused writes change nothing; a
// reopened stream resumes exactly; a write of zeros is a zero run (no data); a tiny held bound overflows to a new
// capture id while every write still lands; a barrier holds a write issued
// during the hold until its release.
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import t from 'tap';
import { createClient, unary } from '../../shared/grpc';
import { v1 } from '../../shared/proto';
import { ErrorCode } from '../../shared/errors';
import { blockBytes, extentBytesMax } from '../../shared/limits';
import type { ChangeBatch__Output } from '../../generated/drplane/v1/ChangeBatch';
import type { ChangeRecord__Output } from '../../generated/drplane/v1/ChangeRecord';
import type { StreamChangesRequest } from '../../generated/drplane/v1/StreamChangesRequest';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import { startDaemon, tempDir } from '../helpers/daemons';
import { createImage, randomBytes, seededRandom, sha256File } from '../helpers/disks';

const MiB = 1024 * 1024;
const diskBytes = 16 * MiB;
type AgentClient = ReturnType<typeof agentClient>;
const agentClient = (address: string) => createClient(v1.Agent, address);

/** A StreamChanges call that collects what it receives, for tests. */
class Changes {
  readonly batches: ChangeBatch__Output[] = [];
  readonly records: ChangeRecord__Output[] = [];
  error: grpc.ServiceError | undefined;
  ended = false;
  private readonly call: grpc.ClientDuplexStream<StreamChangesRequest, ChangeBatch__Output>;
  private waiters: (() => void)[] = [];

  constructor(client: AgentClient, first: StreamChangesRequest) {
    this.call = client.streamChanges();
    this.call.on('data', (batch: ChangeBatch__Output) => {
      this.batches.push(batch);
      this.records.push(...batch.records);
      this.notify();
    });
    this.call.on('error', (error: grpc.ServiceError) => {
      this.error = error;
      this.notify();
    });
    this.call.on('status', () => {
      this.ended = true;
      this.notify();
    });
    this.call.write(first);
  }

  private notify(): void {
    for (const waiter of this.waiters.splice(0)) waiter();
  }

  async until(done: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!done()) {
      if (this.ended) throw new Error(`stream ended (${this.error?.details ?? 'OK'}) while waiting for ${what}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 200);
        this.waiters.push(() => (clearTimeout(timer), resolve()));
      });
    }
  }

  ack(durableSequence: number, captureId: string): void {
    this.call.write({ durableSequence, captureId });
  }

  close(): void {
    this.call.cancel();
  }
}

async function captureOf(client: AgentClient, disk: string) {
  const { captures } = await unary(client, client.listCaptures, {});
  return captures.find((capture) => capture.path === disk)!;
}

async function waitFor<T>(probe: () => Promise<T>, done: (value: T) => boolean, what: string, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (done(value)) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(value)}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

t.test('write-through capture', async (t) => {
  const dir = tempDir();
  const seed = 7;
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const image = path.join(dir, 'source.img');
  const other = path.join(dir, 'other.img');
  createImage(image, diskBytes, seed);
  createImage(other, diskBytes, seed + 1);
  const agent = await startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'), '--disk', image, '--disk', other] });
  const client = agentClient(agent.address);
  const writer = new WriteThroughClient(agent.address, { inFlightMax: 8 });
  t.teardown(async () => {
    await writer.close();
    client.close();
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  /** What the image must hold: every write applied here too. */
  const expected = fs.readFileSync(image);
  const randomWrite = (sizeBlocksMax = 64) => {
    const length = (1 + Math.floor(random() * sizeBlocksMax)) * blockBytes;
    const offset = Math.floor(random() * ((diskBytes - length) / blockBytes)) * blockBytes;
    return { offset, data: randomBytes(length, random) };
  };

  const started = await unary(client, client.startCapture, { path: image, mode: 'CAPTURE_WRITE_THROUGH' });
  let captureId = started.captureId;

  t.test('StartCapture is idempotent in one mode and refuses another', async (t) => {
    t.equal(started.nextSequence, 1);
    t.equal(started.mode, 'CAPTURE_WRITE_THROUGH');
    const again = await unary(client, client.startCapture, { path: image, mode: 'CAPTURE_WRITE_THROUGH' });
    t.equal(again.captureId, captureId, 'same capture');
    await t.rejects(unary(client, client.startCapture, { path: image, mode: 'CAPTURE_SCAN' }), { code: grpc.status.FAILED_PRECONDITION, details: /StopCapture it first/ });
    await t.rejects(unary(client, client.startCapture, { path: '/etc/passwd', mode: 'CAPTURE_WRITE_THROUGH' }), { code: grpc.status.PERMISSION_DENIED });
    const changes = new Changes(client, { path: other, fromSequence: 1 });
    await changes.until(() => changes.ended, 'refusal');
    t.match(changes.error, { code: grpc.status.FAILED_PRECONDITION, details: /no capture of .*other\.img: StartCapture first/ });
  });

  t.test('records match the writes in order; acknowledged records are forgotten', async (t) => {
    const writes = Array.from({ length: 60 }, () => randomWrite());
    const answers = await Promise.all(writes.map((write) => writer.write(image, write.offset, write.data)));
    t.same(answers.map((answer) => answer.sequence), writes.map((_, index) => index + 1), 'sequences 1..60 in call order');
    t.ok(answers.every((answer) => answer.captureId === captureId));
    for (const write of writes) write.data.copy(expected, write.offset);
    t.equal(sha256File(image), sha256File(writeTemp(dir, expected)), 'the source holds every write in order');
    const heldBytes = writes.reduce((sum, write) => sum + write.data.length, 0);
    t.match(await captureOf(client, image), { heldBytes, firstHeldSequence: 1, nextSequence: 61, writes: 60 });

    const changes = new Changes(client, { path: image, captureId, fromSequence: 1 });
    t.teardown(() => changes.close());
    await changes.until(() => changes.records.length >= 60, '60 records');
    const problems: string[] = [];
    changes.records.forEach((record, index) => {
      const write = writes[index];
      if (record.sequence !== index + 1) problems.push(`record ${index} has sequence ${record.sequence}`);
      if (record.offset !== write.offset || !record.data.equals(write.data) || record.marker !== 'MARKER_NONE') problems.push(`record ${record.sequence} differs from its write`);
    });
    t.same(problems, []);
    const batch = changes.batches[0];
    t.match(batch, { captureId, mode: 'CAPTURE_WRITE_THROUGH', everyBoundaryConsistent: true });
    t.ok(changes.batches.every((each) => each.records.reduce((sum, record) => sum + record.data.length, 0) <= 4 * MiB), 'batches of at most 4 MiB of data');
    t.ok(changes.records.every((record, index) => index === 0 || record.timeMs >= changes.records[index - 1].timeMs), 'record times never go back');
    t.equal(await captureOf(client, image).then((capture) => capture.streaming), true);

    changes.ack(40, captureId);
    const after40 = await waitFor(() => captureOf(client, image), (capture) => capture.firstHeldSequence === 41, 'records up to 40 forgotten');
    t.equal(after40.heldBytes, writes.slice(40).reduce((sum, write) => sum + write.data.length, 0));
    changes.ack(60, captureId);
    await waitFor(() => captureOf(client, image), (capture) => capture.heldBytes === 0 && capture.firstHeldSequence === 61, 'held bytes fall to 0');

    // Idle: an empty batch with a fresh watermark about once a second.
    const before = changes.batches.length;
    await changes.until(() => changes.batches.length >= before + 2, 'two idle batches');
    const idle = changes.batches.slice(before);
    t.ok(idle.every((each) => each.records.length === 0 && each.nextSequence === 61));
    t.ok(idle[1].watermarkTimeMs >= idle[0].watermarkTimeMs && idle[0].watermarkTimeMs >= changes.records[59].timeMs, 'watermarks move forward');
  });

  t.test('a write whose data is all zero is a zero run: a record with no data', async (t) => {
    const offset = 3 * MiB;
    const answer = await writer.write(image, offset, Buffer.alloc(64 * 1024));
    Buffer.alloc(64 * 1024).copy(expected, offset);
    t.equal(sha256File(image), sha256File(writeTemp(dir, expected)), 'the zeros are on the source');
    const changes = new Changes(client, { path: image, captureId, fromSequence: answer.sequence });
    t.teardown(() => changes.close());
    await changes.until(() => changes.records.some((record) => record.sequence === answer.sequence), 'its record');
    const record = changes.records.find((each) => each.sequence === answer.sequence)!;
    t.match(record, { offset, zeroLength: 64 * 1024, marker: 'MARKER_NONE' }, 'its record is a zero run of 64 KiB at its offset');
    t.equal(record.data.length, 0, 'with no data');
    changes.ack(answer.sequence, captureId);
    await waitFor(() => captureOf(client, image), (capture) => capture.heldBytes === 0 && capture.firstHeldSequence === answer.sequence + 1, 'the zero run forgotten once acknowledged');
  });

  t.test('refused writes change nothing', async (t) => {
    const before = sha256File(image);
    const { nextSequence } = await captureOf(client, image);
    const write = (request: { path: string; offset: number; data: Buffer }) => unary(client, client.write, { ...request, sync: false });
    const block = Buffer.alloc(blockBytes, 1);
    await t.rejects(write({ path: path.join(dir, 'not-configured.img'), offset: 0, data: block }), { code: grpc.status.PERMISSION_DENIED });
    await t.rejects(write({ path: image, offset: 512, data: block }), { code: grpc.status.INVALID_ARGUMENT, details: /aligned/ });
    await t.rejects(write({ path: image, offset: 0, data: Buffer.alloc(1000, 1) }), { code: grpc.status.INVALID_ARGUMENT });
    await t.rejects(write({ path: image, offset: 0, data: Buffer.alloc(0) }), { code: grpc.status.INVALID_ARGUMENT });
    await t.rejects(write({ path: image, offset: 0, data: Buffer.alloc(extentBytesMax + blockBytes, 1) }), { code: grpc.status.INVALID_ARGUMENT, details: /larger than/ });
    await t.rejects(write({ path: image, offset: diskBytes - blockBytes, data: Buffer.alloc(2 * blockBytes, 1) }), { code: grpc.status.OUT_OF_RANGE });

    // On a stream: the write before the refused one lands, the ones after it do not.
    const good = randomWrite(4);
    const after = { offset: 0, data: Buffer.alloc(blockBytes, 9) };
    const results = await Promise.allSettled([writer.write(image, good.offset, good.data), writer.write(image, 100, block), writer.write(image, after.offset, after.data)]);
    t.equal(results[0].status, 'fulfilled');
    t.match(results[1], { status: 'rejected', reason: { code: ErrorCode.InvalidArgument } });
    t.match(results[2], { status: 'rejected', reason: { message: /not written/ } });
    good.data.copy(expected, good.offset);
    t.equal(sha256File(image), sha256File(writeTemp(dir, expected)), 'only the accepted write is on the disk');
    t.not(sha256File(image), before);
    t.equal((await captureOf(client, image)).nextSequence, nextSequence + 1, 'one record: the accepted write');
    // The client opens a new stream for the next write.
    const next = randomWrite(2);
    t.equal((await writer.write(image, next.offset, next.data)).sequence, nextSequence + 1);
    next.data.copy(expected, next.offset);
  });

  t.test('a disk without a capture is written with sequence 0', async (t) => {
    const data = Buffer.alloc(2 * blockBytes, 5);
    t.same(await writer.write(other, 8 * blockBytes, data, { sync: true }), { sequence: 0, captureId: '' });
    const fd = fs.openSync(other, 'r');
    const back = Buffer.alloc(data.length);
    fs.readSync(fd, back, 0, back.length, 8 * blockBytes);
    fs.closeSync(fd);
    t.ok(back.equals(data));
  });

  t.test('a stream reopened from an acknowledged sequence resumes exactly; a newer stream replaces the older', async (t) => {
    const { nextSequence: first } = await captureOf(client, image);
    const writes = Array.from({ length: 10 }, () => randomWrite(8));
    await Promise.all(writes.map((write) => writer.write(image, write.offset, write.data)));
    for (const write of writes) write.data.copy(expected, write.offset);
    const last = first + writes.length - 1;

    const one = new Changes(client, { path: image, captureId, fromSequence: first });
    await one.until(() => one.records.some((record) => record.sequence === last), 'the new records');
    t.equal(one.records[0].sequence, first);
    one.ack(first + 3, captureId);
    await waitFor(() => captureOf(client, image), (capture) => capture.firstHeldSequence === first + 4, 'ack applied');

    const two = new Changes(client, { path: image, captureId, fromSequence: first + 4 });
    t.teardown(() => two.close());
    await one.until(() => one.ended, 'the older stream to end');
    t.match(one.error, { code: grpc.status.ABORTED });
    await two.until(() => two.records.some((record) => record.sequence === last), 'resumed records');
    t.same(two.records.map((record) => record.sequence), Array.from({ length: 6 }, (_, index) => first + 4 + index), 'exactly from the sequence asked');
    t.ok(two.records.every((record, index) => record.data.equals(writes[4 + index].data)));
    two.close();

    // A caller that names another capture (or a sequence no longer held) gets the first held record and the real id: it must resync.
    const three = new Changes(client, { path: image, captureId: 'someone-else', fromSequence: 1 });
    t.teardown(() => three.close());
    await three.until(() => three.batches.length > 0, 'first batch');
    t.equal(three.batches[0].captureId, captureId);
    t.equal(three.records[0]?.sequence, first + 4, 'from the first held record');
    three.ack(last, captureId);
    await waitFor(() => captureOf(client, image), (capture) => capture.heldBytes === 0, 'all acknowledged');
    three.close();
  });

  t.test('no app-consistent point without a freeze hook, and a barrier that holds writes', async (t) => {
    const changes = new Changes(client, { path: image, captureId, fromSequence: (await captureOf(client, image)).nextSequence });
    t.teardown(() => changes.close());
    // Without a freeze hook nothing would be quiesced: the agent refuses rather than label a point app-consistent.
    const nextBefore = (await captureOf(client, image)).nextSequence;
    await t.rejects(unary(client, client.takeAppConsistentPoint, { paths: [], tag: 'nightly' }), { code: grpc.status.FAILED_PRECONDITION, details: /no freeze hook is configured/ });
    t.equal((await captureOf(client, image)).nextSequence, nextBefore, 'no marker was made');

    await t.rejects(unary(client, client.prepareBarrier, { barrierId: 'b0', paths: [image], holdMs: 20_000 }), { code: grpc.status.INVALID_ARGUMENT });
    await t.rejects(unary(client, client.prepareBarrier, { barrierId: 'b0', paths: [other], holdMs: 1_000 }), { code: grpc.status.FAILED_PRECONDITION });
    await t.rejects(unary(client, client.releaseBarrier, { barrierId: 'never' }), { code: grpc.status.NOT_FOUND });

    const prepared = await unary(client, client.prepareBarrier, { barrierId: 'b1', paths: [image], holdMs: 8_000 });
    const marker = prepared.markers[0];
    let answered = false;
    const held = randomWrite(2);
    const during = writer.write(image, held.offset, held.data).then((answer) => ((answered = true), answer));
    held.data.copy(expected, held.offset);
    await new Promise((resolve) => setTimeout(resolve, 500));
    t.equal(answered, false, 'the write waits while the barrier stands');
    const released = await unary(client, client.releaseBarrier, { barrierId: 'b1' });
    t.equal(released.expired, false);
    t.ok(released.heldMs >= 500);
    const answer = await during;
    t.equal(answer.sequence, marker.sequence + 1, 'the held write comes right after the marker');
    await changes.until(() => changes.records.some((record) => record.sequence === answer.sequence), 'the held write');
    t.match(changes.records.find((record) => record.sequence === marker.sequence), { marker: 'MARKER_GROUP_CONSISTENT', tag: 'b1' });

    // A barrier whose hold runs out lets writes go and says it expired.
    await unary(client, client.prepareBarrier, { barrierId: 'b2', paths: [], holdMs: 300 });
    const late = randomWrite(1);
    await writer.write(image, late.offset, late.data);
    late.data.copy(expected, late.offset);
    t.match(await unary(client, client.releaseBarrier, { barrierId: 'b2' }), { expired: true });
    t.equal(sha256File(image), sha256File(writeTemp(dir, expected)));
  });

  t.test('GetStatus lists the capture; StopCapture ends it and the stream', async (t) => {
    const status = await unary(client, client.getStatus, {});
    t.equal(status.captures.length, 1);
    t.same(status.hooks, []);
    const changes = new Changes(client, { path: image, captureId, fromSequence: status.captures[0].nextSequence });
    await changes.until(() => changes.batches.length > 0, 'first batch');
    const stopped = await unary(client, client.stopCapture, { path: image });
    t.equal(stopped.captureId, captureId);
    await changes.until(() => changes.ended, 'stream end');
    t.match(changes.error, { code: grpc.status.FAILED_PRECONDITION, details: /stopped/ });
    t.same((await unary(client, client.listCaptures, {})).captures, []);
    t.equal((await unary(client, client.stopCapture, { path: image })).captureId, '', 'stopping again is harmless');
    const restarted = await unary(client, client.startCapture, { path: image, mode: 'CAPTURE_WRITE_THROUGH' });
    t.not(restarted.captureId, captureId, 'a new capture id at each start');
    t.equal(restarted.nextSequence, 1);
    captureId = restarted.captureId;
  });

  t.test('SIGTERM ends the change streams (UNAVAILABLE) and the write streams, and the agent exits', async (t) => {
    const changes = new Changes(client, { path: image, captureId, fromSequence: 1 });
    const write = randomWrite(1);
    t.equal((await writer.write(image, write.offset, write.data)).sequence, 1);
    await changes.until(() => changes.records.length === 1, 'the record');
    t.same(await agent.stop(), { code: 0, signal: null });
    await changes.until(() => changes.ended, 'stream end');
    t.match(changes.error, { code: grpc.status.UNAVAILABLE, details: /shutting down/ });
  });
});

t.test('a tiny held bound overflows to a new capture id; every write still lands', async (t) => {
  const dir = tempDir();
  const image = path.join(dir, 'source.img');
  createImage(image, diskBytes, 3);
  const agent = await startDaemon('agent', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'), '--disk', image, '--held-bytes-max', String(MiB)] });
  const client = agentClient(agent.address);
  const writer = new WriteThroughClient(agent.address, { inFlightMax: 4 });
  t.teardown(async () => {
    await writer.close();
    client.close();
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const { captureId, heldBytesMax } = await unary(client, client.startCapture, { path: image, mode: 'CAPTURE_WRITE_THROUGH' });
  t.equal(heldBytesMax, MiB);
  const expected = fs.readFileSync(image);
  const random = seededRandom(3);
  // 20 writes of 64 KiB with nobody acknowledging: the 17th finds the bound, waits, then the capture overflows.
  const answers = [];
  for (let index = 0; index < 20; index++) {
    const data = randomBytes(64 * 1024, random);
    answers.push(await writer.write(image, index * 64 * 1024, data));
    data.copy(expected, index * 64 * 1024);
  }
  t.same(answers.slice(0, 16).map((answer) => answer.sequence), Array.from({ length: 16 }, (_, index) => index + 1));
  t.ok(answers.slice(0, 16).every((answer) => answer.captureId === captureId));
  const newId = answers[16].captureId;
  t.not(newId, captureId, 'a new capture id after the overflow');
  t.same(answers.slice(16).map((answer) => answer.sequence), [1, 2, 3, 4], 'sequences restart at 1');
  t.ok(answers.slice(16).every((answer) => answer.captureId === newId));
  t.equal(sha256File(image), sha256File(writeTemp(dir, expected)), 'every write is on the disk');
  const { captures } = await unary(client, client.listCaptures, {});
  t.match(captures[0], { captureId: newId, overflows: 1, nextSequence: 5, firstHeldSequence: 1, heldBytes: 4 * 64 * 1024 });
  await agent.waitForLog((line) => /capture overflowed/.test(String(line.msg)));

  // A caller still on the old capture gets the new id from its first held record.
  const call = client.streamChanges();
  const batch = await new Promise<ChangeBatch__Output>((resolve, reject) => {
    call.once('data', resolve);
    call.once('error', reject);
    call.write({ path: image, captureId, fromSequence: 17 });
  });
  call.cancel();
  call.on('error', () => undefined);
  t.equal(batch.captureId, newId);
  t.equal(batch.records[0].sequence, 1);
});

function writeTemp(dir: string, data: Buffer): string {
  const file = path.join(dir, 'expected.img');
  fs.writeFileSync(file, data);
  return file;
}
