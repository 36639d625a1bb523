// One NBD client of the agent (docs/nbd.md): the fixed newstyle handshake
// (options, STARTTLS, the export chosen), then the transmission phase, each
// request checked and answered with a simple reply. A client that breaks the
// framing is disconnected; nothing it sends can stop the agent. The listener
// is nbd-server.ts.

import net from 'node:net';
import tls from 'node:tls';
import { DrplaneError, ErrorCode } from '../../shared/errors';
import {
  nbdConnectionBytesInFlightMax,
  nbdHandshakeTimeoutMs,
  nbdOptionBytesMax,
  nbdOptionsPerConnectionMax,
  nbdPreferredBlockBytes,
  nbdRequestBytesMax,
  nbdRequestsInFlightMax,
  pathLengthMax,
} from '../../shared/limits';
import type { Logger } from '../../shared/log';
import type { NbdMetrics } from './metrics';
import type { NbdExports, ExportInfo, OpenExport } from './nbd-exports';
import {
  clientFlags,
  command,
  commandFlags,
  decodeRequest,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeOptionReply,
  encodeServerReply,
  greeting,
  info,
  nbdError,
  type NbdError,
  type NbdRequest,
  option,
  optionHeaderBytes,
  optionMagic,
  optionReply,
  requestHeaderBytes,
  simpleReplyHeaderBytes,
  transmissionFlags,
  writeSimpleReplyHeader,
} from './nbd-protocol';
import { ConnectionClosedError, SocketReader } from './socket-reader';

const transmissionFlagsBase =
  transmissionFlags.hasFlags | transmissionFlags.sendFlush | transmissionFlags.sendFua | transmissionFlags.sendTrim | transmissionFlags.sendWriteZeroes |
  // Every connection writes through the disk's one queue and one descriptor, and a FLUSH syncs the file: a flush
  // on one connection covers the writes answered on every other.
  transmissionFlags.canMultiConn;

/** Command flags each command accepts (FUA on every command, as the protocol asks once NBD_FLAG_SEND_FUA is set). */
const allowedFlags: Record<number, number> = {
  [command.read]: commandFlags.fua,
  [command.write]: commandFlags.fua,
  [command.flush]: commandFlags.fua,
  [command.trim]: commandFlags.fua,
  [command.writeZeroes]: commandFlags.fua | commandFlags.noHole,
  [command.disc]: commandFlags.fua,
};

/** A client broke the protocol in a way no reply can express: its connection is closed. */
class ProtocolViolation extends Error {}

/** One client: the handshake, then its requests until it disconnects. */
export class NbdConnection {
  private reader: SocketReader;
  /** Set once NBD_OPT_STARTTLS succeeded: the connection runs over TLS from then on. */
  private secure = false;
  private readonly log: Logger;
  private open: OpenExport | undefined;
  private noZeroes = false;
  /** Requests admitted and not answered (their reply not yet taken by the socket), and their payload bytes. */
  private requestsInFlight = 0;
  private bytesInFlight = 0;
  private roomWaiter: (() => void) | undefined;
  private idleWaiter: (() => void) | undefined;
  private stopping = false;
  /** What waits in the transmission loop for a read or for room, woken with undefined when the agent stops. */
  private readonly stopListeners = new Set<() => void>();

  constructor(
    readonly id: number,
    private socket: net.Socket,
    private readonly exports: NbdExports,
    log: Logger,
    /** The TLS the server offers, and whether this connection must use it before anything else. */
    private readonly security?: { context: tls.SecureContext; required: boolean },
    private readonly metrics?: NbdMetrics,
  ) {
    this.log = log.child({ nbdConnection: id });
    // A header plus the largest payload is buffered at most (read() gathers larger ones piece by piece).
    this.reader = new SocketReader(socket, 4 * 1024 * 1024);
    // Errors are seen by the reader (it rejects the pending read); this keeps them from being unhandled.
    socket.on('error', () => undefined);
  }

  async run(): Promise<void> {
    const timer = setTimeout(() => {
      this.log.warn({ timeoutMs: nbdHandshakeTimeoutMs }, 'NBD client chose no export in time: disconnected');
      this.socket.destroy();
    }, nbdHandshakeTimeoutMs);
    try {
      const chosen = await this.handshake();
      clearTimeout(timer);
      if (!chosen) return;
      await this.transmission();
    } catch (error) {
      if (error instanceof ConnectionClosedError) this.log.debug({ reason: error.message }, 'NBD client gone');
      else if (error instanceof ProtocolViolation) this.log.warn({ reason: error.message }, 'NBD client broke the protocol: disconnected');
      else this.log.error({ err: error }, 'NBD connection failed');
    } finally {
      clearTimeout(timer);
      // Admitted requests finish before the export's descriptor closes (their replies are dropped if the socket is gone).
      await this.idle();
      await this.open?.close();
      this.socket.destroy();
    }
  }

