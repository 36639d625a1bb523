// Goal: the NBD server's reader hands out exactly the bytes sent, in order,
// however the stream is cut into chunks (split at random points from a seed,
// as undici's fuzzers do), for reads smaller and larger than its buffering
// bound and for skipped payloads; a connection that ends mid-message rejects
// the pending read; and the request header decoder reads every field where
// the protocol puts it.
import net from 'node:net';
import t from 'tap';
import { ConnectionClosedError, SocketReader } from '../../daemons/agent/socket-reader';
import { decodeRequest, requestMagic } from '../../daemons/agent/nbd-protocol';
import { randomBytes, seededRandom } from '../helpers/disks';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);

/** A connected pair of sockets: a TCP connection on loopback. */
async function socketPair(): Promise<{ client: net.Socket; server: net.Socket; close: () => void }> {
  const listener = net.createServer();
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const port = (listener.address() as net.AddressInfo).port;
  const accepted = new Promise<net.Socket>((resolve) => listener.once('connection', resolve));
  const client = net.connect(port, '127.0.0.1');
  client.setNoDelay(true);
  const server = await accepted;
  return {
    client,
    server,
    close: () => {
      client.destroy();
      server.destroy();
      listener.close();
    },
  };
}

t.test('reads and skips see exactly the bytes sent, however they are split', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const { client, server, close } = await socketPair();
  t.teardown(close);
  // A small bound, so reads larger than it (gathered piece by piece) and pausing both run.
  const reader = new SocketReader(server, 4096);
  const stream = randomBytes(1 << 20, random);
  // Reads of random sizes, some skipped, the last ones larger than the bound.
  const plan: { bytes: number; skip: boolean }[] = [];
  for (let total = 0; total < stream.length; ) {
    const bytes = Math.min(stream.length - total, 1 + Math.floor(random() * (random() < 0.1 ? 20_000 : 300)));
    plan.push({ bytes, skip: random() < 0.2 });
    total += bytes;
  }
  // Send in chunks split at random points, with pauses between some.
  void (async () => {
    for (let at = 0; at < stream.length; ) {
      const size = Math.min(stream.length - at, 1 + Math.floor(random() * 5000));
      client.write(stream.subarray(at, at + size));
      at += size;
      if (random() < 0.05) await new Promise((resolve) => setTimeout(resolve, 1));
    }
  })();
  let at = 0;
  let mismatches = 0;
  for (const step of plan) {
    if (step.skip) await reader.skip(step.bytes);
    else if (!(await reader.read(step.bytes)).equals(stream.subarray(at, at + step.bytes))) mismatches++;
    at += step.bytes;
  }
  t.equal(at, stream.length);
  t.equal(mismatches, 0, `${plan.length} reads and skips, each the right bytes`);
});

t.test('a connection that ends mid-message rejects the pending read', async (t) => {
  const { client, server, close } = await socketPair();
  t.teardown(close);
  const reader = new SocketReader(server, 1 << 20);
  client.write(Buffer.alloc(10));
  const pending = reader.read(28);
  client.end();
  await t.rejects(pending, ConnectionClosedError);
  t.equal((await reader.read(10)).length, 10, 'the bytes that did arrive can still be read');
  await t.rejects(reader.read(1), ConnectionClosedError, 'and every read past them is refused');
});

t.test('request headers: fields at their offsets; a bad magic is refused', async (t) => {
  const header = Buffer.alloc(28);
  header.writeUInt32BE(requestMagic, 0);
  header.writeUInt16BE(0x0003, 4);
  header.writeUInt16BE(6, 6);
  header.write('handle!!', 8, 'latin1');
  header.writeBigUInt64BE(0x1_2345_6789n, 16);
  header.writeUInt32BE(0xfffffffe, 24);
  t.match(decodeRequest(header), { flags: 3, type: 6, offset: 0x1_2345_6789, length: 0xfffffffe });
  t.equal(decodeRequest(header)!.handle.toString('latin1'), 'handle!!');
  header.writeBigUInt64BE(0xffff_ffff_ffff_ffffn, 16);
  t.ok(decodeRequest(header)!.offset > 2 ** 63, 'an offset past 2^53 stays past every export');
  header.writeUInt32BE(0x25609514, 0);
  t.equal(decodeRequest(header), undefined, 'a bad magic');
});
