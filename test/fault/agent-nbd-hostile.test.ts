// Goal (issue 12, hostile NBD clients): a client that breaks the NBD protocol
// gets the protocol's error where it has one (NBD_REP_ERR_* in the handshake,
// EINVAL, ENOSPC, EPERM in transmission) and its connection closed where it has
// none (bad magic, unknown client flags, an option too long to skip), and the
// agent goes on serving every other client. A read or write past the end, a
// payload over the limit, unknown commands and flags, a client that vanishes
// mid-write, a flood of requests whose replies are never read, and seeded
// random garbage: nothing is captured that was not written, nothing on the
// disk changes but the valid writes, and the agent never stops. Raw sockets,
// byte by byte as the protocol (github.com/NetworkBlockDevice/nbd doc/proto.md) lays them out.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { CMD, ERR, NBD, RawClient } from '../helpers/nbd-raw-client';
import { unary } from '../helpers/clients';
import { tempDir } from '../helpers/daemons';
import { createImage, randomBytes, seededRandom } from '../helpers/disks';
import { mustSucceed, nbdUri, run, startNbdAgent, whyNoNbdClients } from '../helpers/nbd';

const MiB = 1024 * 1024;
const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const diskBytes = 8 * MiB;
const why = whyNoNbdClients(['nbdinfo']);

