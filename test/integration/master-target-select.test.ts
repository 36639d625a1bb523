// Goal: SelectRecoveryPoint picks the right point for each selector (kinds from
// recovery_point_kind, times from source_time_ms) and refuses LATEST and an
// unspecified selector; capture_id and change_sequence round-trip to the
// replica and its points; retention windows are bounded and settable; the
// replica and status fields of continuous replication are filled.
import t from 'tap';
import fs from 'node:fs';
import path from 'node:path';
import { status } from '@grpc/grpc-js';
import { tempDir } from '../helpers/daemons';
import { makeExtent, sendFrames, startMasterTarget, unary } from '../helpers/clients';
import { randomBytes, seededRandom } from '../helpers/disks';
import type { RecoveryPointKind } from '../../generated/drplane/v1/RecoveryPointKind';

const diskBytes = 1024 * 1024;
const block = 4096;
/** Ten minutes ago: inside the default 24-hour window, so nothing is pruned. */
const baseTimeMs = Date.now() - 10 * 60_000;
const day = 24 * 60 * 60_000;

t.test('selectors, capture fields and retention windows', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { client } = await startMasterTarget(t, dir);
  const created = await unary(client, client.createReplica, { diskId: 'd', path: path.join(dir, 'ds', 'd.img'), diskBytes, epoch: 1 });
  t.equal(created.retentionWindowMs, day, 'retention window 0 means the default, 24 hours');
  t.equal(created.oldestRecoveryPointId, '');
  t.equal(created.latestRecoveryPointTimeMs, 0);

  // kind, source time (offset from baseTimeMs), capture, change sequence; 'none' closes no point.
  const plan: { kind: RecoveryPointKind | 'none'; at: number; captureId: string; changeSequence: number; tag?: string }[] = [
    { kind: 'CRASH_CONSISTENT', at: 1000, captureId: 'cap-1', changeSequence: 10 },
    { kind: 'APP_CONSISTENT', at: 2000, captureId: 'cap-1', changeSequence: 20, tag: 'nightly' },
    { kind: 'none', at: 3000, captureId: 'cap-1', changeSequence: 30 },
    { kind: 'GROUP_CONSISTENT', at: 4000, captureId: 'cap-1', changeSequence: 40, tag: 'barrier-1' },
    { kind: 'CRASH_CONSISTENT', at: 5000, captureId: 'cap-1', changeSequence: 50 },
    { kind: 'APP_CONSISTENT', at: 6000, captureId: 'cap-1', changeSequence: 60 },
    { kind: 'GROUP_CONSISTENT', at: 7000, captureId: 'cap-2', changeSequence: 3, tag: 'barrier-2' },
  ];
  const random = seededRandom(11);
  const written = new Set<number>();
  let expectedImageBytes = 0;
  for (const [index, step] of plan.entries()) {
    const sequence = index + 1;
    const offset = (index % 3) * 16 * block;
    const plain = randomBytes(32 * block, random);
    // A before-image holds old data when any block of the range was written before.
    let overwrites = false;
    for (let b = offset / block; b < offset / block + 32; b++) {
      if (written.has(b)) overwrites = true;
      written.add(b);
    }
    if (overwrites) expectedImageBytes += plain.length;
    const result = await sendFrames(client, [
      {
        diskId: 'd',
        epoch: 1,
        sequence,
        extents: [await makeExtent(offset, plain)],
        last: true,
        recoveryPointKind: step.kind === 'none' ? 'RECOVERY_POINT_KIND_UNSPECIFIED' : step.kind,
        sourceTimeMs: baseTimeMs + step.at,
        tag: step.tag ?? '',
        captureId: step.captureId,
        changeSequence: step.changeSequence,
      },
    ]);
    t.error(result.error, `batch ${sequence} applied`);
  }

  const replica = await unary(client, client.getReplica, { diskId: 'd' });
  t.equal(replica.captureId, 'cap-2', 'the replica holds the capture of the last batch');
  t.equal(replica.appliedChangeSequence, 3, 'and its last change record');
  t.equal(replica.oldestRecoveryPointId, 'd@1');
  t.equal(replica.oldestRecoveryPointTimeMs, baseTimeMs + 1000);
  t.equal(replica.latestRecoveryPointTimeMs, baseTimeMs + 7000);
  t.equal(replica.latestRecoveryPointId, 'd@7');
  t.equal(replica.recoveryPointCount, 6);
  t.equal(replica.beforeImageBytes, expectedImageBytes, 'before-image bytes count the old data held');

  const { recoveryPoints } = await unary(client, client.listRecoveryPoints, { diskId: 'd' });
  const four = recoveryPoints.find((p) => p.sequence === 4)!;
  t.equal(four.captureId, 'cap-1', 'a point carries its capture');
  t.equal(four.changeSequence, 40, 'and its last change record');
  t.equal(four.tag, 'barrier-1');

  // A batch whose closing frame names no capture (a sync) leaves the capture fields alone.
  t.error((await sendFrames(client, [{ diskId: 'd', epoch: 1, sequence: 8, extents: [], last: true }])).error);
  const afterSync = await unary(client, client.getReplica, { diskId: 'd' });
  t.equal(afterSync.captureId, 'cap-2');
  t.equal(afterSync.appliedChangeSequence, 3);
  t.equal(afterSync.appliedSequence, 8);

  const select = (request: { diskId?: string; selector: string; pointId?: string; timeMs?: number }) =>
    unary(client, client.selectRecoveryPoint, { diskId: 'd', ...request } as never).then(
      (point) => ({ point, error: undefined }),
      (error: { code: number; details: string }) => ({ point: undefined, error }),
    );
  const expectPoint = async (request: Parameters<typeof select>[0], id: string, label: string) => {
    const { point, error } = await select(request);
    t.error(error, label);
    t.equal(point?.id, id, label);
    return point;
  };
  const expectError = async (request: Parameters<typeof select>[0], code: number, message: RegExp, label: string) => {
    const { error } = await select(request);
    t.equal(error?.code, code, label);
    t.match(error?.details ?? '', message, label);
  };

  await expectPoint({ selector: 'LATEST_PROCESSED' }, 'd@7', 'latest-processed is the newest point');
  await expectPoint({ selector: 'LATEST_APP_CONSISTENT' }, 'd@6', 'latest-app-consistent');
  await expectPoint({ selector: 'LATEST_CRASH_CONSISTENT' }, 'd@5', 'latest-crash-consistent takes crash-consistent points only');
  const byId = await expectPoint({ selector: 'BY_ID', pointId: 'd@2' }, 'd@2', 'by id');
  t.equal(byId?.kind, 'APP_CONSISTENT');
  t.equal(byId?.tag, 'nightly');
  await expectPoint({ diskId: '', selector: 'BY_ID', pointId: 'd@4' }, 'd@4', 'by id without a disk id');
  await expectPoint({ selector: 'AT_OR_BEFORE', timeMs: baseTimeMs + 4500 }, 'd@4', 'at-or-before between two points');
  await expectPoint({ selector: 'AT_OR_BEFORE', timeMs: baseTimeMs + 4000 }, 'd@4', 'at-or-before exactly at a point');
  await expectPoint({ selector: 'AT_OR_BEFORE', timeMs: baseTimeMs + 3500 }, 'd@2', 'at-or-before skips a batch without a point');
  await expectPoint({ selector: 'AT_OR_BEFORE', timeMs: baseTimeMs + 1000 }, 'd@1', 'at-or-before the oldest point exactly');
  await expectPoint({ selector: 'AT_OR_BEFORE', timeMs: Date.now() }, 'd@7', 'at-or-before now');

  await expectError({ selector: 'AT_OR_BEFORE', timeMs: baseTimeMs + 999 }, status.NOT_FOUND, /no recovery point at or before .* the oldest it holds is d@1 at/, 'before the oldest point');
  await expectError({ selector: 'AT_OR_BEFORE', timeMs: 0 }, status.INVALID_ARGUMENT, /time_ms/, 'at-or-before without a time');
  await expectError({ selector: 'LATEST' }, status.INVALID_ARGUMENT, /^latest drains the process server: ask the configuration server \(drctl points --select latest\)$/, 'latest is refused here');
  await expectError({ selector: 'POINT_SELECTOR_UNSPECIFIED' }, status.INVALID_ARGUMENT, /selector/, 'an unspecified selector is refused');
  await expectError({ selector: 'BY_ID', pointId: 'd@3' }, status.NOT_FOUND, /d@3 does not exist/, 'a batch without a point is no point');
  await expectError({ selector: 'BY_ID', pointId: 'nonsense' }, status.INVALID_ARGUMENT, /not of the form/, 'a malformed id');
  await expectError({ diskId: 'other', selector: 'BY_ID', pointId: 'd@2' }, status.INVALID_ARGUMENT, /belongs to disk d, not other/, 'an id of another disk');
  await expectError({ diskId: 'nope', selector: 'LATEST_PROCESSED' }, status.NOT_FOUND, /no replica for disk nope/, 'an unknown disk');

  await unary(client, client.createReplica, { diskId: 'e', path: path.join(dir, 'ds', 'e.img'), diskBytes, epoch: 1 });
  await expectError({ diskId: 'e', selector: 'LATEST_PROCESSED' }, status.NOT_FOUND, /disk e has no recovery point yet/, 'a disk without points');
  t.error((await sendFrames(client, [{ diskId: 'e', epoch: 1, sequence: 1, extents: [], last: true, recoveryPointKind: 'CRASH_CONSISTENT', sourceTimeMs: baseTimeMs }])).error);
  await expectError({ diskId: 'e', selector: 'LATEST_APP_CONSISTENT' }, status.NOT_FOUND, /disk e holds no app-consistent recovery point/, 'no point of the kind');

  const statusNow = await unary(client, client.getStatus, {});
  t.equal(statusNow.retentionDir, path.join(dir, 'mt', 'retention'), 'the default retention directory is under the data directory');
  t.ok(statusNow.retentionCapacityBytes > 0 && statusNow.retentionFreeBytes > 0, 'capacity and free space of the retention volume');
  t.ok(statusNow.retentionFreeBytes <= statusNow.retentionCapacityBytes);
  t.equal(statusNow.oldestRecoveryPointTimeMs, baseTimeMs, 'the oldest point over every replica');
  t.equal(statusNow.recoveryPointCount, 7, 'points over every replica');
  t.equal(statusNow.retentionVolumeQualified, true);
  t.equal(statusNow.recoveryPointsPruned, 0, 'nothing pruned: every point is inside the 24-hour window');
});