  private send(data: Buffer): Promise<void> {
    return new Promise((resolve) => {
      if (this.socket.destroyed) return resolve();
      this.socket.write(data, () => resolve());
    });
  }

  // ---- Handshake

  /** The option haggling; resolves true once an export is chosen (transmission follows), false when the client left. */
  private async handshake(): Promise<boolean> {
    await this.send(greeting());
    const flags = (await this.reader.read(4)).readUInt32BE(0);
    if (flags & ~(clientFlags.fixedNewstyle | clientFlags.noZeroes)) throw new ProtocolViolation(`unknown client flags 0x${flags.toString(16)}`);
    this.noZeroes = (flags & clientFlags.noZeroes) !== 0;
    for (let count = 0; ; count++) {
      if (count >= nbdOptionsPerConnectionMax) throw new ProtocolViolation(`more than ${nbdOptionsPerConnectionMax} options before choosing an export`);
      const header = await this.reader.read(optionHeaderBytes);
      if (header.readBigUInt64BE(0) !== optionMagic) throw new ProtocolViolation('an option without the IHAVEOPT magic');
      const code = header.readUInt32BE(8);
      const length = header.readUInt32BE(12);
      if (length > nbdOptionBytesMax) throw new ProtocolViolation(`option ${code} carries ${length} bytes, more than ${nbdOptionBytesMax}`);
      const data = await this.reader.read(length);
      if (code === option.startTls) {
        await this.startTls(code, data);
        continue;
      }
      if (this.security?.required && !this.secure) {
        // FORCEDTLS: nothing is told, and no export chosen, before TLS.
        if (code === option.exportName) throw new ProtocolViolation('NBD_OPT_EXPORT_NAME before NBD_OPT_STARTTLS on a listener that requires TLS');
        if (code !== option.abort) {
          await this.replyError(code, optionReply.errTlsReqd, 'this NBD server requires TLS: send NBD_OPT_STARTTLS first (a client certificate signed by the deployment CA)');
          continue;
        }
      }
      switch (code) {
        case option.exportName: {
          // No error can be answered to NBD_OPT_EXPORT_NAME: an export that does not exist or cannot be opened closes the connection.
          const chosen = await this.choose(data.toString('utf8')).catch((error: Error) => error.message);
          if (typeof chosen === 'string') throw new ProtocolViolation(`NBD_OPT_EXPORT_NAME: ${chosen}`);
          const opened = await this.openExport(chosen);
          if (typeof opened === 'string') throw new ProtocolViolation(`NBD_OPT_EXPORT_NAME: ${opened}`);
          await this.send(encodeExportNameReply(chosen.diskBytes, this.flagsOf(chosen), this.noZeroes));
          return true;
        }
        case option.abort:
          await this.send(encodeOptionReply(code, optionReply.ack));
          return false;
        case option.list:
          if (length !== 0) {
            await this.replyError(code, optionReply.errInvalid, 'NBD_OPT_LIST carries no data');
            break;
          }
          for (const name of this.exports.names) await this.send(encodeOptionReply(code, optionReply.server, encodeServerReply(name, '')));
          await this.send(encodeOptionReply(code, optionReply.ack));
          break;
        case option.info:
        case option.go:
          if (await this.infoOrGo(code, data)) return true;
          break;
        default:
          // NBD_OPT_STRUCTURED_REPLY, meta contexts, extended headers...: simple replies only.
          await this.replyError(code, optionReply.errUnsup, `option ${code} is not supported`);
      }
    }
  }

