// The real agent process, scan capture and hooks: a scan sees the blocks
// another writer changed and ends a quiet pass with a crash-consistent marker;
// with snapshot hooks every pass is read from a snapshot and marked; an
// app-consistent point runs freeze, marker, thaw in that order; a failing
// freeze makes no marker and thaw still runs.
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import t from 'tap';
import { createClient, unary } from '../../shared/grpc';
import { v1 } from '../../shared/proto';
import { blockBytes } from '../../shared/limits';
import type { ChangeBatch__Output } from '../../generated/drplane/v1/ChangeBatch';
import type { ChangeRecord__Output } from '../../generated/drplane/v1/ChangeRecord';
import type { StreamChangesRequest } from '../../generated/drplane/v1/StreamChangesRequest';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import { startDaemon, tempDir } from '../helpers/daemons';
import { createImage, randomBytes, seededRandom } from '../helpers/disks';

const MiB = 1024 * 1024;
const diskBytes = 16 * MiB;
type AgentClient = ReturnType<typeof agentClient>;
const agentClient = (address: string) => createClient(v1.Agent, address);

/** Collects a StreamChanges call and acknowledges everything it receives. */
function streamChanges(client: AgentClient, first: StreamChangesRequest) {
  const batches: ChangeBatch__Output[] = [];
  const records: ChangeRecord__Output[] = [];
  const call = client.streamChanges();
  let ended = false;
  call.on('data', (batch: ChangeBatch__Output) => {
    batches.push(batch);
    records.push(...batch.records);
    if (batch.records.length) call.write({ captureId: batch.captureId, durableSequence: batch.records[batch.records.length - 1].sequence });
  });
  call.on('error', () => undefined);
  call.on('status', () => (ended = true));
  call.write(first);
  const until = async (done: () => boolean, what: string, timeoutMs = 30_000) => {
    const deadline = Date.now() + timeoutMs;
    while (!done()) {
      if (ended) throw new Error(`stream ended while waiting for ${what}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  return { batches, records, until, close: () => call.cancel() };
}

/** Overwrites a few scattered runs of the image, as another process would. */
function scribble(image: string, random: () => number, runs: number): void {
  const fd = fs.openSync(image, 'r+');
  for (let run = 0; run < runs; run++) {
    const blocks = 1 + Math.floor(random() * 300);
    const first = Math.floor(random() * (diskBytes / blockBytes - blocks));
    fs.writeSync(fd, randomBytes(blocks * blockBytes, random), 0, blocks * blockBytes, first * blockBytes);
  }
  fs.closeSync(fd);
}

/** Applies the write records to a copy of the disk. */
function apply(copy: Buffer, records: readonly ChangeRecord__Output[]): void {
  for (const record of records) if (record.marker === 'MARKER_NONE') record.data.copy(copy, record.offset);
}

t.test('scan capture and app-consistent hooks', async (t) => {
  const dir = tempDir();
  const seed = 11;
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const image = path.join(dir, 'scan.img');
  const through = path.join(dir, 'through.img');
  createImage(image, diskBytes, seed);
  createImage(through, diskBytes, seed + 1);
  const hookLog = path.join(dir, 'hooks.log');
  const config = path.join(dir, 'agent.json');
  fs.writeFileSync(
    config,
    JSON.stringify({
      disks: [image, through],
      hooks: {
        freeze: `if [ "$DRPLANE_TAG" = broken ]; then echo "cannot freeze $DRPLANE_TAG" >&2; exit 3; fi; echo "freeze $DRPLANE_TAG $(date +%s%3N) $DRPLANE_DISKS" >> ${hookLog}`,
        thaw: `echo "thaw $DRPLANE_TAG $(date +%s%3N)" >> ${hookLog}`,
      },
      hookTimeoutMs: 5_000,
    }),
  );
  const agent = await startDaemon('agent', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'), '--config', config] });
  const client = agentClient(agent.address);
  t.teardown(async () => {
    client.close();
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const shipped = fs.readFileSync(image);

  const started = await unary(client, client.startCapture, { path: image, mode: 'CAPTURE_SCAN', scanIntervalMs: 200 });
  t.equal(started.scanPasses, 1, 'StartCapture answers after the baseline pass');
  await t.rejects(unary(client, client.startCapture, { path: through, mode: 'CAPTURE_SCAN', scanIntervalMs: 50 }), { code: grpc.status.INVALID_ARGUMENT });
  const changes = streamChanges(client, { path: image, captureId: started.captureId, fromSequence: 1 });
  t.teardown(() => changes.close());

  t.test('a scan records the changed blocks and marks a quiet pass', async (t) => {
    scribble(image, random, 12);
    const now = fs.readFileSync(image);
    // A quiet pass may have been marked before the changes were made: look after the first data record.
    const marker = () => changes.records.findIndex((record, index) => record.marker === 'MARKER_CRASH_CONSISTENT' && changes.records.slice(0, index).some((before) => before.marker === 'MARKER_NONE'));
    await changes.until(() => marker() >= 0, 'a crash-consistent marker');
    const before = changes.records.slice(0, marker());
    const written = before.filter((record) => record.marker === 'MARKER_NONE');
    t.ok(written.length > 0, 'records before the marker');
    t.ok(written.every((record) => record.data.length > 0 && record.data.length <= MiB && record.offset % blockBytes === 0), 'runs of whole blocks, at most 1 MiB');
    const copy = Buffer.from(shipped);
    apply(copy, before);
    t.ok(copy.equals(now), 'the records up to the marker turn the baseline into the disk');
    t.same(changes.records.map((record) => record.sequence), changes.records.map((_, index) => index + 1), 'sequences 1, 2, 3...');
    t.match(changes.batches[0], { mode: 'CAPTURE_SCAN', everyBoundaryConsistent: false, captureId: started.captureId });
    const status = (await unary(client, client.listCaptures, {})).captures[0];
    t.ok(status.scanPasses >= 3, 'baseline, a pass with changes, a quiet pass');
    t.ok(status.lastPassTimeMs >= started.startedTimeMs);
  });

  t.test('freeze, marker, thaw in that order; on every listed disk', async (t) => {
    const wt = await unary(client, client.startCapture, { path: through, mode: 'CAPTURE_WRITE_THROUGH' });
    const response = await unary(client, client.takeAppConsistentPoint, { paths: [], tag: 'nightly' });
    t.same(response.markers.map((marker) => marker.path).sort(), [image, through].sort());
    t.match(response.hookOutput, /freeze: ok[\s\S]*thaw: ok/);
    const lines = fs.readFileSync(hookLog, 'utf8').trim().split('\n').map((line) => line.split(' '));
    t.same(lines.map((line) => line.slice(0, 2).join(' ')), ['freeze nightly', 'thaw nightly']);
    t.same(lines[0].slice(3).sort(), [image, through].sort(), 'DRPLANE_DISKS names the disks');
    const [frozeMs, thawedMs] = [Number(lines[0][2]), Number(lines[1][2])];
    for (const marker of response.markers) t.ok(marker.timeMs >= frozeMs && marker.timeMs <= thawedMs, `${path.basename(marker.path)}: the marker sits between freeze and thaw`);
    const scanMarker = response.markers.find((marker) => marker.path === image)!;
    await changes.until(() => changes.records.some((record) => record.sequence === scanMarker.sequence), 'the app marker');
    t.match(changes.records.find((record) => record.sequence === scanMarker.sequence), { marker: 'MARKER_APP_CONSISTENT', tag: 'nightly' });
    t.equal(response.markers.find((marker) => marker.path === through)!.captureId, wt.captureId);
    t.same((await unary(client, client.getStatus, {})).hooks, ['freeze', 'thaw']);
  });

  t.test('a failing freeze makes no marker, and thaw runs anyway', async (t) => {
    const { nextSequence } = (await unary(client, client.listCaptures, {})).captures.find((capture) => capture.path === through)!;
    await t.rejects(unary(client, client.takeAppConsistentPoint, { paths: [through], tag: 'broken' }), { code: grpc.status.FAILED_PRECONDITION, details: /^freeze hook failed \(exit 3\): cannot freeze broken/ });
    const lines = fs.readFileSync(hookLog, 'utf8').trim().split('\n');
    t.match(lines[lines.length - 1], /^thaw broken /);
    const status = (await unary(client, client.listCaptures, {})).captures.find((capture) => capture.path === through)!;
    t.equal(status.nextSequence, nextSequence, 'no marker');
    t.match(status.lastHookError, /freeze hook failed \(exit 3\)/);
    // A write-through disk's writes go on; the scan disk's capture is untouched.
    const writer = new WriteThroughClient(agent.address);
    t.teardown(() => writer.close());
    t.equal((await writer.write(through, 0, Buffer.alloc(blockBytes, 1))).sequence, nextSequence);
  });
});

t.test('snapshot hooks: every pass is read from a snapshot and marked', async (t) => {
  const dir = tempDir();
  const random = seededRandom(5);
  const image = path.join(dir, 'scan.img');
  createImage(image, diskBytes, 5);
  const snapshots = path.join(dir, 'snapshots');
  fs.mkdirSync(snapshots);
  const hookLog = path.join(dir, 'snapshots.log');
  const agent = await startDaemon('agent', {
    args: [
      '--listen', '127.0.0.1:0',
      '--data-dir', path.join(dir, 'data'),
      '--disk', image,
      '--snapshot-create-hook', `snap=$(mktemp -p ${snapshots} snap.XXXXXX) && cp --sparse=always "$DRPLANE_DISKS" "$snap" && echo "create $snap" >> ${hookLog} && echo "$snap"`,
      '--snapshot-release-hook', `echo "release $DRPLANE_SNAPSHOT" >> ${hookLog} && rm -f "$DRPLANE_SNAPSHOT"`,
      '--freeze-hook', 'true',
    ],
  });
  const client = agentClient(agent.address);
  t.teardown(async () => {
    client.close();
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const shipped = fs.readFileSync(image);
  // A long interval: passes run when asked (an app-consistent point runs one), so each can be counted.
  const started = await unary(client, client.startCapture, { path: image, mode: 'CAPTURE_SCAN', scanIntervalMs: 600_000 });
  t.equal(started.scanPasses, 1);
  const changes = streamChanges(client, { path: image, fromSequence: 1 });
  t.teardown(() => changes.close());
  await changes.until(() => changes.batches.length > 0, 'first batch');
  t.same(changes.records, [], 'the baseline pass records nothing');

  scribble(image, random, 5);
  const now = fs.readFileSync(image);
  await unary(client, client.takeAppConsistentPoint, { paths: [image], tag: 'one' });
  const second = await unary(client, client.takeAppConsistentPoint, { paths: [image], tag: 'two' });
  await changes.until(() => changes.records.some((record) => record.sequence === second.markers[0].sequence), 'both points');
  const kinds = changes.records.map((record) => (record.marker === 'MARKER_NONE' ? 'data' : `${record.marker}${record.tag ? `:${record.tag}` : ''}`));
  const dataRecords = kinds.indexOf('MARKER_CRASH_CONSISTENT');
  t.ok(dataRecords > 0);
  t.same(kinds.slice(dataRecords), ['MARKER_CRASH_CONSISTENT', 'MARKER_APP_CONSISTENT:one', 'MARKER_CRASH_CONSISTENT', 'MARKER_APP_CONSISTENT:two'], 'each pass ends with a crash-consistent marker, even a quiet one');
  const copy = Buffer.from(shipped);
  apply(copy, changes.records);
  t.ok(copy.equals(now), 'the records turn the baseline into the disk');
  const status = (await unary(client, client.listCaptures, {})).captures[0];
  t.equal(status.scanPasses, 3);
  t.equal(status.lastHookError, '');

  const lines = fs.readFileSync(hookLog, 'utf8').trim().split('\n').map((line) => line.split(' '));
  t.equal(lines.length, 6, 'three snapshots, each released');
  for (let index = 0; index < lines.length; index += 2) t.same([lines[index][0], lines[index + 1][0], lines[index + 1][1]], ['create', 'release', lines[index][1]]);
  t.same(fs.readdirSync(snapshots), [], 'no snapshot left behind');
});
