// The write-through path's messages encoded by hand (ChangeBatch on the agent,
// WriteRequest in WriteThroughClient, WriteResponse) decode with protobufjs to
// exactly the fields given: markers, tags (UTF-8), zero runs, large sequences and times,
// empty records and batches.
import t from 'tap';
import { changeBatchBytes, encodeChangeBatch, type ChangeBatchFields } from '../../daemons/agent/change-stream';
import { encodeWriteRequest, writeRequestBytes } from '../../daemons/agent/write-client';
import { encodeWriteResponse } from '../../daemons/agent/write-through';
import { v1 } from '../../shared/proto';
import type { HeldRecord } from '../../daemons/agent/capture';

type Method = { requestDeserialize(bytes: Buffer): unknown; responseDeserialize(bytes: Buffer): unknown };
const methods = (v1.Agent as unknown as { service: Record<string, Method> }).service;

t.test('ChangeBatch', async (t) => {
  const records: HeldRecord[] = [
    { sequence: 1, timeMs: 1_700_000_000_123, offset: 0, data: Buffer.alloc(4096, 1), marker: 'MARKER_NONE', tag: '', zeroLength: 0 },
    { sequence: 2, timeMs: 1_700_000_000_124, offset: 2 ** 40, data: Buffer.alloc(8192, 2), marker: 'MARKER_NONE', tag: '', zeroLength: 0 },
    // A zero run: no data, its length in zero_length.
    { sequence: 5, timeMs: 1_700_000_000_124, offset: 2 ** 41, data: Buffer.alloc(0), marker: 'MARKER_NONE', tag: '', zeroLength: 1024 * 1024 },
    { sequence: 3, timeMs: 1_700_000_000_125, offset: 0, data: Buffer.alloc(0), marker: 'MARKER_APP_CONSISTENT', tag: 'nightly-é-✓', zeroLength: 0 },
    { sequence: 2 ** 40, timeMs: 0, offset: 0, data: Buffer.alloc(0), marker: 'MARKER_GROUP_CONSISTENT', tag: 'barrier-1', zeroLength: 0 },
  ];
  const cases: ChangeBatchFields[] = [
    { captureId: 'c0ffee', mode: 'CAPTURE_WRITE_THROUGH', records, watermarkTimeMs: 1_700_000_000_200, everyBoundaryConsistent: true, nextSequence: 2 ** 40 + 1 },
    { captureId: 'c0ffee', mode: 'CAPTURE_SCAN', records: [], watermarkTimeMs: 0, everyBoundaryConsistent: false, nextSequence: 1 },
  ];
  for (const batch of cases) {
    const sizes: number[] = [];
    const bytes = changeBatchBytes(batch, sizes);
    const buffer = Buffer.alloc(bytes + 16, 0xee);
    t.equal(encodeChangeBatch(batch, sizes, buffer), bytes, 'the size computed is the size written');
    const decoded = methods.StreamChanges.responseDeserialize(buffer.subarray(0, bytes)) as Record<string, unknown>;
    t.same(decoded, {
      captureId: batch.captureId,
      mode: batch.mode,
      records: batch.records.map(({ sequence, timeMs, offset, data, marker, tag, zeroLength }) => ({ sequence, timeMs, offset, data, marker, tag, zeroLength })),
      watermarkTimeMs: batch.watermarkTimeMs,
      everyBoundaryConsistent: batch.everyBoundaryConsistent,
      nextSequence: batch.nextSequence,
    });
  }
});

t.test('WriteRequest and WriteResponse', async (t) => {
  const request = { path: '/srv/disks/é.img', offset: 3 * 2 ** 33, data: Buffer.alloc(12_288, 5), sync: true };
  const pooled = Buffer.alloc(128 * 1024, 0xee);
  for (const encoded of [encodeWriteRequest(request), encodeWriteRequest(request, pooled)]) {
    t.equal(encoded.length, writeRequestBytes(request));
    t.same(methods.WriteStream.requestDeserialize(encoded), request);
  }
  t.same(methods.WriteStream.requestDeserialize(encodeWriteRequest({ path: 'd', offset: 0, data: Buffer.alloc(4096), sync: false })), { path: 'd', offset: 0, data: Buffer.alloc(4096), sync: false });
  t.same(methods.WriteStream.responseDeserialize(encodeWriteResponse({ sequence: 2 ** 40, captureId: 'abc' })), { sequence: 2 ** 40, captureId: 'abc' });
  t.same(methods.WriteStream.responseDeserialize(encodeWriteResponse({ sequence: 0, captureId: '' })), { sequence: 0, captureId: '' });
});
