// WriteThroughClient: the agent's library for workloads that write through it.
// One WriteStream stays open; writes are sent in call order, pipelined (up to
// inFlightMax unanswered), and each resolves with its change record's sequence
// once it is on the source disk. After a refused write or a broken stream,
// every write still pending fails and the next write opens a new stream.
import type * as grpc from '@grpc/grpc-js';
import type { WriteRequest } from '../../generated/drplane/v1/WriteRequest';
import type { WriteResponse__Output } from '../../generated/drplane/v1/WriteResponse';
import { DrplaneError, ErrorCode, fromServiceError } from '../../shared/errors';
import { createClient } from '../../shared/grpc';
import { writeThroughInFlightDefault } from '../../shared/limits';
import { v1, type AgentClient } from '../../shared/proto';
import { Encoder, PreEncoded, boolFieldBytes, bytesFieldBytes, stringFieldBytes, uintFieldBytes } from '../../shared/wire';

type WriteFields = { path: string; offset: number; data: Uint8Array; sync: boolean };

export function writeRequestBytes(request: WriteFields): number {
  return stringFieldBytes(1, request.path) + uintFieldBytes(2, request.offset) + bytesFieldBytes(3, request.data.length) + boolFieldBytes(4, request.sync);
}

/**
 * A WriteRequest encoded by hand (plain protobuf) into `buffer` (fresh when
 * not given); returns the message. Through protobufjs each write cost a
 * writer, its operations and a fresh copy of the data before grpc-js copied it
 * again.
 */
export function encodeWriteRequest(request: WriteFields, buffer: Buffer = Buffer.allocUnsafe(writeRequestBytes(request))): Buffer {
  const out = new Encoder(buffer);
  out.string(1, request.path).uint(2, request.offset).bytes(3, request.data).bool(4, request.sync);
  return buffer.subarray(0, out.position);
}

/** Requests up to this size are encoded into reused buffers (every write of up to 64 KiB, with room for a long path). */
const pooledRequestBytes = 64 * 1024 + 8 * 1024;

export interface WrittenChange {
  /** The write's change record; 0 when the disk has no write-through capture. */
  sequence: number;
  captureId: string;
}

export interface WriteThroughClientOptions {
  /** Writes sent and not yet answered (default writeThroughInFlightDefault). */
  inFlightMax?: number;
  /** Under mTLS, the agent takes writes only from its own certificate (its `self` row): the machine's workload holds it. */
  credentials?: grpc.ChannelCredentials;
}

interface PendingWrite {
  request: { path: string; offset: number; data: Buffer; sync: boolean };
  resolve: (written: WrittenChange) => void;
  reject: (error: Error) => void;
}

export class WriteThroughClient {
  private readonly client: AgentClient;
  private readonly inFlightMax: number;
  private stream: grpc.ClientDuplexStream<WriteRequest, WriteResponse__Output> | undefined;
  /** Sent on the current stream, answered in this order. */
  private readonly inFlight: PendingWrite[] = [];
  /** Not sent yet: waiting for room in flight. */
  private readonly queued: PendingWrite[] = [];
  private closed = false;
  /** Request buffers grpc-js has copied (their write's callback ran), ready for the next write. */
  private readonly freeBuffers: Buffer[] = [];

  constructor(
    readonly address: string,
    options: WriteThroughClientOptions = {},
  ) {
    this.client = createClient(v1.Agent, address, options.credentials);
    this.inFlightMax = options.inFlightMax ?? writeThroughInFlightDefault;
  }

  /** Writes whole 4 KiB blocks (at most 1 MiB) at offset of a disk the agent serves; sync: fdatasync before the answer. */
  write(path: string, offset: number, data: Buffer, options: { sync?: boolean } = {}): Promise<WrittenChange> {
    if (this.closed) return Promise.reject(new DrplaneError(ErrorCode.FailedPrecondition, 'the write-through client is closed'));
    if (!Number.isSafeInteger(offset) || offset < 0) return Promise.reject(new DrplaneError(ErrorCode.InvalidArgument, `write to ${path} at offset ${offset}: an offset is a non-negative integer`));
    return new Promise<WrittenChange>((resolve, reject) => {
      this.queued.push({ request: { path, offset, data, sync: options.sync ?? false }, resolve, reject });
      this.pump();
    });
  }

  /** Sends queued writes while there is room in flight. */
  private pump(): void {
    while (this.queued.length && this.inFlight.length < this.inFlightMax) {
      const stream = this.open();
      const next = this.queued.shift()!;
      this.inFlight.push(next);
      const pooled = writeRequestBytes(next.request) <= pooledRequestBytes ? (this.freeBuffers.pop() ?? Buffer.allocUnsafeSlow(pooledRequestBytes)) : undefined;
      const message = encodeWriteRequest(next.request, pooled);
      // The buffer is untouched until grpc-js has copied it: then it serves another write (a cancelled call may never call back: it is simply dropped).
      stream.write(new PreEncoded(message) as unknown as WriteRequest, () => {
        if (pooled && this.freeBuffers.length < this.inFlightMax) this.freeBuffers.push(pooled);
      });
    }
  }

  private open(): grpc.ClientDuplexStream<WriteRequest, WriteResponse__Output> {
    if (this.stream) return this.stream;
    const stream = this.client.writeStream();
    this.stream = stream;
    stream.on('data', (response: WriteResponse__Output) => {
      const answered = this.inFlight.shift();
      answered?.resolve({ sequence: response.sequence, captureId: response.captureId });
      this.pump();
    });
    stream.on('error', (error: grpc.ServiceError) => this.fail(stream, fromServiceError(error, `agent ${this.address}`)));
    // grpc-js emits 'error' (a failed status) before 'status'; an OK status with writes unanswered is a broken promise too.
    stream.on('status', () => this.fail(stream, new DrplaneError(ErrorCode.Unavailable, `agent ${this.address} ended the write stream with writes unanswered: they may or may not be on the disk`)));
    return stream;
  }

  /** The stream is over: what it had in flight, and what waited behind it, fails with the reason. */
  private fail(stream: grpc.ClientDuplexStream<WriteRequest, WriteResponse__Output>, error: DrplaneError): void {
    if (this.stream !== stream) return;
    this.stream = undefined;
    const [first, ...rest] = this.inFlight.splice(0);
    first?.reject(error);
    const later = new DrplaneError(error.code, `not written: an earlier write on the stream failed (${error.message})`, { cause: error });
    for (const pending of [...rest, ...this.queued.splice(0)]) pending.reject(later);
  }

  /** Waits for the writes in flight, then closes the stream and the connection. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const stream = this.stream;
    if (stream) {
      const over = new Promise<void>((resolve) => {
        stream.once('status', () => resolve());
      });
      stream.end();
      await over;
    }
    this.client.close();
  }
}
