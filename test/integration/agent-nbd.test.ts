// Goal (issue 12, items 1 and 2): the agent serves its disks over NBD to real
// clients nobody here wrote (nbdinfo, qemu-io, qemu-img, nbdcopy): it lists
// every disk as an export with its size; writes of every shape (aligned,
// unaligned, 512 bytes, FUA, flush, discard, write-zeroes, several extents)
// land on the source exactly; images copy in and out; several clients work at
// once; and with a write-through capture running, the change records replayed
// in order onto the disk's old copy give the source byte for byte. A capture
// that overflows never fails the client.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { agentClient, unary } from '../helpers/clients';
import { startDaemon, tempDir } from '../helpers/daemons';
import { createImage, randomBytes, seededRandom, sha256File } from '../helpers/disks';
import { ChangeReplay, mustSucceed, nbdAddressOf, nbdUri, qemuIo, run, whyNoNbdClients } from '../helpers/nbd';

const MiB = 1024 * 1024;
const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);

const why = whyNoNbdClients();

t.test('the agent as an NBD server', { skip: why || false }, async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = tempDir('drplane-nbd-');
  const diskA = path.join(dir, 'vm1-disk0.img');
  const diskB = path.join(dir, 'vm1-disk1.img');
  createImage(diskA, 32 * MiB, seed);
  fs.writeFileSync(diskB, Buffer.alloc(0));
  fs.truncateSync(diskB, 8 * MiB);
  const socket = path.join(dir, 'nbd.sock');
  const agent = await startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'), '--disk', diskA, '--disk', diskB, '--nbd-listen', `unix:${socket}`, '--metrics-listen', '127.0.0.1:0'] });
  const client = agentClient(agent.address);
  t.teardown(async () => {
    client.close();
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  t.equal(nbdAddressOf(agent.logs), `unix:${socket}`, 'the agent logs where NBD listens');
  t.equal(fs.statSync(socket).mode & 0o777, 0o600, 'the socket file is 0600: only its owner (root) may connect');

  t.test('nbdinfo lists every disk as an export with its size', async (t) => {
    const listed = JSON.parse(mustSucceed(await run('nbdinfo', ['--json', '--list', nbdUri(socket)]), 'nbdinfo --list').stdout) as { exports: { 'export-name': string; 'export-size': number; is_read_only: boolean; can_flush: boolean; can_fua: boolean; can_trim: boolean; can_zero: boolean; can_multi_conn: boolean; block_size_minimum: number; block_size_preferred: number; block_size_maximum: number }[] };
    const byName = new Map(listed.exports.map((entry) => [entry['export-name'], entry]));
    t.same([...byName.keys()].sort(), ['vm1-disk0.img', 'vm1-disk1.img'], 'one export per disk, named by its file name');
    t.equal(byName.get('vm1-disk0.img')!['export-size'], 32 * MiB);
    t.equal(byName.get('vm1-disk1.img')!['export-size'], 8 * MiB);
    const a = byName.get('vm1-disk0.img')!;
    t.match(a, { is_read_only: false, can_flush: true, can_fua: true, can_trim: true, can_zero: true, can_multi_conn: true }, 'flush, FUA, trim, write-zeroes and multi-conn are offered');
    t.match(a, { block_size_minimum: 1, block_size_preferred: 4096, block_size_maximum: 32 * MiB }, 'any alignment; 4 KiB preferred; 32 MiB payloads');
    const noDefault = await run('nbdinfo', [nbdUri(socket)], { allowFailure: true });
    t.not(noDefault.code, 0, 'with two disks there is no default export');
    t.match(noDefault.stderr, /default export/, `and nbdinfo says which (${noDefault.stderr.trim().split('\n')[0]})`);
    const absent = await run('nbdinfo', [nbdUri(socket, 'nope.img')], { allowFailure: true });
    t.not(absent.code, 0, 'an unknown export is refused');
    const byPath = JSON.parse(mustSucceed(await run('nbdinfo', ['--json', nbdUri(socket, diskB)]), 'nbdinfo by path').stdout) as { exports: { 'export-size': number }[] };
    t.equal(byPath.exports[0]!['export-size'], 8 * MiB, 'a disk may be named by its absolute path too');
  });

  t.test('qemu-io: every shape of write lands exactly, and the capture holds them in order', async (t) => {
    const started = await unary(client, client.startCapture, { path: diskA, mode: 'CAPTURE_WRITE_THROUGH' });
    const replica = path.join(dir, 'replica.img');
    fs.copyFileSync(diskA, replica);
    const replay = new ChangeReplay(client, diskA, replica);
    t.teardown(() => replay.close());
    const expected = fs.readFileSync(diskA);
    const uri = nbdUri(socket, 'vm1-disk0.img');
    const pattern = (byte: number, offset: number, length: number) => expected.fill(byte, offset, offset + length);
    const writes: [string, () => void][] = [
      ['write -P 0x11 1048576 65536', () => pattern(0x11, 1048576, 65536)], // aligned
      ['write -P 0x22 1000 3000', () => pattern(0x22, 1000, 3000)], // inside one block
      ['write -P 0x33 5000 512', () => pattern(0x33, 5000, 512)], // 512 bytes, unaligned
      ['write -P 0x44 7680 9000', () => pattern(0x44, 7680, 9000)], // partial blocks at both ends, whole ones between
      ['write -f -P 0x55 2097152 4096', () => pattern(0x55, 2097152, 4096)], // FUA
      ['flush', () => undefined],
      ['write -P 0x66 5243000 4194304', () => pattern(0x66, 5243000, 4194304)], // 4 MiB, unaligned: several extents
      ['discard 10485760 1048576', () => pattern(0, 10485760, 1048576)], // TRIM: zeros here
      ['discard 12582912 1000', () => pattern(0, 12582912, 1000)], // TRIM inside a block
      ['write -z 14680071 100000', () => pattern(0, 14680071, 100000)], // WRITE_ZEROES, unaligned
      ['write -z -u 16777216 2097152', () => pattern(0, 16777216, 2097152)], // WRITE_ZEROES that may unmap
      ['write -f -z 20971520 8192', () => pattern(0, 20971520, 8192)], // WRITE_ZEROES with FUA
      ['write -P 0x77 33550336 4096', () => pattern(0x77, 33550336, 4096)], // the last block
    ];
    await qemuIo(uri, writes.map(([command]) => command));
    for (const [, apply] of writes) apply();
    // Read back through NBD what each write left (qemu-io fails on a pattern mismatch).
    await qemuIo(uri, ['read -P 0x22 1000 3000', 'read -P 0x33 5000 512', 'read -P 0x44 7680 9000', 'read -P 0x66 5243000 4194304', 'read -P 0 10485760 1048576', 'read -P 0 14680071 100000', 'read -P 0x77 33550336 4096']);
    t.ok(fs.readFileSync(diskA).equals(expected), 'the source holds exactly what the writes made of it');
    const refused = await run('qemu-io', ['-f', 'raw', uri, '-c', 'write -P 1 33550336 8192'], { allowFailure: true });
    // qemu checks the size it was told and refuses before sending (the server's own ENOSPC is in test/fault/agent-nbd-hostile).
    t.match(refused.stdout + refused.stderr, /No space left on device|Input\/output error|Invalid argument/, 'a write past the end is refused');
    t.ok(fs.readFileSync(diskA).equals(expected), 'and changes nothing');

    const capture = (await unary(client, client.listCaptures, {})).captures.find((entry) => entry.path === diskA)!;
    t.equal(capture.captureId, started.captureId, 'one capture throughout (no overflow)');
    const deadline = Date.now() + 30_000;
    while (replay.replayedThrough < Number(capture.nextSequence) - 1 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
    replay.check();
    t.ok(replay.records >= writes.length - 1, `${replay.records} change records for ${writes.length - 1} writes (large ones are split into 1 MiB extents)`);
    t.equal(sha256File(replica), sha256File(diskA), 'the records replayed in order onto the old copy give the source byte for byte');
    // TRIM and WRITE_ZEROES of whole blocks: zero-run records, no data (1 MiB + 2 MiB + 8 KiB at least, and the unaligned run's whole blocks).
    t.ok(replay.zeroRecords >= 4 && replay.zeroBytes >= 3 * MiB + 8192, `TRIM and WRITE_ZEROES became ${replay.zeroRecords} zero-run records covering ${replay.zeroBytes} bytes, with no data`);
  });

  t.test('qemu-img convert and nbdcopy copy whole images in and out', async (t) => {
    const image = path.join(dir, 'image.raw');
    fs.writeFileSync(image, randomBytes(8 * MiB, random));
    const uri = nbdUri(socket, 'vm1-disk1.img');
    mustSucceed(await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', image, uri]), 'qemu-img convert in');
    t.equal(sha256File(diskB), sha256File(image), 'qemu-img convert wrote the image onto the disk');
    const out = path.join(dir, 'out.raw');
    mustSucceed(await run('nbdcopy', [uri, out]), 'nbdcopy out');
    t.equal(sha256File(out), sha256File(image), 'nbdcopy read it back');
    const other = path.join(dir, 'other.raw');
    fs.writeFileSync(other, Buffer.concat([randomBytes(4 * MiB, random), Buffer.alloc(4 * MiB)]));
    const started = Date.now();
    mustSucceed(await run('nbdcopy', [other, uri]), 'nbdcopy in');
    t.comment(`nbdcopy wrote 8 MiB (half zeros) in ${Date.now() - started} ms, process start included`);
    t.equal(sha256File(diskB), sha256File(other), 'nbdcopy wrote an image with zeros (it sends WRITE_ZEROES for them)');
    t.match(mustSucceed(await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', other, uri]), 'qemu-img compare').stdout, /Images are identical/);
  });

  t.test('several clients at once', async (t) => {
    const expected = fs.readFileSync(diskA);
    const uri = nbdUri(socket, 'vm1-disk0.img');
    const jobs = [0, 1, 2, 3].map((index) => {
      const offset = index * 4 * MiB + 512 * index;
      expected.fill(0xa0 + index, offset, offset + 2 * MiB);
      return qemuIo(uri, [`write -P ${0xa0 + index} ${offset} ${2 * MiB}`, `read -P ${0xa0 + index} ${offset} ${2 * MiB}`]);
    });
    const reader = run('nbdcopy', [nbdUri(socket, 'vm1-disk1.img'), path.join(dir, 'concurrent-read.raw')]);
    await Promise.all([...jobs, reader]);
    t.ok(fs.readFileSync(diskA).equals(expected), 'four writers on one export and a reader on another: every write landed');
    t.equal(sha256File(path.join(dir, 'concurrent-read.raw')), sha256File(diskB), 'and the reader read the other disk whole');
  });

  t.test('Prometheus figures count the NBD requests and bytes', async (t) => {
    const listening = agent.logs.find((line) => line.msg === 'listening')!;
    const text = await (await fetch(`http://${String(listening.metricsAddress)}/metrics`)).text();
    const value = (pattern: RegExp) => Number(pattern.exec(text)?.[1] ?? NaN);
    t.ok(value(/^drplane_nbd_requests_total\{kind="write",code="ok"\} (\d+)/m) > 10, 'writes answered ok are counted');
    t.ok(value(/^drplane_nbd_requests_total\{kind="write_zeroes",code="ok"\} (\d+)/m) >= 3, 'and write-zeroes');
    t.ok(value(/^drplane_nbd_requests_total\{kind="trim",code="ok"\} (\d+)/m) >= 2, 'and trims');
    t.ok(value(/^drplane_nbd_bytes_total\{kind="read"\} (\d+)/m) >= 8 * MiB, 'bytes read are counted');
    t.ok(value(/^drplane_nbd_connections (\d+)/m) >= 0, 'the connections gauge is there');
  });
});

t.test('one disk: the default export; an overflowing capture never fails the client', { skip: why || false }, async (t) => {
  const dir = tempDir('drplane-nbd-');
  const disk = path.join(dir, 'only.img');
  createImage(disk, 16 * MiB, seed + 1);
  const socket = path.join(dir, 'nbd.sock');
  // Held records bounded at 1 MiB and nobody streaming them: the capture must overflow.
  const args = ['--name', 'agent2', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'), '--disk', disk, '--nbd-listen', `unix:${socket}`, '--held-bytes-max', String(MiB)];
  let agent = await startDaemon('agent', { args });
  const client = agentClient(agent.address);
  t.teardown(async () => {
    client.close();
    await agent.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  const info = JSON.parse(mustSucceed(await run('nbdinfo', ['--json', nbdUri(socket)]), 'nbdinfo').stdout) as { exports: { 'export-size': number }[] };
  t.equal(info.exports[0]!['export-size'], 16 * MiB, 'nbd+unix:///?socket=... (the empty name) is the only disk');

  const started = await unary(client, client.startCapture, { path: disk, mode: 'CAPTURE_WRITE_THROUGH' });
  const expected = fs.readFileSync(disk);
  expected.fill(0x5a, 0, 3 * MiB);
  await qemuIo(nbdUri(socket), [`write -P 0x5a 0 ${MiB}`, `write -P 0x5a ${MiB} ${MiB}`, `write -P 0x5a ${2 * MiB} ${MiB}`, 'flush']);
  t.ok(fs.readFileSync(disk).equals(expected), 'every write reached the source');
  const capture = (await unary(client, client.listCaptures, {})).captures.find((entry) => entry.path === disk)!;
  t.ok(capture.overflows >= 1, `the capture overflowed (${capture.overflows} times) instead of failing a write`);
  t.not(capture.captureId, started.captureId, 'and goes on under a new capture id (the process server resyncs)');

  // The socket belongs to one agent: a second is refused; one killed leaves a stale socket its successor replaces.
  const second = await startDaemon('agent', { args: [...args.slice(0, 4), '--data-dir', path.join(dir, 'data2'), ...args.slice(6)], expectExit: true });
  t.equal((await second.exited).code, 2, 'a second agent on the same NBD socket stops at start-up (exit 2)');
  t.match(second.stderr.join('\n'), /nbdListen.*EADDRINUSE/, 'naming nbdListen');
  await agent.kill();
  t.ok(fs.existsSync(socket), 'SIGKILL leaves the socket file behind');
  agent = await startDaemon('agent', { args });
  t.equal(fs.statSync(socket).mode & 0o777, 0o600, 'a restarted agent replaces the stale socket (0600 again)');
  mustSucceed(await run('nbdinfo', [nbdUri(socket)]), 'nbdinfo after the restart');
});

t.test('a group may be given the socket (mode 0660); a group that does not exist stops the agent', { skip: why || false }, async (t) => {
  const dir = tempDir('drplane-nbd-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const disk = path.join(dir, 'only.img');
  createImage(disk, 4 * MiB, seed + 2);
  // A group other than the agent's own, from this machine's /etc/group.
  const groups = fs.readFileSync('/etc/group', 'utf8').split('\n').filter(Boolean).map((line) => line.split(':'));
  const group = groups.find(([name]) => name === 'disk') ?? groups.find(([, , gid]) => Number(gid) !== process.getgid?.())!;
  const socket = path.join(dir, 'nbd.sock');
  const agent = await startDaemon('agent', { args: ['--name', 'agent3', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'), '--disk', disk, '--nbd-listen', `unix:${socket}`, '--nbd-socket-group', group[0]!] });
  t.teardown(() => agent.stop());
  const stats = fs.statSync(socket);
  t.equal(stats.mode & 0o777, 0o660, `the socket is 0660 with --nbd-socket-group ${group[0]}`);
  t.equal(stats.gid, Number(group[2]), 'and belongs to that group');
  mustSucceed(await run('nbdinfo', [nbdUri(socket)]), 'nbdinfo');
  const refused = await startDaemon('agent', { args: ['--name', 'agent4', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data4'), '--disk', disk, '--nbd-listen', `unix:${path.join(dir, 'other.sock')}`, '--nbd-socket-group', 'no-such-group-here'], expectExit: true });
  t.equal((await refused.exited).code, 2, 'a group that does not exist: exit 2');
  t.match(refused.stderr.join('\n'), /nbdSocketGroup: no group no-such-group-here/, 'naming the key');
  t.notOk(fs.existsSync(path.join(dir, 'other.sock')), 'and no socket is left behind');
});