t.test('retention windows are bounded, and settable by ConfigureReplica and CreateReplica', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const { client } = await startMasterTarget(t, dir);
  const create = (retentionWindowMs: number) => unary(client, client.createReplica, { diskId: 'w', path: path.join(dir, 'ds', 'w.img'), diskBytes, epoch: 1, retentionWindowMs });
  for (const windowMs of [999, 30 * day + 1]) {
    const error = await create(windowMs).catch((e) => e);
    t.equal(error.code, status.INVALID_ARGUMENT, `CreateReplica refuses a window of ${windowMs} ms`);
    t.match(error.details, /retention_window_ms .* is outside 1000 ms \(1 second\) to 2592000000 ms \(30 days\)/);
  }
  t.notOk(fs.existsSync(path.join(dir, 'ds', 'w.img')), 'and creates nothing');
  t.equal((await create(60_000)).retentionWindowMs, 60_000, 'a window given at creation');
  t.equal((await create(0)).retentionWindowMs, 60_000, 'created again without a window: the window stays');
  t.equal((await create(120_000)).retentionWindowMs, 120_000, 'created again with another window: the policy changed');

  const configure = (retentionWindowMs: number) => unary(client, client.configureReplica, { diskId: 'w', retentionWindowMs });
  t.equal((await configure(30 * day)).retentionWindowMs, 30 * day, 'ConfigureReplica sets 30 days');
  t.equal((await configure(1000)).retentionWindowMs, 1000, 'and 1 second');
  for (const windowMs of [0, 999, 30 * day + 1]) {
    const error = await configure(windowMs).catch((e) => e);
    t.equal(error.code, status.INVALID_ARGUMENT, `ConfigureReplica refuses ${windowMs} ms`);
  }
  t.equal((await unary(client, client.getReplica, { diskId: 'w' })).retentionWindowMs, 1000, 'a refused change changes nothing');
  const unknown = await unary(client, client.configureReplica, { diskId: 'nope', retentionWindowMs: 1000 }).catch((e) => e);
  t.equal(unknown.code, status.NOT_FOUND);
});
