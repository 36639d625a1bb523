// Goal: the rules of where a batch of change records closes a recovery point
// (docs/continuous-replication.md): never before consistentFrom, any boundary
// in write-through, only right after a marker in scan mode; the kind and tag
// follow the marker; the source time stretches to the watermark only when the
// batch holds the newest record. Also the session's rates and its request checks.
import t from 'tap';
import { closingPoint, type BoundaryFacts } from '../../daemons/process-server/change-batches';
import { validateStartReplication } from '../../daemons/process-server/replications';
import { Throughput } from '../../daemons/process-server/throughput';
import { DrplaneError } from '../../shared/errors';
import { crashConsistentIntervalMsDefault, scanIntervalMsDefault } from '../../shared/limits';
import type { StartReplicationRequest__Output } from '../../generated/drplane/v1/StartReplicationRequest';

const write = (sequence: number, timeMs = 1_000 + sequence) => ({ sequence, timeMs, marker: 'MARKER_NONE' as const, tag: '' });
const facts = (extra: Partial<BoundaryFacts>): BoundaryFacts => ({
  lastRecord: write(10),
  changeSequence: 10,
  consistentFrom: 5,
  everyBoundaryConsistent: true,
  watermark: { timeMs: 0, sequence: 0 },
  ...extra,
});

t.test('no point before the sync has ended and its racing writes are in', async (t) => {
  t.equal(closingPoint(facts({ consistentFrom: 0 })), undefined, 'sync still running');
  t.equal(closingPoint(facts({ consistentFrom: 12 })), undefined, 'records 10 and 11 came before the end of the sync');
  t.same(closingPoint(facts({ consistentFrom: 11 })), { kind: 'CRASH_CONSISTENT', sourceTimeMs: 1_010, tag: '' }, 'every record before consistentFrom is in');
  t.equal(closingPoint(facts({ consistentFrom: 12, lastRecord: { ...write(10), marker: 'MARKER_APP_CONSISTENT', tag: 'x' } })), undefined, 'a marker before consistentFrom is no point either');
});

t.test('write-through: every boundary; scan: only after a marker', async (t) => {
  t.same(closingPoint(facts({})), { kind: 'CRASH_CONSISTENT', sourceTimeMs: 1_010, tag: '' });
  t.equal(closingPoint(facts({ everyBoundaryConsistent: false })), undefined, 'scan, no marker');
  t.same(closingPoint(facts({ everyBoundaryConsistent: false, lastRecord: { ...write(10), marker: 'MARKER_CRASH_CONSISTENT' } })), { kind: 'CRASH_CONSISTENT', sourceTimeMs: 1_010, tag: '' }, 'scan, a quiet or snapshot pass');
  t.same(closingPoint(facts({ everyBoundaryConsistent: false, lastRecord: { ...write(10), marker: 'MARKER_APP_CONSISTENT', tag: 'nightly' } })), { kind: 'APP_CONSISTENT', sourceTimeMs: 1_010, tag: 'nightly' });
  t.same(closingPoint(facts({ lastRecord: { ...write(10), marker: 'MARKER_GROUP_CONSISTENT', tag: 'barrier-7' } })), { kind: 'GROUP_CONSISTENT', sourceTimeMs: 1_010, tag: 'barrier-7' }, 'the tag of a group point is the barrier id');
});

t.test('source time: the last record, or the watermark when nothing newer was received', async (t) => {
  t.equal(closingPoint(facts({ watermark: { timeMs: 5_000, sequence: 10 } }))?.sourceTimeMs, 5_000, 'the source stayed so until the watermark');
  t.equal(closingPoint(facts({ watermark: { timeMs: 5_000, sequence: 11 } }))?.sourceTimeMs, 1_010, 'record 11 came after: only the record time holds');
  t.same(closingPoint(facts({ lastRecord: undefined, watermark: { timeMs: 9_000, sequence: 10 } })), { kind: 'CRASH_CONSISTENT', sourceTimeMs: 9_000, tag: '' }, 'an idle write-through disk gets points with the watermark');
  t.equal(closingPoint(facts({ lastRecord: undefined, watermark: { timeMs: 9_000, sequence: 12 } })), undefined, 'an empty batch behind the newest record says nothing new');
  t.equal(closingPoint(facts({ lastRecord: undefined, everyBoundaryConsistent: false, watermark: { timeMs: 9_000, sequence: 10 } })), undefined, 'scan: an empty batch is no point');
});

t.test('moving average over 10 seconds', async (t) => {
  let now = 1_000_000;
  const rate = new Throughput(() => now);
  rate.add(10_000);
  now += 1_000;
  t.equal(rate.perSecond(), 10_000, 'over the first second');
  for (let second = 0; second < 10; second++) {
    rate.add(1_000);
    now += 1_000;
  }
  // Now in second 11: the window holds seconds 2 to 11, nine of the adds of 1 000.
  t.equal(rate.perSecond(), 900, 'the first burst left the window');
  now += 20_000;
  t.equal(rate.perSecond(), 0, 'nothing lately');
});

t.test('StartReplication requests are checked field by field', async (t) => {
  const request: StartReplicationRequest__Output = {
    diskId: 'disk-1',
    epoch: 3,
    agentAddress: '127.0.0.1:7103',
    sourcePath: '/dev/vdb',
    masterTargetAddress: '127.0.0.1:7102',
    captureMode: 'CAPTURE_SCAN',
    scanIntervalMs: 0,
    crashConsistentIntervalMs: 0,
    initialSync: 'SYNC_MODE_UNSPECIFIED',
    tag: '',
  };
  const spec = validateStartReplication(request);
  t.equal(spec.crashConsistentIntervalMs, crashConsistentIntervalMsDefault, 'default crash-consistent interval');
  t.equal(spec.scanIntervalMs, scanIntervalMsDefault, 'default scan interval');
  t.equal(spec.initialSync, '', 'the replica decides the first sync');
  const refused = (what: string, change: Partial<StartReplicationRequest__Output>, field: RegExp) => {
    let caught: unknown;
    try {
      validateStartReplication({ ...request, ...change });
    } catch (error) {
      caught = error;
    }
    t.ok(caught instanceof DrplaneError && caught.code === 'invalid-argument' && field.test(caught.message), `${what}: ${(caught as Error | undefined)?.message}`);
  };
  refused('no capture mode', { captureMode: 'CAPTURE_MODE_UNSPECIFIED' }, /capture_mode/);
  refused('an interval too short', { crashConsistentIntervalMs: 50 }, /crash_consistent_interval_ms/);
  refused('an interval too long', { crashConsistentIntervalMs: 2 * 3_600_000 }, /crash_consistent_interval_ms/);
  refused('a scan interval too short', { scanIntervalMs: 1 }, /scan_interval_ms/);
  refused('a disk id that is a path', { diskId: '../etc' }, /disk_id/);
  refused('no epoch', { epoch: 0 }, /epoch/);
  refused('no source', { sourcePath: '' }, /source_path/);
  refused('a bad address', { masterTargetAddress: 'mt' }, /master_target_address/);
});
