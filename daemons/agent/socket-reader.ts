// Reads exact byte counts from a socket, for a protocol parsed message by
// message (the NBD server): read(n) resolves with n bytes once they arrived,
// skip(n) drops n bytes as they arrive without holding them. The socket is
// paused while more than a bound is buffered and nobody reads, so a client
// that sends faster than the server works is held back by TCP, not by memory.
import type { Socket } from 'node:net';

export class ConnectionClosedError extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = 'ConnectionClosedError';
  }
}

export class SocketReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private closed: ConnectionClosedError | undefined;
  private waiter: { bytes: number; resolve: () => void; reject: (error: Error) => void } | undefined;
  private paused = false;

  constructor(
    private readonly socket: Socket,
    /** Past this many unread bytes the socket is paused (at least one message header plus the largest payload read at once). */
    private readonly bufferedBytesMax: number,
  ) {
    socket.on('data', this.onData);
    socket.on('end', this.onEnd);
    socket.on('close', this.onClose);
    socket.on('error', this.onError);
  }

  private readonly onData = (chunk: Buffer) => this.received(chunk);
  private readonly onEnd = () => this.close('the client closed the connection');
  private readonly onClose = () => this.close('the connection closed');
  private readonly onError = (error: Error) => this.close(`connection error: ${error.message}`);

  private close(reason: string): void {
    if (this.closed) return;
    this.closed = new ConnectionClosedError(reason);
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.reject(this.closed);
  }

  private received(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    if (this.buffered >= this.bufferedBytesMax && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
    const waiter = this.waiter;
    if (waiter && this.buffered >= waiter.bytes) {
      this.waiter = undefined;
      waiter.resolve();
    }
  }

  /**
   * Stops reading the socket and hands it over (STARTTLS: a TLS socket takes
   * over the connection). Returns the bytes read and not yet consumed: none,
   * from a client that waits for the answer before it starts TLS.
   */
  detach(): number {
    this.socket.pause();
    this.socket.off('data', this.onData);
    this.socket.off('end', this.onEnd);
    this.socket.off('close', this.onClose);
    this.socket.off('error', this.onError);
    return this.buffered;
  }

  /** Resolves once `bytes` are buffered; rejects with ConnectionClosedError if the connection ends first. */
  private async want(bytes: number): Promise<void> {
    if (this.buffered >= bytes) return;
    if (this.closed) throw this.closed;
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
    }
    await new Promise<void>((resolve, reject) => (this.waiter = { bytes: Math.min(bytes, this.bufferedBytesMax), resolve, reject }));
    if (this.buffered < bytes) await this.want(bytes);
  }

  /**
   * The next `bytes` bytes: a view of the chunk that holds them when one does
   * (no copy), else one new buffer they are copied into once.
   */
  async read(bytes: number): Promise<Buffer> {
    if (bytes === 0) return Buffer.alloc(0);
    if (bytes > this.bufferedBytesMax) {
      // Larger than the buffering bound: gather as it comes, a chunk at a time.
      const out = Buffer.allocUnsafe(bytes);
      for (let done = 0; done < bytes; ) {
        await this.want(1);
        done += this.take(out, done, bytes - done);
      }
      return out;
    }
    await this.want(bytes);
    const first = this.chunks[0]!;
    if (first.length >= bytes) {
      const view = first.subarray(0, bytes);
      if (first.length === bytes) this.chunks.shift();
      else this.chunks[0] = first.subarray(bytes);
      this.consumed(bytes);
      return view;
    }
    const out = Buffer.allocUnsafe(bytes);
    this.take(out, 0, bytes);
    return out;
  }

  /** Drops the next `bytes` bytes as they arrive (a payload refused before it was read). */
  async skip(bytes: number): Promise<void> {
    for (let left = bytes; left > 0; ) {
      await this.want(1);
      const first = this.chunks[0]!;
      const dropped = Math.min(first.length, left);
      if (dropped === first.length) this.chunks.shift();
      else this.chunks[0] = first.subarray(dropped);
      this.consumed(dropped);
      left -= dropped;
    }
  }

  /** Copies up to `bytes` buffered bytes into `out` at `at`; returns how many. */
  private take(out: Buffer, at: number, bytes: number): number {
    let done = 0;
    while (done < bytes && this.chunks.length > 0) {
      const first = this.chunks[0]!;
      const count = Math.min(first.length, bytes - done);
      first.copy(out, at + done, 0, count);
      done += count;
      if (count === first.length) this.chunks.shift();
      else this.chunks[0] = first.subarray(count);
    }
    this.consumed(done);
    return done;
  }

  private consumed(bytes: number): void {
    this.buffered -= bytes;
    if (this.paused && this.buffered < this.bufferedBytesMax) {
      this.paused = false;
      this.socket.resume();
    }
  }
}
