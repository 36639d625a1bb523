// The agent's NBD server (docs/nbd.md): QEMU/KVM, the Linux kernel's
// nbd-client and the standard tools (qemu-img, nbdcopy, nbdinfo, nbdfuse)
// read and write the protected disks through it, so every write of a real
// machine is captured in order (nbd-exports.ts). It speaks the fixed newstyle
// handshake (NBD_OPT_GO, NBD_OPT_INFO, NBD_OPT_LIST, NBD_OPT_ABORT, and
// NBD_OPT_EXPORT_NAME for old clients) and the transmission phase with simple
// replies. Every request is checked; a request the protocol lets the server
// refuse gets its error code, and a client that breaks the framing (bad
// magic, an option too long to skip) is disconnected. Nothing a client sends
// can stop the agent: every connection's failure ends that connection only.
import fs from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { DrplaneError, ErrorCode } from '../../shared/errors';
import { nbdConnectionsMax } from '../../shared/limits';
import type { Logger } from '../../shared/log';
import type { NbdMetrics } from './metrics';
import type { NbdExports } from './nbd-exports';
import { NbdConnection } from './nbd-connection';

/** Where the server listens: a Unix socket (file mode 0600) or TCP. */
export type NbdAddress = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

/** Parses `unix:PATH` or `HOST:PORT` (`[IPv6]:PORT`); a DrplaneError naming the key otherwise. */
export function parseNbdAddress(text: string): NbdAddress {
  if (text.startsWith('unix:')) {
    const socketPath = text.slice('unix:'.length);
    if (!socketPath.startsWith('/')) throw new DrplaneError(ErrorCode.InvalidArgument, `config key nbdListen: a Unix socket path must be absolute, got ${JSON.stringify(socketPath)}`);
    // sun_path holds 108 bytes on Linux, the terminating NUL included.
    if (Buffer.byteLength(socketPath) > 107) throw new DrplaneError(ErrorCode.InvalidArgument, `config key nbdListen: a Unix socket path is at most 107 bytes, got ${Buffer.byteLength(socketPath)}`);
    return { kind: 'unix', path: socketPath };
  }
  const match = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(text);
  const port = match ? Number(match[2]) : NaN;
  if (!match || port > 65535) throw new DrplaneError(ErrorCode.InvalidArgument, `config key nbdListen: must be unix:/PATH or HOST:PORT, got ${JSON.stringify(text)}`);
  return { kind: 'tcp', host: match[1]!.replace(/^\[|\]$/g, ''), port };
}

/** Plaintext NBD carries a disk's bytes: on TCP it stays on loopback until the server speaks NBD_OPT_STARTTLS. */
function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export interface NbdServerOptions {
  address: NbdAddress;
  exports: NbdExports;
  log: Logger;
  /**
   * The agent's certificates (its `tls` configuration). With them the server
   * offers NBD_OPT_STARTTLS, and on TCP requires it (FORCEDTLS): every option
   * but STARTTLS and ABORT is answered NBD_REP_ERR_TLS_REQD until the client
   * presents a certificate the deployment CA signed.
   */
  tls?: { ca: Buffer; cert: Buffer; key: Buffer };
  metrics?: NbdMetrics;
  /** A group (name or number) that may use the Unix socket too: mode 0660 and that group, instead of 0600. */
  socketGroup?: string;
}

/** A group's id from its name (/etc/group) or its number; a DrplaneError naming the key when there is none. */
export function groupId(group: string): number {
  if (/^\d+$/.test(group)) return Number(group);
  let text = '';
  try {
    text = fs.readFileSync('/etc/group', 'utf8');
  } catch (error) {
    throw new DrplaneError(ErrorCode.InvalidArgument, `config key nbdSocketGroup: cannot read /etc/group to find ${group} (${(error as Error).message}): give its number`);
  }
  const line = text.split('\n').find((entry) => entry.split(':')[0] === group);
  if (!line) throw new DrplaneError(ErrorCode.InvalidArgument, `config key nbdSocketGroup: no group ${group} in /etc/group`);
  return Number(line.split(':')[2]);
}

export class NbdServer {
  private readonly server: net.Server;
  private readonly connections = new Set<NbdConnection>();
  private nextConnectionId = 1;
  private closing = false;
  /** Where it listens, once it does: `unix:PATH` or `HOST:PORT` (the bound port). */
  address = '';

  constructor(private readonly options: NbdServerOptions) {
    this.server = net.createServer({ allowHalfOpen: false, noDelay: true }, (socket) => this.accept(socket));
    // A failing accept (EMFILE) is logged; the listener goes on.
    this.server.on('error', (error) => options.log.error({ err: error }, 'NBD listener error'));
  }

