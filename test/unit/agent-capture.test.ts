// The agent's change capture without a server: held records, acknowledgement
// and overflow with tiny limits, watermarks, how a scan finds changed runs,
// the one-at-a-time queue a barrier holds, write validation, and hooks
// (environment, timeout, output cap).
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { Capture } from '../../daemons/agent/capture';
import { Hooks, hookError, hookFailure } from '../../daemons/agent/hooks';
import { OneAtATime } from '../../daemons/agent/one-at-a-time';
import { changedRuns } from '../../daemons/agent/scan';
import { validateWrite } from '../../daemons/agent/write-through';
import { ErrorCode } from '../../shared/errors';
import { blockBytes, extentBytesMax, hookErrorOutputBytesMax, hookOutputBytesMax } from '../../shared/limits';
import { createLogger } from '../../shared/log';
import { tempDir } from '../helpers/daemons';

const log = createLogger('test', 'silent');
const MiB = extentBytesMax;
const code = (code: ErrorCode) => ({ name: 'DrplaneError', code });

t.test('records are numbered from 1, held until acknowledged, and sent in bounded pieces', async (t) => {
  const capture = new Capture('/d', 'CAPTURE_WRITE_THROUGH', 2 * MiB, log, 50);
  t.equal(capture.firstHeldSequence, 1);
  for (let index = 0; index < 6; index++) capture.append({ offset: index * blockBytes, data: Buffer.alloc(256 * 1024, index) });
  capture.append({ marker: 'MARKER_APP_CONSISTENT', tag: 'x' });
  t.equal(capture.nextSequence, 8);
  t.equal(capture.heldBytes, 6 * 256 * 1024);
  t.same(capture.recordsFrom(1, 512 * 1024, 100).map((record) => record.sequence), [1, 2], 'at most bytesMax of data');
  t.same(capture.recordsFrom(6, 0, 100).map((record) => record.sequence), [6], 'but at least one record');
  t.same(capture.recordsFrom(3, 10 * MiB, 2).map((record) => record.sequence), [3, 4], 'at most countMax records');
  t.equal(capture.acknowledge(3), 3);
  t.equal(capture.firstHeldSequence, 4);
  t.equal(capture.heldBytes, 3 * 256 * 1024);
  t.equal(capture.acknowledge(3), 0, 'an old acknowledgement drops nothing');
  t.throws(() => capture.recordsFrom(2, MiB, 10), /first held is 4/);
  t.equal(capture.status().writes, 6, 'markers are not writes');
});

t.test('a write that finds the bound waits for room, then the capture overflows', async (t) => {
  const capture = new Capture('/d', 'CAPTURE_WRITE_THROUGH', MiB, log, 100);
  const firstId = capture.captureId;
  capture.append({ data: Buffer.alloc(MiB) });
  // An acknowledgement while waiting makes room: no overflow.
  const waiting = capture.waitForRoom(blockBytes);
  setTimeout(() => capture.acknowledge(1), 10);
  await waiting;
  t.equal(capture.overflows, 0);
  t.equal(capture.captureId, firstId);
  capture.append({ data: Buffer.alloc(MiB) });
  await capture.waitForRoom(blockBytes);
  t.equal(capture.overflows, 1, 'no acknowledgement within the stall limit');
  t.not(capture.captureId, firstId);
  t.equal(capture.nextSequence, 1);
  t.equal(capture.heldBytes, 0);
  t.equal(capture.append({ data: Buffer.alloc(blockBytes) }).sequence, 1, 'records start at 1 again');
});

t.test('watermarks never run ahead of a change that is not yet in the records', async (t) => {
  const capture = new Capture('/d', 'CAPTURE_WRITE_THROUGH', MiB, log);
  const record = capture.append({ data: Buffer.alloc(blockBytes) }, Date.now() - 1000);
  t.equal(capture.watermarkMs(0, undefined), undefined, 'behind, nothing sent: nothing to say');
  const startedMs = Date.now() - 500;
  const first = capture.beginPending(startedMs);
  const second = capture.beginPending(startedMs + 200);
  t.equal(capture.watermarkMs(1, record.timeMs), startedMs, 'a write in progress holds the watermark back');
  first();
  t.equal(capture.watermarkMs(1, record.timeMs), startedMs + 200, 'the earliest write still in progress holds it back');
  second();
  t.equal(capture.pendingSinceMs, undefined, 'no write in progress');
  const fresh = capture.watermarkMs(1, record.timeMs)!;
  t.ok(fresh >= Date.now() - 100);
  t.ok(capture.append({ data: Buffer.alloc(blockBytes) }, fresh - 10_000).timeMs >= fresh, 'a later record is never older than a watermark given out');
  const scan = new Capture('/d', 'CAPTURE_SCAN', MiB, log);
  scan.passWatermarkMs = 1234;
  t.equal(scan.watermarkMs(0, undefined), 1234, 'scan: the last finished pass');
  scan.append({ data: Buffer.alloc(blockBytes) }, 2000);
  t.equal(scan.watermarkMs(0, undefined), undefined);
});

t.test('changed blocks become runs of adjacent blocks, at most 1 MiB each', async (t) => {
  const blocks = 20_000;
  const previous = Buffer.alloc(blocks * 8, 1);
  const current = Buffer.from(previous);
  const change = (block: number) => (current[block * 8] = 2);
  for (const block of [0, 1, 2, 10, 12]) change(block);
  for (let block = 9_000; block < 9_000 + 300; block++) change(block);
  change(blocks - 1);
  t.same(changedRuns(previous, current), [
    { firstBlock: 0, blocks: 3 },
    { firstBlock: 10, blocks: 1 },
    { firstBlock: 12, blocks: 1 },
    { firstBlock: 9_000, blocks: 256 },
    { firstBlock: 9_256, blocks: 44 },
    { firstBlock: blocks - 1, blocks: 1 },
  ]);
  t.same(changedRuns(previous, Buffer.from(previous)), []);
  t.throws(() => changedRuns(previous, current.subarray(8)), RangeError);
});

