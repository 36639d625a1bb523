// BatchFrame encoded by hand into a reused buffer (shared/wire.ts says why):
// the extents' bytes are copied once, into memory that stays warm, instead
// of into a fresh buffer per frame by protobufjs.
import { packageDefinition } from '../../shared/proto';
import { Encoder, boolFieldBytes, bytesFieldBytes, messageFieldBytes, stringFieldBytes, uintFieldBytes } from '../../shared/wire';
import type { PreparedExtent } from '../../shared/extents';
import type { BatchFrame } from '../../generated/drplane/v1/BatchFrame';

/** An enum's numbers by name, from the loaded .proto (so they cannot drift from it). */
function enumNumbers(name: string): Map<string, number> {
  const type = (packageDefinition[name] as unknown as { type: { value: { name: string; number: number }[] } }).type;
  return new Map(type.value.map((value) => [value.name, value.number]));
}
const codecNumbers = enumNumbers('drplane.v1.Codec');
const recoveryPointKindNumbers = enumNumbers('drplane.v1.RecoveryPointKind');

/** The fields of a frame other than its extents. */
export type FrameFields = Omit<BatchFrame, 'extents'>;

function extentBytes(extent: PreparedExtent): number {
  return (
    uintFieldBytes(1, extent.offset) +
    uintFieldBytes(2, extent.length) +
    uintFieldBytes(3, codecNumber(extent.codec)) +
    bytesFieldBytes(4, extent.data.byteLength) +
    bytesFieldBytes(5, extent.blockHashes.byteLength)
  );
}

function codecNumber(codec: string): number {
  const number = codecNumbers.get(codec);
  if (number === undefined) throw new RangeError(`unknown codec ${codec}`);
  return number;
}

function kindNumber(kind: BatchFrame['recoveryPointKind']): number {
  if (kind === undefined || typeof kind === 'number') return kind ?? 0;
  const number = recoveryPointKindNumbers.get(kind);
  if (number === undefined) throw new RangeError(`unknown recovery point kind ${kind}`);
  return number;
}

const num = (value: unknown) => Number(value ?? 0);

/** The encoded size of a frame. */
export function frameBytes(fields: FrameFields, extents: readonly PreparedExtent[]): number {
  let bytes =
    stringFieldBytes(1, fields.diskId ?? '') +
    uintFieldBytes(2, num(fields.epoch)) +
    uintFieldBytes(3, num(fields.sequence)) +
    boolFieldBytes(5, fields.last ?? false) +
    stringFieldBytes(6, fields.syncId ?? '') +
    uintFieldBytes(7, num(fields.syncCursor)) +
    boolFieldBytes(8, fields.syncComplete ?? false) +
    uintFieldBytes(9, kindNumber(fields.recoveryPointKind)) +
    uintFieldBytes(10, num(fields.sourceTimeMs)) +
    stringFieldBytes(11, fields.tag ?? '') +
    stringFieldBytes(12, fields.captureId ?? '') +
    uintFieldBytes(13, num(fields.changeSequence));
  for (const extent of extents) bytes += messageFieldBytes(4, extentBytes(extent));
  return bytes;
}

/** Encodes a frame into `buffer` (at least frameBytes long); returns the view that is the message. */
export function encodeFrame(buffer: Buffer, fields: FrameFields, extents: readonly PreparedExtent[]): Buffer {
  const out = new Encoder(buffer)
    .string(1, fields.diskId ?? '')
    .uint(2, num(fields.epoch))
    .uint(3, num(fields.sequence));
  for (const extent of extents) {
    out
      .header(4, extentBytes(extent))
      .uint(1, extent.offset)
      .uint(2, extent.length)
      .uint(3, codecNumber(extent.codec))
      .bytes(4, extent.data)
      .bytes(5, extent.blockHashes);
  }
  out
    .bool(5, fields.last ?? false)
    .string(6, fields.syncId ?? '')
    .uint(7, num(fields.syncCursor))
    .bool(8, fields.syncComplete ?? false)
    .uint(9, kindNumber(fields.recoveryPointKind))
    .uint(10, num(fields.sourceTimeMs))
    .string(11, fields.tag ?? '')
    .string(12, fields.captureId ?? '')
    .uint(13, num(fields.changeSequence));
  return buffer.subarray(0, out.position);
}
