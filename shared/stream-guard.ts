// Streams a caller can hold open: how many at once per peer, and how long one
// may do nothing. A stream costs the server buffers, file handles, a copy of a
// database or a place in a disk's lock queue for as long as it is open, so a
// peer that opens many and then sends and reads nothing must not hold them
// for ever (issue 13). One StreamGuard per method; each handler admits its
// call at entry and tells the guard when the call makes progress.
import http2 from 'node:http2';
import { deadlineExceeded, limitExceeded, type DrplaneError } from './errors';
import type { Logger } from './log';
import { peerIdentity } from './roles';

/**
 * Tests lower the limits through these variables (never raise them: the lower
 * of the two applies), so an idle stream is ended in a second rather than in
 * an hour. Unset in production.
 */
export const streamIdleTestVariable = 'DRPLANE_TEST_STREAM_IDLE_MS';
export const streamsPerPeerTestVariable = 'DRPLANE_TEST_STREAMS_PER_PEER_MAX';

function lowered(limit: number, variable: string): number {
  const value = Number(process.env[variable] ?? '');
  return Number.isSafeInteger(value) && value > 0 ? Math.min(limit, value) : limit;
}

/**
 * Who a caller is for the per-peer count: its certificate's name under mTLS,
 * otherwise its address without the port (every connection of one host counts
 * as one peer).
 */
export function peerKey(call: { getPeer(): string }): string {
  const identity = peerIdentity(call as unknown as Parameters<typeof peerIdentity>[0]);
  if (identity) return `certificate CN=${identity.commonName}`;
  const peer = call.getPeer();
  const host = peer.replace(/:\d+$/, '');
  return `address ${host}`;
}

/**
 * Resets a call's HTTP/2 stream. A status cannot reach a caller that stops
 * reading (grpc-js sends it after the data the caller has not taken), so an
 * idle stream whose status is still queued after a grace is cut this way:
 * grpc-js then reports the call cancelled and its handler frees what it holds.
 * grpc-js has no public way to do this; if its internals change, this only
 * logs (the status stays queued) and never throws.
 */
function resetStream(call: object, log: Logger): void {
  let layer: Record<string, unknown> | undefined = call as Record<string, unknown>;
  for (let depth = 0; layer && depth < 8; depth++) {
    const stream = layer.stream as http2.ServerHttp2Stream | undefined;
    if (stream && typeof stream.close === 'function') {
      if (!stream.closed && !stream.destroyed) stream.close(http2.constants.NGHTTP2_CANCEL);
      return;
    }
    layer = (layer.call ?? layer.nextCall) as Record<string, unknown> | undefined;
  }
  log.warn('grpc-js internals changed: an idle stream cannot be reset and waits for its caller');
}

/** How long after its status an idle call that has not closed is reset (its caller is not reading). */
const statusGraceMs = 1_000;

type GuardedCall = { getPeer(): string } & NodeJS.EventEmitter;

export interface StreamGuardOptions {
  /** The method, as statuses and logs name it (ApplyBatches). */
  method: string;
  /** Streams of this method one peer may hold at once. */
  perPeerMax: number;
  /** A stream that neither sends nor takes anything for this long is ended. */
  idleMsMax: number;
  log: Logger;
}

export interface AdmittedStream {
  /** The stream did something (a message arrived, or the caller took one): the idle clock starts again. */
  touch(): void;
  /** Frees the stream's place (idempotent; also done when the call closes). */
  release(): void;
}

export class StreamGuard {
  readonly perPeerMax: number;
  readonly idleMsMax: number;
  private readonly open = new Map<string, number>();

  constructor(private readonly options: StreamGuardOptions) {
    this.perPeerMax = lowered(options.perPeerMax, streamsPerPeerTestVariable);
    this.idleMsMax = lowered(options.idleMsMax, streamIdleTestVariable);
  }

  /** Streams open now from one peer (for tests and status). */
  openFrom(peer: string): number {
    return this.open.get(peer) ?? 0;
  }

  /**
   * Admits a call, or throws RESOURCE_EXHAUSTED when its peer already holds
   * perPeerMax streams of this method. Every message that arrives and every
   * message the caller takes (its write's callback) counts as progress; a call
   * without progress for idleMsMax is ended by `endIdle` (which should send a
   * status and free the call's resources), and reset if that status has not
   * gone out a second later.
   */
  admit(call: GuardedCall, endIdle: (error: DrplaneError) => void): AdmittedStream {
    const peer = peerKey(call);
    const count = this.openFrom(peer);
    if (count >= this.perPeerMax) {
      this.options.log.warn({ method: this.options.method, peer, open: count }, 'stream refused: its peer holds the most streams of this method');
      throw limitExceeded(`${peer} already holds ${count} ${this.options.method} streams on this daemon, the most one peer may (end one first)`);
    }
    this.open.set(peer, count + 1);
    let lastProgressMs = Date.now();
    let released = false;
    const touch = () => {
      lastProgressMs = Date.now();
    };
    const release = () => {
      if (released) return;
      released = true;
      clearInterval(timer);
      const left = this.openFrom(peer) - 1;
      if (left > 0) this.open.set(peer, left);
      else this.open.delete(peer);
    };
    const timer = setInterval(
      () => {
        if (Date.now() - lastProgressMs < this.idleMsMax) return;
        clearInterval(timer);
        const seconds = Math.round(this.idleMsMax / 100) / 10;
        this.options.log.warn({ method: this.options.method, peer, idleMsMax: this.idleMsMax }, 'idle stream ended');
        endIdle(deadlineExceeded(`the ${this.options.method} stream sent and took nothing for ${seconds} s, the most a stream may stay idle: it was ended to free what it held; open a new one`));
        const grace = setTimeout(() => {
          if (!released) resetStream(call, this.options.log);
        }, statusGraceMs);
        grace.unref();
      },
      Math.max(10, Math.min(1_000, Math.floor(this.idleMsMax / 4))),
    );
    timer.unref();
    call.on('data', touch);
    for (const event of ['close', 'cancelled', 'finish']) call.once(event, release);
    // The caller took a message: grpc-js calls a write's callback once the message is handed to HTTP/2.
    const writable = call as unknown as { write?: (...args: unknown[]) => boolean };
    const write = writable.write;
    if (typeof write === 'function') {
      writable.write = (chunk: unknown, ...rest: unknown[]) => {
        const callback = rest.find((argument) => typeof argument === 'function') as ((error?: Error | null) => void) | undefined;
        return write.call(call, chunk, (error?: Error | null) => {
          touch();
          callback?.(error);
        });
      };
    }
    return { touch, release };
  }
}