t.test('one at a time, in order; a hold waits for what is queued and keeps the rest waiting', async (t) => {
  const queue = new OneAtATime();
  const done: string[] = [];
  const slow = queue.run(async () => {
    await new Promise((resolve) => setTimeout(resolve, 30));
    done.push('a');
  });
  const failing = queue.run(() => Promise.reject(new Error('b failed')));
  const held = queue.hold();
  const after = queue.run(() => done.push('c'));
  const release = await held;
  await slow;
  await t.rejects(failing, /b failed/);
  t.same(done, ['a'], 'the hold came after a and b, and c waits');
  await new Promise((resolve) => setTimeout(resolve, 20));
  t.same(done, ['a']);
  release();
  await after;
  t.same(done, ['a', 'c']);
});

t.test('writes must be whole blocks, 1 byte to 1 MiB, inside the disk', async (t) => {
  const diskBytes = 4 * MiB;
  t.doesNotThrow(() => validateWrite(diskBytes - MiB, MiB, diskBytes, 'd'));
  t.throws(() => validateWrite(0, 0, diskBytes, 'd'), code(ErrorCode.InvalidArgument));
  t.throws(() => validateWrite(0, MiB + blockBytes, diskBytes, 'd'), code(ErrorCode.InvalidArgument));
  t.throws(() => validateWrite(512, blockBytes, diskBytes, 'd'), code(ErrorCode.InvalidArgument));
  t.throws(() => validateWrite(0, 1000, diskBytes, 'd'), code(ErrorCode.InvalidArgument));
  t.throws(() => validateWrite(diskBytes, blockBytes, diskBytes, 'd'), code(ErrorCode.OutOfRange));
});

t.test('hooks: environment, exit status, timeout, output cap', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const marker = path.join(dir, 'still-running');
  const hooks = new Hooks(
    {
      freeze: 'echo "$DRPLANE_HOOK [$DRPLANE_DISKS] [$DRPLANE_TAG]"; echo oops >&2; exit 4',
      thaw: `sleep 2; touch ${marker}`,
      snapshotCreate: `head -c ${hookOutputBytesMax * 2} /dev/zero | tr '\\0' x`,
    },
    1_000,
    log,
  );
  t.same(hooks.names, ['freeze', 'thaw', 'snapshotCreate']);
  t.equal(hooks.has('snapshotRelease'), false);
  const freeze = await hooks.run('freeze', { disks: ['/a', '/b'], tag: 'nightly' });
  t.match(freeze, { ok: false, exitCode: 4, timedOut: false, stdout: 'freeze [/a /b] [nightly]\n', stderr: 'oops\n' });
  t.equal(hookFailure(freeze, hooks.timeoutMs), 'exit 4');
  t.equal(hookError(freeze, hooks.timeoutMs), 'freeze hook failed (exit 4): freeze [/a /b] [nightly]\noops');
  const thaw = await hooks.run('thaw', { disks: ['/a'] });
  t.match(thaw, { ok: false, timedOut: true });
  t.equal(hookFailure(thaw, hooks.timeoutMs), 'timed out after 1000 ms');
  const big = await hooks.run('snapshotCreate', { disks: ['/a'] });
  t.ok(big.ok);
  t.ok(big.stdout.startsWith('x'.repeat(hookOutputBytesMax)));
  t.match(big.stdout, new RegExp(`\\[${hookOutputBytesMax} more bytes of output cut\\]$`));
  t.ok(hookError(big, hooks.timeoutMs).length < hookErrorOutputBytesMax + 100, 'an error quotes only the start of the output');
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  t.notOk(fs.existsSync(marker), 'the timed-out hook was killed with its children');
});

t.test('write-through records are copies in reused slabs: the caller may reuse its buffer, and a slab is reused only once all its records are acknowledged', async (t) => {
  const capture = new Capture('/d', 'CAPTURE_WRITE_THROUGH', 64 * MiB, log, 50);
  const request = Buffer.alloc(MiB, 1);
  const first = capture.appendCopy(0, request);
  request.fill(2);
  t.ok(first.data.equals(Buffer.alloc(MiB, 1)), 'the record keeps what was written, not the reused request buffer');
  // Fill the first slab (4 MiB) and start a second; the first is reused only after every record in it is acknowledged.
  const records = [first];
  for (let index = 1; index < 6; index++) records.push(capture.appendCopy(index * MiB, Buffer.alloc(MiB, 10 + index)));
  capture.acknowledge(3);
  for (let index = 6; index < 12; index++) records.push(capture.appendCopy(index * MiB, Buffer.alloc(MiB, 10 + index)));
  for (let index = 3; index < records.length; index++) t.ok(records[index].data.equals(Buffer.alloc(MiB, 10 + index)), `record ${index + 1} intact while held`);
  capture.acknowledge(12);
  const after = capture.appendCopy(0, Buffer.alloc(4096, 99));
  t.ok(after.data.equals(Buffer.alloc(4096, 99)));
  t.equal(capture.heldBytes, 4096);
  capture.overflow('test');
  t.equal(capture.heldBytes, 0);
  t.ok(capture.appendCopy(0, Buffer.alloc(8192, 7)).data.equals(Buffer.alloc(8192, 7)), 'a capture that overflowed starts a slab afresh');
});
