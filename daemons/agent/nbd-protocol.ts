// The NBD protocol's numbers and messages, as the NBD project publishes them
// (doc/proto.md of github.com/NetworkBlockDevice/nbd): the fixed newstyle
// handshake, its options and replies, and the transmission phase's requests and
// simple replies. Only what the agent's server speaks is here.

export const nbdMagic = Buffer.from('NBDMAGIC', 'latin1');
/** 'IHAVEOPT': the newstyle magic, sent by the server after nbdMagic and by the client before each option. */
export const optionMagic = 0x49484156454f5054n;
/** Before each option reply. */
export const optionReplyMagic = 0x3e889045565a9n;
export const requestMagic = 0x25609513;
export const simpleReplyMagic = 0x67446698;

/** Handshake flags (server) and client flags. */
export const handshakeFlags = { fixedNewstyle: 1 << 0, noZeroes: 1 << 1 } as const;
export const clientFlags = { fixedNewstyle: 1 << 0, noZeroes: 1 << 1 } as const;

/** Transmission flags (16 bits, per export). */
export const transmissionFlags = {
  hasFlags: 1 << 0,
  readOnly: 1 << 1,
  sendFlush: 1 << 2,
  sendFua: 1 << 3,
  rotational: 1 << 4,
  sendTrim: 1 << 5,
  sendWriteZeroes: 1 << 6,
  sendDf: 1 << 7,
  canMultiConn: 1 << 8,
} as const;

export const option = {
  exportName: 1,
  abort: 2,
  list: 3,
  startTls: 5,
  info: 6,
  go: 7,
  structuredReply: 8,
} as const;

export const optionReply = {
  ack: 1,
  server: 2,
  info: 3,
  errUnsup: 0x8000_0001,
  errPolicy: 0x8000_0002,
  errInvalid: 0x8000_0003,
  errTlsReqd: 0x8000_0005,
  errUnknown: 0x8000_0006,
  errShutdown: 0x8000_0007,
} as const;

export const info = { export: 0, name: 1, description: 2, blockSize: 3 } as const;

export const command = {
  read: 0,
  write: 1,
  disc: 2,
  flush: 3,
  trim: 4,
  cache: 5,
  writeZeroes: 6,
  blockStatus: 7,
} as const;

export const commandFlags = { fua: 1 << 0, noHole: 1 << 1, df: 1 << 2, reqOne: 1 << 3, fastZero: 1 << 4 } as const;

/** The error values of a reply (the protocol's own numbers, not this host's errno). */
export const nbdError = {
  none: 0,
  perm: 1,
  io: 5,
  nomem: 12,
  inval: 22,
  nospc: 28,
  overflow: 75,
  notsup: 95,
  shutdown: 108,
} as const;
export type NbdError = (typeof nbdError)[keyof typeof nbdError];

/** Bytes of a request header (magic, flags, type, handle, offset, length) and of a simple reply header. */
export const requestHeaderBytes = 28;
export const simpleReplyHeaderBytes = 16;
/** Option header from the client: magic, option, length. */
export const optionHeaderBytes = 16;

/** The server's first message: NBDMAGIC, IHAVEOPT, handshake flags. */
export function greeting(): Buffer {
  const out = Buffer.alloc(18);
  nbdMagic.copy(out, 0);
  out.writeBigUInt64BE(optionMagic, 8);
  out.writeUInt16BE(handshakeFlags.fixedNewstyle | handshakeFlags.noZeroes, 16);
  return out;
}

/** An option reply: magic, the option it answers, reply type, length, data. */
export function encodeOptionReply(optionCode: number, replyType: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const out = Buffer.allocUnsafe(20 + data.length);
  out.writeBigUInt64BE(optionReplyMagic, 0);
  out.writeUInt32BE(optionCode >>> 0, 8);
  out.writeUInt32BE(replyType >>> 0, 12);
  out.writeUInt32BE(data.length, 16);
  data.copy(out, 20);
  return out;
}

/** NBD_REP_SERVER data: the export's name (length-prefixed) and a description for people. */
export function encodeServerReply(name: string, description: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const descriptionBytes = Buffer.from(description, 'utf8');
  const out = Buffer.allocUnsafe(4 + nameBytes.length + descriptionBytes.length);
  out.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(out, 4);
  descriptionBytes.copy(out, 4 + nameBytes.length);
  return out;
}

export function encodeInfoExport(sizeBytes: number, flags: number): Buffer {
  const out = Buffer.allocUnsafe(12);
  out.writeUInt16BE(info.export, 0);
  out.writeBigUInt64BE(BigInt(sizeBytes), 2);
  out.writeUInt16BE(flags, 10);
  return out;
}

export function encodeInfoBlockSize(minimumBytes: number, preferredBytes: number, payloadBytesMax: number): Buffer {
  const out = Buffer.allocUnsafe(14);
  out.writeUInt16BE(info.blockSize, 0);
  out.writeUInt32BE(minimumBytes, 2);
  out.writeUInt32BE(preferredBytes, 6);
  out.writeUInt32BE(payloadBytesMax, 10);
  return out;
}

export function encodeInfoString(type: number, text: string): Buffer {
  const textBytes = Buffer.from(text, 'utf8');
  const out = Buffer.allocUnsafe(2 + textBytes.length);
  out.writeUInt16BE(type, 0);
  textBytes.copy(out, 2);
  return out;
}

/** The answer to NBD_OPT_EXPORT_NAME: size, transmission flags, and 124 zero bytes unless the client asked for none. */
export function encodeExportNameReply(sizeBytes: number, flags: number, noZeroes: boolean): Buffer {
  const out = Buffer.alloc(10 + (noZeroes ? 0 : 124));
  out.writeBigUInt64BE(BigInt(sizeBytes), 0);
  out.writeUInt16BE(flags, 8);
  return out;
}

export interface NbdRequest {
  flags: number;
  type: number;
  /** The client's 8-byte handle, copied into the reply as it came. */
  handle: Buffer;
  /** The offset; may pass Number.MAX_SAFE_INTEGER for a hostile client (then it is past any export's end). */
  offset: number;
  length: number;
}

/** Parses a request header; undefined when the magic is wrong (the stream cannot be trusted after that). */
export function decodeRequest(header: Buffer): NbdRequest | undefined {
  if (header.readUInt32BE(0) !== requestMagic) return undefined;
  const high = header.readUInt32BE(16);
  const low = header.readUInt32BE(20);
  return {
    flags: header.readUInt16BE(4),
    type: header.readUInt16BE(6),
    handle: Buffer.from(header.subarray(8, 16)),
    // Past 2^53 the sum loses precision but stays far beyond any export (64 TiB at most): still refused.
    offset: high * 0x1_0000_0000 + low,
    length: header.readUInt32BE(24),
  };
}

/** Writes a simple reply header into the first 16 bytes of `into` (a read's reply is the header and its data in one buffer). */
export function writeSimpleReplyHeader(into: Buffer, error: number, handle: Buffer): Buffer {
  into.writeUInt32BE(simpleReplyMagic, 0);
  into.writeUInt32BE(error, 4);
  handle.copy(into, 8, 0, 8);
  return into;
}
