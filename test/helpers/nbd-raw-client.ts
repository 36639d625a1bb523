// A hand-driven NBD client on a raw socket, for tests that send what real
// clients never would: byte by byte as the protocol
// (github.com/NetworkBlockDevice/nbd doc/proto.md) lays the messages out.
import net from 'node:net';
import { ConnectionClosedError, SocketReader } from '../../daemons/agent/socket-reader';

const MiB = 1024 * 1024;
export const IHAVEOPT = 0x49484156454f5054n;
export const REPLY_MAGIC = 0x3e889045565a9n;
export const ERR = (n: number) => 0x8000_0000 + n;
export const NBD = { EPERM: 1, EINVAL: 22, ENOSPC: 28 };
export const CMD = { read: 0, write: 1, disc: 2, flush: 3, trim: 4, writeZeroes: 6 };

/** A hand-driven NBD client on a raw socket. */
export class RawClient {
  readonly reader: SocketReader;
  private handleCount = 0;
  private constructor(readonly socket: net.Socket) {
    this.reader = new SocketReader(socket, 64 * MiB);
  }

  static async connect(socketPath: string): Promise<RawClient> {
    const socket = net.connect({ path: socketPath });
    socket.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => (socket.once('connect', resolve), socket.once('error', reject)));
    return new RawClient(socket);
  }

  /** Reads the greeting and sends client flags. */
  async hello(flags = 1): Promise<{ magic: string; handshakeFlags: number }> {
    const greeting = await this.reader.read(18);
    const result = { magic: greeting.subarray(0, 8).toString('latin1') + ':' + greeting.readBigUInt64BE(8).toString(16), handshakeFlags: greeting.readUInt16BE(16) };
    const out = Buffer.alloc(4);
    out.writeUInt32BE(flags);
    this.socket.write(out);
    return result;
  }

  sendOption(code: number, data: Buffer = Buffer.alloc(0), magic = IHAVEOPT): void {
    const header = Buffer.alloc(16);
    header.writeBigUInt64BE(magic, 0);
    header.writeUInt32BE(code, 8);
    header.writeUInt32BE(data.length, 12);
    this.socket.write(Buffer.concat([header, data]));
  }

  async optionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const header = await this.reader.read(20);
    if (header.readBigUInt64BE(0) !== REPLY_MAGIC) throw new Error('bad option reply magic');
    const data = Buffer.from(await this.reader.read(header.readUInt32BE(16)));
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data };
  }

  /** NBD_OPT_GO (7) of `name`; the replies up to the final one. */
  async go(name: string, code = 7): Promise<{ type: number; data: Buffer }[]> {
    const nameBytes = Buffer.from(name);
    const data = Buffer.alloc(4 + nameBytes.length + 2 + 2);
    data.writeUInt32BE(nameBytes.length, 0);
    nameBytes.copy(data, 4);
    data.writeUInt16BE(1, 4 + nameBytes.length);
    data.writeUInt16BE(3, 6 + nameBytes.length); // NBD_INFO_BLOCK_SIZE
    this.sendOption(code, data);
    const replies = [];
    for (;;) {
      const reply = await this.optionReply();
      replies.push(reply);
      if (reply.type !== 3) return replies;
    }
  }

  /** Sends a request; returns its handle. */
  request(type: number, offset: bigint | number, length: number, options: { flags?: number; payload?: Buffer; magic?: number } = {}): bigint {
    const handle = BigInt(++this.handleCount);
    const header = Buffer.alloc(28);
    header.writeUInt32BE(options.magic ?? 0x25609513, 0);
    header.writeUInt16BE(options.flags ?? 0, 4);
    header.writeUInt16BE(type, 6);
    header.writeBigUInt64BE(handle, 8);
    header.writeBigUInt64BE(BigInt(offset), 16);
    header.writeUInt32BE(length, 24);
    this.socket.write(options.payload ? Buffer.concat([header, options.payload]) : header);
    return handle;
  }

  /** A simple reply; `dataBytes` follow it when the request was a successful read. */
  async reply(dataBytes = 0): Promise<{ error: number; handle: bigint; data: Buffer }> {
    const header = await this.reader.read(16);
    if (header.readUInt32BE(0) !== 0x67446698) throw new Error(`bad reply magic 0x${header.readUInt32BE(0).toString(16)}`);
    const error = header.readUInt32BE(4);
    const handle = header.readBigUInt64BE(8);
    const data = error === 0 && dataBytes ? Buffer.from(await this.reader.read(dataBytes)) : Buffer.alloc(0);
    return { error, handle, data };
  }

  /** Resolves true when the server closes the connection (within the test's timeout). */
  async closedByServer(): Promise<boolean> {
    try {
      for (;;) await this.reader.read(1);
    } catch (error) {
      return error instanceof ConnectionClosedError;
    }
  }

  destroy(): void {
    this.socket.destroy();
  }
}