  /** Binds the address; a DrplaneError naming nbdListen when it cannot. */
  async listen(): Promise<void> {
    const { address } = this.options;
    if (address.kind === 'tcp' && !isLoopback(address.host) && !this.options.tls) {
      throw new DrplaneError(ErrorCode.InvalidArgument, `config key nbdListen: NBD over TCP without TLS is plaintext (disk contents and writes), so it listens only on loopback (127.0.0.1, ::1); configure tls (the agent's certificates, then clients must use NBD_OPT_STARTTLS) or use unix:/PATH, got ${address.host}`);
    }
    if (address.kind === 'unix') await removeStaleSocket(address.path);
    // Checked before binding: a group that does not exist must not leave a socket behind.
    if (this.options.socketGroup !== undefined) groupId(this.options.socketGroup);
    await new Promise<void>((resolve, reject) => {
      const failed = (error: NodeJS.ErrnoException) => reject(new DrplaneError(ErrorCode.InvalidArgument, `config key nbdListen: cannot listen on ${describeAddress(address)}: ${error.code ?? error.message}`));
      this.server.once('error', failed);
      if (address.kind === 'unix') {
        // The socket file is created by bind, inside listen(), in this tick: a umask of 0177 makes it 0600 from
        // its first moment (a chmod afterwards would leave a window where anyone could connect).
        const previous = process.umask(0o177);
        try {
          this.server.listen({ path: address.path, backlog: 64 }, () => (this.server.off('error', failed), resolve()));
        } finally {
          process.umask(previous);
        }
      } else {
        this.server.listen({ host: address.host, port: address.port, backlog: 64, exclusive: true }, () => (this.server.off('error', failed), resolve()));
      }
    });
    if (address.kind === 'unix') {
      if (this.options.socketGroup !== undefined) {
        // The group is given access only once the socket is its: until then the file is 0600.
        fs.chownSync(address.path, -1, groupId(this.options.socketGroup));
        fs.chmodSync(address.path, 0o660);
      } else {
        fs.chmodSync(address.path, 0o600);
      }
      this.address = `unix:${address.path}`;
    } else {
      const bound = this.server.address() as net.AddressInfo;
      this.address = `${bound.family === 'IPv6' ? `[${bound.address}]` : bound.address}:${bound.port}`;
    }
    this.options.log.info({ nbdAddress: this.address, exports: this.options.exports.names, tls: this.tlsMode }, 'NBD server listening');
  }

  /** required: TCP with certificates (FORCEDTLS); offered: a Unix socket with certificates; off: no certificates. */
  private get tlsMode(): 'required' | 'offered' | 'off' {
    if (!this.options.tls) return 'off';
    return this.options.address.kind === 'tcp' ? 'required' : 'offered';
  }

  private secureContext: tls.SecureContext | undefined;

  private accept(socket: net.Socket): void {
    if (this.closing || this.connections.size >= nbdConnectionsMax) {
      this.options.log.warn({ connections: this.connections.size, connectionsMax: nbdConnectionsMax, closing: this.closing }, 'NBD connection refused');
      socket.destroy();
      return;
    }
    if (this.options.tls && !this.secureContext) this.secureContext = tls.createSecureContext({ ...this.options.tls, minVersion: 'TLSv1.2' });
    const security = this.secureContext ? { context: this.secureContext, required: this.tlsMode === 'required' } : undefined;
    const connection = new NbdConnection(this.nextConnectionId++, socket, this.options.exports, this.options.log, security, this.options.metrics);
    this.connections.add(connection);
    this.options.metrics?.connections.set(this.connections.size);
    void connection.run().finally(() => {
      this.connections.delete(connection);
      this.options.metrics?.connections.set(this.connections.size);
    });
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * Stops listening; each connection stops reading requests, answers those it
   * admitted (their writes are captured) and is closed. Called before the
   * agent closes its disks.
   */
  close(): Promise<void> {
    this.closed ??= this.closeOnce();
    return this.closed;
  }

  private closed: Promise<void> | undefined;

  private async closeOnce(): Promise<void> {
    this.closing = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    await Promise.all([...this.connections].map((connection) => connection.shutdown()));
    await closed;
    if (this.options.address.kind === 'unix') fs.rmSync(this.options.address.path, { force: true });
  }
}

function describeAddress(address: NbdAddress): string {
  return address.kind === 'unix' ? `unix:${address.path}` : `${address.host}:${address.port}`;
}

/**
 * A socket file left by an agent that was killed: removed when nothing
 * answers on it. One that answers belongs to a running server: left alone
 * (listen then fails with EADDRINUSE). Anything else at the path is refused.
 */
async function removeStaleSocket(socketPath: string): Promise<void> {
  let stats: fs.Stats;
  try {
    stats = fs.lstatSync(socketPath);
  } catch {
    return;
  }
  if (!stats.isSocket()) throw new DrplaneError(ErrorCode.InvalidArgument, `config key nbdListen: ${socketPath} exists and is not a socket; remove it or choose another path`);
  const answered = await new Promise<boolean>((resolve) => {
    const probe = net.connect({ path: socketPath });
    probe.once('connect', () => (probe.destroy(), resolve(true)));
    probe.once('error', () => resolve(false));
  });
  if (!answered) fs.rmSync(socketPath, { force: true });
}