t.test('hostile NBD clients', { skip: why || false }, async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = tempDir('drplane-nbd-hostile-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const disk = path.join(dir, 'disk.img');
  createImage(disk, diskBytes, seed);
  const { agent, client, socket } = await startNbdAgent(t, dir, [disk]);
  const started = await unary(client, client.startCapture, { path: disk, mode: 'CAPTURE_WRITE_THROUGH' });
  /** What the disk must hold: the valid writes only. */
  const expected = fs.readFileSync(disk);
  let validWrites = 0;
  const open = async () => {
    const raw = await RawClient.connect(socket);
    t.teardown(() => raw.destroy());
    return raw;
  };
  const transmitting = async () => {
    const raw = await open();
    await raw.hello();
    const replies = await raw.go('');
    if (replies.at(-1)!.type !== 1) throw new Error('GO of the default export failed');
    return raw;
  };

  t.test('handshake: errors where the protocol has them, a closed connection where it has none', async (t) => {
    const raw = await open();
    const hello = await raw.hello();
    t.equal(hello.magic, 'NBDMAGIC:49484156454f5054', 'NBDMAGIC, IHAVEOPT');
    t.equal(hello.handshakeFlags & 1, 1, 'fixed newstyle');
    raw.sendOption(99, Buffer.from('whatever'));
    t.match(await raw.optionReply(), { option: 99, type: ERR(1) }, 'an unknown option: NBD_REP_ERR_UNSUP');
    raw.sendOption(8);
    t.match(await raw.optionReply(), { option: 8, type: ERR(1) }, 'structured replies: NBD_REP_ERR_UNSUP (simple replies only)');
    raw.sendOption(5);
    t.match(await raw.optionReply(), { option: 5, type: ERR(2) }, 'STARTTLS: NBD_REP_ERR_POLICY');
    raw.sendOption(3, Buffer.from('x'));
    t.match(await raw.optionReply(), { option: 3, type: ERR(3) }, 'LIST with data: NBD_REP_ERR_INVALID');
    raw.sendOption(7, Buffer.from([0, 0, 0, 200, 1]));
    t.match(await raw.optionReply(), { option: 7, type: ERR(3) }, 'a GO shorter than its own name: NBD_REP_ERR_INVALID');
    const unknown = await raw.go('nope.img');
    t.match(unknown, [{ type: ERR(6) }], 'GO of an export that does not exist: NBD_REP_ERR_UNKNOWN');
    t.match(unknown[0]!.data.toString(), /no export "nope.img"/, 'with a message');
    const escape = await raw.go('/etc/passwd');
    t.match(escape, [{ type: ERR(6) }], 'a path outside the disks is no export either');
    const info = await raw.go('', 6);
    t.equal(info.at(-1)!.type, 1, 'INFO of the default export: ACK');
    const exportInfo = info.find((reply) => reply.type === 3 && reply.data.readUInt16BE(0) === 0)!;
    t.equal(Number(exportInfo.data.readBigUInt64BE(2)), diskBytes, 'NBD_INFO_EXPORT gives the size');
    raw.sendOption(2);
    t.match(await raw.optionReply(), { option: 2, type: 1 }, 'ABORT: ACK');
    t.ok(await raw.closedByServer(), 'and the server closes');

    const badFlags = await open();
    await badFlags.hello(0xff);
    t.ok(await badFlags.closedByServer(), 'unknown client flags: closed');
    const badMagic = await open();
    await badMagic.hello();
    badMagic.sendOption(7, Buffer.alloc(8), 0x1234n);
    t.ok(await badMagic.closedByServer(), 'an option without IHAVEOPT: closed');
    const huge = await open();
    await huge.hello();
    huge.sendOption(99, Buffer.alloc(1 * MiB));
    t.ok(await huge.closedByServer(), 'an option of 1 MiB (over nbdOptionBytesMax): closed');
    const oldName = await open();
    await oldName.hello();
    oldName.sendOption(1, Buffer.from('nope.img'));
    t.ok(await oldName.closedByServer(), 'EXPORT_NAME of an export that does not exist: closed (it has no error reply)');
  });

  t.test('transmission: each bad request gets its error, and the stream stays in step', async (t) => {
    const raw = await transmitting();
    const expectError = async (what: string, error: number, handle: bigint) => t.match(await raw.reply(), { error, handle }, what);
    await expectError('a read past the end: EINVAL', NBD.EINVAL, raw.request(CMD.read, diskBytes - 4096, 8192));
    await expectError('a read of 0 bytes: EINVAL', NBD.EINVAL, raw.request(CMD.read, 0, 0));
    await expectError('a read over 32 MiB: EINVAL', NBD.EINVAL, raw.request(CMD.read, 0, 32 * MiB + 1));
    await expectError('a read at offset 2^63: EINVAL', NBD.EINVAL, raw.request(CMD.read, 1n << 63n, 4096));
    await expectError('a write past the end (its payload is skipped): ENOSPC', NBD.ENOSPC, raw.request(CMD.write, diskBytes - 4096, 8192, { payload: randomBytes(8192, random) }));
    await expectError('a write over 32 MiB (its payload is skipped): EINVAL', NBD.EINVAL, raw.request(CMD.write, 0, 32 * MiB + 4096, { payload: Buffer.alloc(32 * MiB + 4096, 0xee) }));
    await expectError('an unknown command: EINVAL', NBD.EINVAL, raw.request(99, 0, 4096));
    await expectError('a read with an unknown flag: EINVAL', NBD.EINVAL, raw.request(CMD.read, 0, 4096, { flags: 1 << 7 }));
    await expectError('a write with DF (not offered): EINVAL', NBD.EINVAL, raw.request(CMD.write, 0, 4096, { flags: 1 << 2, payload: Buffer.alloc(4096, 0xee) }));
    await expectError('NO_HOLE on a trim: EINVAL', NBD.EINVAL, raw.request(CMD.trim, 0, 4096, { flags: 1 << 1 }));
    await expectError('a trim past the end: EINVAL', NBD.EINVAL, raw.request(CMD.trim, diskBytes, 4096));
    await expectError('write-zeroes past the end: ENOSPC', NBD.ENOSPC, raw.request(CMD.writeZeroes, diskBytes - 512, 1024));
    // A valid write after all that: the stream is still in step.
    const data = randomBytes(6000, random);
    await expectError('a valid unaligned write after them: no error', 0, raw.request(CMD.write, 100_000, data.length, { flags: 1, payload: data }));
    data.copy(expected, 100_000);
    validWrites++;
  });

  t.test('a read returns the data; DISC closes', async (t) => {
    const raw = await transmitting();
    const handle = raw.request(CMD.read, 99_000, 9000);
    const reply = await raw.reply(9000);
    t.equal(reply.handle, handle);
    t.ok(reply.data.equals(expected.subarray(99_000, 108_000)), 'the bytes on the disk, valid write included');
    raw.request(CMD.disc, 0, 0);
    t.ok(await raw.closedByServer(), 'DISC: the server closes');
    const badMagic = await transmitting();
    badMagic.request(CMD.read, 0, 4096, { magic: 0xdeadbeef });
    t.ok(await badMagic.closedByServer(), 'a request without the NBD magic: closed (the stream cannot be trusted)');
  });

  t.test('a client that disconnects mid-write changes nothing and is not captured', async (t) => {
    const before = (await unary(client, client.listCaptures, {})).captures[0]!;
    const raw = await transmitting();
    const header = Buffer.alloc(28);
    header.writeUInt32BE(0x25609513, 0);
    header.writeUInt16BE(CMD.write, 6);
    header.writeBigUInt64BE(1n, 8);
    header.writeBigUInt64BE(1_048_576n, 16);
    header.writeUInt32BE(65536, 24);
    raw.socket.write(Buffer.concat([header, Buffer.alloc(30_000, 0xdd)]));
    await new Promise((resolve) => setTimeout(resolve, 100));
    raw.destroy();
    // A good client afterwards proves the server moved on; then the capture and the disk are compared.
    mustSucceed(await run('nbdinfo', [nbdUri(socket)]), 'nbdinfo after the vanished client');
    const after = (await unary(client, client.listCaptures, {})).captures[0]!;
    t.equal(after.writes, before.writes, 'no record for the half-sent write');
    t.ok(fs.readFileSync(disk).equals(expected), 'and the disk is unchanged');
  });

  t.test('a flood of requests whose replies are not read: held back, every one answered, others served meanwhile', async (t) => {
    const raw = await transmitting();
    const count = 20_000;
    for (let index = 0; index < count; index++) raw.request(CMD.read, (index % 2048) * 4096, 4096);
    // 80 MB of replies unread: the server stops reading this client once its bound is reached.
    await new Promise((resolve) => setTimeout(resolve, 500));
    const info = JSON.parse(mustSucceed(await run('nbdinfo', ['--json', nbdUri(socket)]), 'nbdinfo during the flood').stdout) as { exports: { 'export-size': number }[] };
    t.equal(info.exports[0]!['export-size'], diskBytes, 'another client is served during the flood');
    let answered = 0;
    let wrong = 0;
    for (let index = 0; index < count; index++) {
      const reply = await raw.reply(4096);
      if (reply.error !== 0 || reply.data.length !== 4096) wrong++;
      answered++;
    }
    t.equal(answered, count, 'every request of the flood is answered once its client reads');
    t.equal(wrong, 0, 'each with its data');
  });

  t.test('seeded garbage: the agent serves on', async (t) => {
    for (let round = 0; round < 60; round++) {
      const raw = await open();
      const stage = round % 3;
      if (stage >= 1) await raw.hello().catch(() => undefined);
      if (stage === 2) await raw.go('').catch(() => undefined);
      const garbage = randomBytes(4 + Math.floor(random() * 2000) * 4, random);
      // Now and then a plausible header, so the garbage reaches the parsers past the magic checks.
      if (random() < 0.5) garbage.writeUInt32BE(stage === 2 ? 0x25609513 : 0x49484156, 0);
      raw.socket.write(garbage);
      if (random() < 0.5) raw.socket.end();
      else setTimeout(() => raw.destroy(), Math.floor(random() * 50));
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    mustSucceed(await run('nbdinfo', [nbdUri(socket)]), 'nbdinfo after the garbage');
    t.equal(agent.process.exitCode, null, 'the agent is still running');
  });

  t.test('nothing was captured but the valid writes', async (t) => {
    const capture = (await unary(client, client.listCaptures, {})).captures.find((entry) => entry.path === disk)!;
    t.equal(capture.captureId, started.captureId, 'the same capture throughout');
    t.equal(capture.writes, validWrites * 2, `${validWrites} valid write, two records (a 6000-byte write at 100000 touches two blocks: two merges)`);
    t.ok(fs.readFileSync(disk).equals(expected), 'the disk holds the valid writes only');
    const fatal = agent.logs.filter((line) => Number(line.level) >= 60 || /uncaught|unhandled/.test(String(line.msg)));
    t.same(fatal, [], 'no fatal error logged');
  });
});
