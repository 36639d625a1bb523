// The bulk messages of the data path (DiskData, BatchFrame) encoded by hand
// into buffers that are reused, instead of through protobufjs: a profile of a
// full sync showed each daemon spending most of its time allocating, copying
// and collecting one fresh buffer per message and per hop (docs/performance.md).
// The bytes are plain protobuf, so any other client (grpcurl, a test's own
// client) reads them as usual; receivers keep protobufjs, whose bytes fields
// are views of the message and cost no copy.
import assert from 'node:assert/strict';
import type { PackageDefinition } from '@grpc/proto-loader';

/**
 * A message already encoded: every method's serializer passes its bytes
 * through (installed by usePreEncoded). The bytes must stay untouched until
 * the write's callback has run: grpc-js copies them into its own frame
 * before then, possibly after write() has returned.
 */
export class PreEncoded {
  constructor(readonly bytes: Buffer) {}
}

/** Lets every method of the package send PreEncoded messages as they are; other values go through protobufjs as before. */
export function usePreEncoded(definition: PackageDefinition): void {
  for (const service of Object.values(definition)) {
    // Message and enum definitions carry a `format`; services are records of methods.
    if ('format' in service) continue;
    for (const method of Object.values(service as Record<string, { requestSerialize?: (value: unknown) => Buffer; responseSerialize?: (value: unknown) => Buffer }>)) {
      if (typeof method?.requestSerialize === 'function') method.requestSerialize = passThrough(method.requestSerialize);
      if (typeof method?.responseSerialize === 'function') method.responseSerialize = passThrough(method.responseSerialize);
    }
  }
}

/**
 * A request that did not decode. grpc-js answers a request its deserializer
 * refuses with INTERNAL ("Error deserializing request"), which says the
 * daemon broke: the deserializer returns this instead, and the server's first
 * interceptor (shared/grpc.ts) answers INVALID_ARGUMENT before any handler runs.
 */
export class UndecodableRequest {
  constructor(
    readonly typeName: string,
    readonly reason: string,
  ) {}
}

/** Every drplane method's request deserializer returns an UndecodableRequest instead of throwing. */
export function markUndecodableRequests(definition: PackageDefinition): void {
  for (const [serviceName, service] of Object.entries(definition)) {
    if ('format' in service || !serviceName.startsWith('drplane.')) continue;
    for (const method of Object.values(service as Record<string, { requestDeserialize?: (bytes: Buffer) => unknown; requestType?: { type?: { name?: string } } }>)) {
      const deserialize = method?.requestDeserialize;
      if (typeof deserialize !== 'function') continue;
      const typeName = `${serviceName.slice(0, serviceName.lastIndexOf('.'))}.${method.requestType?.type?.name ?? 'request'}`;
      method.requestDeserialize = (bytes: Buffer) => {
        try {
          return deserialize(bytes);
        } catch (error) {
          return new UndecodableRequest(typeName, (error as Error).message);
        }
      };
    }
  }
}

function passThrough(serialize: (value: unknown) => Buffer): (value: unknown) => Buffer {
  return (value) => (value instanceof PreEncoded ? value.bytes : serialize(value));
}

// Protobuf wire format: https://protobuf.dev/programming-guides/encoding/
const wireVarint = 0;
const wireLengthDelimited = 2;

export const tagOf = (field: number, wireType: number) => (field << 3) | wireType;

/** Bytes of a varint of `value` (a non-negative safe integer). */
export function varintBytes(value: number): number {
  let bytes = 1;
  while (value >= 0x80) {
    value = Math.floor(value / 128);
    bytes++;
  }
  return bytes;
}

/** Writes a varint at `at`; returns the position after it. */
export function writeVarint(buffer: Buffer, at: number, value: number): number {
  assert.ok(Number.isSafeInteger(value) && value >= 0, `varint of ${value}`);
  while (value >= 0x80) {
    buffer[at++] = (value & 0x7f) | 0x80;
    value = Math.floor(value / 128);
  }
  buffer[at++] = value;
  return at;
}

/** A growing encoder into a buffer of known size (the caller sized it with the *Bytes functions). */
export class Encoder {
  position: number;

  constructor(
    readonly buffer: Buffer,
    start = 0,
  ) {
    this.position = start;
  }

  /** A varint field; zero is left out, as protobuf does for proto3 scalars. */
  uint(field: number, value: number): this {
    if (value === 0) return this;
    this.position = writeVarint(this.buffer, this.position, tagOf(field, wireVarint));
    this.position = writeVarint(this.buffer, this.position, value);
    return this;
  }

  bool(field: number, value: boolean): this {
    return this.uint(field, value ? 1 : 0);
  }

  /** Tag and length of a length-delimited field whose content the caller writes next. */
  header(field: number, length: number): this {
    this.position = writeVarint(this.buffer, this.position, tagOf(field, wireLengthDelimited));
    this.position = writeVarint(this.buffer, this.position, length);
    return this;
  }

  bytes(field: number, value: Uint8Array): this {
    if (value.length === 0) return this;
    this.header(field, value.length);
    this.buffer.set(value, this.position);
    this.position += value.length;
    return this;
  }

  string(field: number, value: string): this {
    if (value.length === 0) return this;
    const length = Buffer.byteLength(value);
    this.header(field, length);
    this.position += this.buffer.write(value, this.position, length, 'utf8');
    return this;
  }
}

export const uintFieldBytes = (field: number, value: number) => (value === 0 ? 0 : varintBytes(tagOf(field, wireVarint)) + varintBytes(value));
export const boolFieldBytes = (field: number, value: boolean) => uintFieldBytes(field, value ? 1 : 0);
export const bytesFieldBytes = (field: number, length: number) => (length === 0 ? 0 : varintBytes(tagOf(field, wireLengthDelimited)) + varintBytes(length) + length);
export const stringFieldBytes = (field: number, value: string) => bytesFieldBytes(field, Buffer.byteLength(value));
/** A length-delimited field that is always written (a submessage, even an empty one). */
export const messageFieldBytes = (field: number, length: number) => varintBytes(tagOf(field, wireLengthDelimited)) + varintBytes(length) + length;

/**
 * Buffers of one size, reused for the messages of one call. A buffer goes back
 * when its write's callback runs; when the call ends (or is cancelled, when
 * grpc-js may never call back) the pool is simply dropped with it. acquire()
 * waits while every buffer is out, which is also the call's bound on memory.
 */
export class BufferPool {
  private readonly free: Buffer[] = [];
  private readonly waiting: ((buffer: Buffer | undefined) => void)[] = [];
  private closed = false;
  private made = 0;

  constructor(
    readonly bufferBytes: number,
    readonly buffersMax: number,
  ) {
    assert.ok(buffersMax >= 1);
  }

  /** A free buffer, or undefined once the pool is closed. */
  async acquire(): Promise<Buffer | undefined> {
    if (this.closed) return undefined;
    const free = this.free.pop();
    if (free) return free;
    if (this.made < this.buffersMax) {
      this.made++;
      return Buffer.allocUnsafeSlow(this.bufferBytes);
    }
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  release(buffer: Buffer): void {
    if (this.closed) return;
    const waiter = this.waiting.shift();
    if (waiter) waiter(buffer);
    else this.free.push(buffer);
  }

  /** Wakes every waiter with undefined; later acquires get undefined too. */
  close(): void {
    this.closed = true;
    this.free.length = 0;
    for (const waiter of this.waiting.splice(0)) waiter(undefined);
  }
}