  /**
   * NBD_OPT_STARTTLS: ACK, then TLS on the same connection, the client's
   * certificate checked against the deployment CA (mutual TLS, as gRPC).
   */
  private async startTls(code: number, data: Buffer): Promise<void> {
    if (!this.security) return this.replyError(code, optionReply.errPolicy, 'TLS is not configured on this agent: use its Unix socket or loopback');
    if (this.secure) return this.replyError(code, optionReply.errInvalid, 'TLS is already running');
    if (data.length !== 0) return this.replyError(code, optionReply.errInvalid, 'NBD_OPT_STARTTLS carries no data');
    // The client sends nothing until it has the ACK: anything read past the option would be plaintext it must not send.
    if (this.reader.detach() !== 0) throw new ProtocolViolation('data after NBD_OPT_STARTTLS before its answer');
    await this.send(encodeOptionReply(code, optionReply.ack));
    const secure = new tls.TLSSocket(this.socket, { isServer: true, secureContext: this.security.context, requestCert: true, rejectUnauthorized: true });
    const plain = this.socket;
    this.socket = secure;
    this.reader = new SocketReader(secure, 4 * 1024 * 1024);
    secure.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      secure.once('secure', () => resolve());
      secure.once('error', (error) => reject(new ProtocolViolation(`TLS handshake failed: ${error.message}`)));
      secure.once('close', () => reject(new ConnectionClosedError('the connection closed during the TLS handshake')));
    });
    plain.on('error', () => undefined);
    this.secure = true;
    const peer = secure.getPeerCertificate();
    this.log.info({ peer: peer?.subject?.CN, protocol: secure.getProtocol() }, 'NBD client started TLS');
  }

  private replyError(code: number, type: number, message: string): Promise<void> {
    return this.send(encodeOptionReply(code, type, Buffer.from(message.slice(0, 1024), 'utf8')));
  }

  /** An error reply to NBD_OPT_INFO or NBD_OPT_GO: the handshake goes on. */
  private async refuseOption(code: number, type: number, message: string): Promise<false> {
    await this.replyError(code, type, message);
    return false;
  }

  /** NBD_OPT_INFO and NBD_OPT_GO: checks the data, describes the export; true when a GO succeeded (transmission follows). */
  private async infoOrGo(code: number, data: Buffer): Promise<boolean> {
    if (data.length < 6) return this.refuseOption(code, optionReply.errInvalid, 'option data shorter than 6 bytes');
    const nameBytes = data.readUInt32BE(0);
    if (nameBytes > data.length - 6 || nameBytes > pathLengthMax) return this.refuseOption(code, optionReply.errInvalid, 'export name longer than the option');
    const requestCount = data.readUInt16BE(4 + nameBytes);
    if (data.length !== 4 + nameBytes + 2 + 2 * requestCount) return this.refuseOption(code, optionReply.errInvalid, 'option length does not match its information requests');
    const name = data.subarray(4, 4 + nameBytes).toString('utf8');
    const requests = new Set<number>();
    for (let index = 0; index < requestCount; index++) requests.add(data.readUInt16BE(4 + nameBytes + 2 + 2 * index));
    let chosen: ExportInfo | string;
    try {
      chosen = await this.choose(name);
    } catch (error) {
      return this.refuseOption(code, optionReply.errUnknown, (error as Error).message);
    }
    if (typeof chosen === 'string') return this.refuseOption(code, optionReply.errUnknown, chosen);
    if (code === option.go) {
      // Opened before the ACK: after it the client is in transmission and no error could be told.
      const opened = await this.openExport(chosen);
      if (typeof opened === 'string') return this.refuseOption(code, optionReply.errUnknown, opened);
    }
    await this.send(encodeOptionReply(code, optionReply.info, encodeInfoExport(chosen.diskBytes, this.flagsOf(chosen))));
    // Sent whether asked or not (the protocol allows it): any alignment works (read-modify-write), whole blocks are cheaper.
    await this.send(encodeOptionReply(code, optionReply.info, encodeInfoBlockSize(1, nbdPreferredBlockBytes, nbdRequestBytesMax)));
    if (requests.has(info.name)) await this.send(encodeOptionReply(code, optionReply.info, encodeInfoString(info.name, chosen.name)));
    if (requests.has(info.description)) await this.send(encodeOptionReply(code, optionReply.info, encodeInfoString(info.description, `drplane agent: ${chosen.path}`)));
    await this.send(encodeOptionReply(code, optionReply.ack));
    return code === option.go;
  }

  /** The export a name stands for, described now; a message (string) when there is none. */
  private async choose(name: string): Promise<ExportInfo | string> {
    const diskPath = this.exports.resolve(name);
    if (!diskPath) {
      const known = this.exports.names;
      return name === '' ? `no default export: this agent has ${known.length} disks (${known.join(', ')}); name one` : `no export ${JSON.stringify(name.slice(0, 256))}: exports are ${known.join(', ') || 'none'} (or an absolute path under a disk root)`;
    }
    return this.exports.describe(name, diskPath);
  }

  private flagsOf(exported: ExportInfo): number {
    return transmissionFlagsBase | (exported.readOnly ? transmissionFlags.readOnly : 0);
  }

  /** Opens the chosen export for this connection; a message (string) when it cannot be. */
  private async openExport(chosen: ExportInfo): Promise<OpenExport | string> {
    try {
      this.open = await this.exports.open(chosen);
    } catch (error) {
      return (error as Error).message;
    }
    this.log.info({ export: chosen.name, disk: chosen.path, diskBytes: chosen.diskBytes, readOnly: chosen.readOnly }, 'NBD client chose an export');
    return this.open;
  }

  // ---- Transmission

  private async transmission(): Promise<void> {
    const open = this.open!;
    for (;;) {
      await this.untilStopped(this.room());
      if (this.stopping) return;
      const header = await this.untilStopped(this.reader.read(requestHeaderBytes));
      if (!header || this.stopping) return;
      const request = decodeRequest(header);
      if (!request) throw new ProtocolViolation('a request without the NBD request magic');
      if (request.type === command.write) {
        const error = this.checkWrite(request, open);
        if (error !== nbdError.none) {
          // The payload follows the header whatever the answer: it is dropped as it arrives, never held.
          await this.reader.skip(request.length);
          this.reply(request, error);
          continue;
        }
        const data = await this.reader.read(request.length);
        this.admit(request, data.length, () => open.write(request.offset, data, (request.flags & commandFlags.fua) !== 0));
        continue;
      }
      if (request.type === command.disc) {
        // Soft disconnect: answer nothing, finish what was admitted (run() waits), close.
        this.log.debug('NBD client disconnected (NBD_CMD_DISC)');
        return;
      }
      this.dispatch(request, open);
    }
  }

  /** The error of a WRITE request before its payload is read, or none. */
  private checkWrite(request: NbdRequest, open: OpenExport): NbdError {
    if (request.flags & ~allowedFlags[command.write]!) return nbdError.inval;
    if (request.length > nbdRequestBytesMax || request.length === 0) return nbdError.inval;
    if (open.info.readOnly || open.isShutDown) return nbdError.perm;
    if (request.offset + request.length > open.info.diskBytes) return nbdError.nospc;
    return nbdError.none;
  }

  private dispatch(request: NbdRequest, open: OpenExport): void {
    const allowed = allowedFlags[request.type];
    if (allowed === undefined || request.flags & ~allowed) return this.reply(request, nbdError.inval);
    const fua = (request.flags & commandFlags.fua) !== 0;
    const end = request.offset + request.length;
    switch (request.type) {
      case command.read: {
        if (request.length === 0 || request.length > nbdRequestBytesMax || end > open.info.diskBytes) return this.reply(request, nbdError.inval);
        // One buffer per read: the reply header and the data, sent with one write.
        const reply = Buffer.allocUnsafe(simpleReplyHeaderBytes + request.length);
        this.admit(request, request.length, () => open.read(request.offset, reply, simpleReplyHeaderBytes, request.length), reply);
        return;
      }
      case command.flush:
        this.admit(request, 0, () => open.flush());
        return;
      case command.trim:
      case command.writeZeroes: {
        const writeZeroes = request.type === command.writeZeroes;
        if (request.length === 0) return this.reply(request, nbdError.inval);
        if (open.info.readOnly || open.isShutDown) return this.reply(request, nbdError.perm);
        // Past the end: TRIM is EINVAL, WRITE_ZEROES a write past the end (ENOSPC), as the protocol asks.
        if (end > open.info.diskBytes) return this.reply(request, writeZeroes ? nbdError.nospc : nbdError.inval);
        this.admit(request, 0, () => open.zero(request.offset, request.length, fua));
        return;
      }
      default:
        this.reply(request, nbdError.inval);
    }
  }

  /** Runs an admitted request and answers it; `reply` is a read's buffer whose first 16 bytes take the header. */
  private admit(request: NbdRequest, bytes: number, work: () => Promise<void>, reply?: Buffer): void {
    this.requestsInFlight++;
    this.bytesInFlight += bytes;
    work().then(
      () => this.answer(request, nbdError.none, bytes, reply),
      (error: unknown) => {
        const code = errorCodeOf(error, this.open?.isShutDown ?? false);
        const fields = { reason: (error as Error).message, type: request.type, offset: request.offset, length: request.length, nbdError: code };
        if (code === nbdError.io) this.log.error({ ...fields, err: error }, 'NBD request failed');
        // A client writing on to a disk shut down for failover would fill the log: its refusals are logged at debug.
        else if (code === nbdError.perm) this.log.debug(fields, 'NBD request refused');
        else this.log.warn(fields, 'NBD request refused');
        this.answer(request, code, bytes, undefined);
      },
    );
  }

  private reply(request: NbdRequest, error: NbdError): void {
    this.requestsInFlight++;
    this.answer(request, error, 0, undefined);
  }

  /** Sends the reply; the request leaves the in-flight count once the socket has taken it. */
  private answer(request: NbdRequest, error: NbdError, bytes: number, reply: Buffer | undefined): void {
    if (this.metrics) {
      const kind = commandNames[request.type] ?? 'other';
      this.metrics.requests.inc({ kind, code: errorNames[error] ?? `error_${error}` });
      if (error === nbdError.none && (kind === 'read' || kind === 'write')) this.metrics.bytes.inc({ kind }, request.length);
    }
    const out = error === nbdError.none && reply ? reply : Buffer.allocUnsafe(simpleReplyHeaderBytes);
    writeSimpleReplyHeader(out, error, request.handle);
    void this.send(out).then(() => {
      this.requestsInFlight--;
      this.bytesInFlight -= bytes;
      const roomWaiter = this.roomWaiter;
      if (roomWaiter && this.hasRoom()) {
        this.roomWaiter = undefined;
        roomWaiter();
      }
      if (this.requestsInFlight === 0 && this.idleWaiter) {
        const idleWaiter = this.idleWaiter;
        this.idleWaiter = undefined;
        idleWaiter();
      }
    });
  }

  /** Checked before each request is read, so a connection holds at most the bound plus one request's payload. */
  private hasRoom(): boolean {
    return this.requestsInFlight < nbdRequestsInFlightMax && this.bytesInFlight < nbdConnectionBytesInFlightMax;
  }

  /** Resolves when another request may be admitted (a client that does not read its replies is held here). */
  /**
   * `promise`, or undefined as soon as the agent stops. Not Promise.race with one long-lived "stopped" promise: every
   * race adds a reaction to it that lives as long as it does, and each held its request's header, a view of the
   * socket's 64 KiB chunk (a 64 KiB write at queue depth 32 took the agent past 1.5 GiB in seconds).
   */
  private untilStopped<T>(promise: Promise<T>): Promise<T | undefined> {
    if (this.stopping) return Promise.resolve(undefined);
    return new Promise<T | undefined>((resolve, reject) => {
      const onStop = () => resolve(undefined);
      this.stopListeners.add(onStop);
      promise.then(
        (value) => (this.stopListeners.delete(onStop), resolve(value)),
        (error: unknown) => (this.stopListeners.delete(onStop), reject(error)),
      );
    });
  }

  private room(): Promise<void> {
    if (this.hasRoom()) return Promise.resolve();
    return new Promise((resolve) => (this.roomWaiter = resolve));
  }

  /** Resolves when every admitted request is answered (or its socket is gone). */
  private idle(): Promise<void> {
    if (this.requestsInFlight === 0) return Promise.resolve();
    return new Promise((resolve) => (this.idleWaiter = resolve));
  }

  /** The agent is stopping: read no more requests, answer the admitted ones, close. */
  async shutdown(): Promise<void> {
    this.stopping = true;
    for (const wake of [...this.stopListeners]) wake();
    this.stopListeners.clear();
    if (!this.open) this.socket.destroy();
    await this.idle();
    this.socket.end();
  }
}

/** Metric labels: bounded sets (an unknown command is `other`). */
const commandNames: Record<number, string> = { [command.read]: 'read', [command.write]: 'write', [command.flush]: 'flush', [command.trim]: 'trim', [command.writeZeroes]: 'write_zeroes' };
const errorNames: Record<number, string> = Object.fromEntries(Object.entries(nbdError).map(([name, value]) => [value, value === nbdError.none ? 'ok' : `e${name}`]));

/** The NBD error of a failed request: the protocol's few codes, chosen from the domain error. */
function errorCodeOf(error: unknown, shutDown: boolean): NbdError {
  if (shutDown) return nbdError.perm;
  if (error instanceof DrplaneError) {
    switch (error.code) {
      case ErrorCode.LimitExceeded:
        return nbdError.nospc;
      case ErrorCode.InvalidArgument:
      case ErrorCode.OutOfRange:
        return nbdError.inval;
      case ErrorCode.PermissionDenied:
        return nbdError.perm;
      default:
        return nbdError.io;
    }
  }
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') return nbdError.nospc;
  return nbdError.io;
}
