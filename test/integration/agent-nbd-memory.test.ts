// Goal: the agent's memory for an NBD connection is bounded by what it has in
// flight, not by how many requests the connection has sent. 768 MiB of 64 KiB
// random writes at queue depth 32 (fio's nbd engine, one connection, 12,288
// requests) once kept every request's 64 KiB socket chunk alive until the
// connection closed (the read loop raced each header against one pending
// "stopped" promise): the agent passed 1.2 GiB. Measured as peak RSS (VmHWM,
// reset before the run), never as time. And an agent stopped (SIGTERM) while a
// client sits idle in transmission wakes that client's read loop and exits 0.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startDaemon, tempDir } from '../helpers/daemons';
import { mustSucceed, nbdUri, run, whyNoNbdClients } from '../helpers/nbd';
import { RawClient } from '../helpers/nbd-raw-client';

const MiB = 1024 * 1024;
const why = whyNoNbdClients(['fio']);

function status(pid: number, field: string): number {
  return Number(new RegExp(`${field}:\\s+(\\d+) kB`).exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) * 1024;
}

t.test('an NBD connection that writes a lot holds only what is in flight', { skip: why || false }, async (t) => {
  const dir = tempDir('drplane-nbd-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const disk = path.join(dir, 'disk.img');
  fs.writeFileSync(disk, Buffer.alloc(0));
  fs.truncateSync(disk, 256 * MiB);
  const socket = path.join(dir, 'nbd.sock');
  const agent = await startDaemon('agent', { args: ['--name', 'agent1', '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'data'), '--disk', disk, '--nbd-listen', `unix:${socket}`] });
  t.teardown(() => agent.stop());
  const pid = agent.process.pid!;
  fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
  const before = status(pid, 'VmRSS');
  mustSucceed(
    await run('fio', ['--name=many', '--ioengine=nbd', `--uri=${nbdUri(socket)}`, '--rw=randwrite', '--bs=64k', '--iodepth=32', '--size=256M', '--io_size=768M', '--randseed=7', '--output-format=json'], { timeoutMs: 180_000 }),
    'fio',
  );
  const grown = status(pid, 'VmHWM') - before;
  // In flight: at most nbdConnectionBytesInFlightMax (64 MiB) of payloads, their socket chunks, and what the
  // collector has not freed yet; the 768 MiB written must not stay.
  t.ok(grown < 256 * MiB, `peak RSS grew by ${(grown / MiB).toFixed(0)} MiB while 768 MiB went through one connection`);

  // A client in transmission, idle: SIGTERM wakes its read loop, and the agent exits 0.
  const idle = await RawClient.connect(socket);
  t.teardown(() => idle.destroy());
  await idle.hello();
  const replies = await idle.go('');
  t.equal(replies.at(-1)?.type, 1, 'the idle client chose the export (NBD_REP_ACK)');
  const closed = idle.closedByServer();
  t.same(await agent.stop(), { code: 0, signal: null }, 'the agent stops cleanly with the client connected');
  t.ok(await closed, "and closes the idle client's connection");
});
