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

export interface WrittenChange {
  /** The write's change record; 0 when the disk has no write-through capture. */
  sequence: number;
  captureId: string;
}

export interface WriteThroughClientOptions {
  /** Writes sent and not yet answered (default writeThroughInFlightDefault). */
  inFlightMax?: number;
}

interface PendingWrite {
  request: WriteRequest;
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

  constructor(
    readonly address: string,
    options: WriteThroughClientOptions = {},
  ) {
    this.client = createClient(v1.Agent, address);
    this.inFlightMax = options.inFlightMax ?? writeThroughInFlightDefault;
  }

  /** Writes whole 4 KiB blocks (at most 1 MiB) at offset of a disk the agent serves; sync: fdatasync before the answer. */
  write(path: string, offset: number, data: Buffer, options: { sync?: boolean } = {}): Promise<WrittenChange> {
    if (this.closed) return Promise.reject(new DrplaneError(ErrorCode.FailedPrecondition, 'the write-through client is closed'));
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
      stream.write(next.request);
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
