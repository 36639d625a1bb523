// Goal: each daemon tells systemd it is ready only when it serves, keeps the
// watchdog fed, and stops cleanly on SIGTERM, also in the middle of work. The
// test binds the notification socket itself (NOTIFY_SOCKET, a unix datagram
// socket, as systemd does for Type=notify) and checks, for every daemon:
// READY=1 with MAINPID = the daemon's pid, grpc.health.v1 answering SERVING
// when READY=1 arrives (the Check is sent from the datagram handler), WATCHDOG=1
// every half of WATCHDOG_USEC and none for another WATCHDOG_PID, STOPPING=1 on
// SIGTERM and exit code 0. Then SIGTERM lands during work: a process server in
// the middle of a full sync, a master target between writing a batch to the
// replica and committing it, and a process server during continuous
// replication under a workload; each exits 0, and after a restart the sync
// resumes or the session goes on without a resync, ending with the replica
// equal to the source. How long each exit took is printed, not asserted.
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { DgramSocket } from 'node-unix-socket';
import t, { type Test } from 'tap';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import { masterTargetClient, processServerClient, unary, waitForSync } from '../helpers/clients';
import { startDaemon, tempDir, type DaemonName, type RunningDaemon } from '../helpers/daemons';
import { createImage, seededRandom, sha256File } from '../helpers/disks';
import { randomWrite } from '../helpers/write-log';
import { freePort, until } from '../helpers/wait';

const MiB = 1024 * 1024;
const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
/** Generous: a bound on waiting, never a measure of speed. */
const waitMs = 60_000;

const healthDefinition = protoLoader.loadSync(path.basename(healthProtoPath), { includeDirs: [path.dirname(healthProtoPath)], keepCase: true, enums: String, defaults: true });
// eslint-disable-next-line @typescript-eslint/no-explicit-any
const healthPackage = grpc.loadPackageDefinition(healthDefinition) as any;

/** grpc.health.v1 Check of the whole server: "SERVING", "NOT_SERVING", or the error's message. */
function health(address: string): Promise<string> {
  const client = new healthPackage.grpc.health.v1.Health(address, grpc.credentials.createInsecure());
  return new Promise((resolve) =>
    client.Check({ service: '' }, { deadline: Date.now() + 10_000 }, (error: grpc.ServiceError | null, answer: { status: string }) => {
      client.close();
      resolve(error ? `error: ${error.message}` : answer.status);
    }),
  );
}

interface Notification {
  fields: Map<string, string>;
  receivedMs: number;
}

/** The socket systemd would listen on: every datagram a daemon sends, parsed into its KEY=VALUE lines. */
class NotifySocket {
  readonly messages: Notification[] = [];
  private readonly socket = new DgramSocket();
  private readonly waiters = new Set<() => void>();

  /** `name` is a path, or "@name" for an abstract socket; `onMessage` runs in the datagram handler itself. */
  constructor(
    readonly name: string,
    private readonly onMessage: (message: Notification) => void = () => undefined,
  ) {
    this.socket.bind(name.startsWith('@') ? `\0${name.slice(1)}` : name);
    this.socket.on('data', (data: Buffer) => {
      const fields = new Map(
        data
          .toString()
          .split('\n')
          .filter(Boolean)
          .map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)] as [string, string]),
      );
      const message = { fields, receivedMs: Date.now() };
      this.messages.push(message);
      this.onMessage(message);
      for (const waiter of [...this.waiters]) waiter();
    });
  }

  /** The index of the first message with KEY=VALUE, or -1. */
  indexOf(key: string, value = '1'): number {
    return this.messages.findIndex((message) => message.fields.get(key) === value);
  }

  count(key: string, value = '1'): number {
    return this.messages.filter((message) => message.fields.get(key) === value).length;
  }

  /** Resolves once `ready()` holds (checked at each datagram), or fails after waitMs. */
  waitFor<T>(what: string, ready: () => T | undefined | false): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const check = () => {
        const value = ready();
        if (!value) return false;
        this.waiters.delete(check);
        clearTimeout(timer);
        resolve(value);
        return true;
      };
      const timer = setTimeout(() => {
        this.waiters.delete(check);
        reject(new Error(`no ${what} on ${this.name} within ${waitMs} ms; got ${JSON.stringify(this.messages.map((message) => Object.fromEntries(message.fields)))}`));
      }, waitMs);
      if (!check()) this.waiters.add(check);
    });
  }

  message(key: string, value = '1'): Promise<Notification> {
    return this.waitFor(`${key}=${value}`, () => this.messages.find((message) => message.fields.get(key) === value));
  }

  close(): void {
    this.socket.close();
  }
}

interface Notified {
  daemon: RunningDaemon;
  socket: NotifySocket;
  /** The health Check sent when READY=1 arrived. */
  healthAtReady: Promise<string>;
  ready: Notification;
}

/** Starts a daemon as systemd would start a Type=notify unit, and waits for READY=1. */
async function startNotified(t: Test, dir: string, name: DaemonName, address: string, args: string[], env: NodeJS.ProcessEnv = {}, socketName?: string): Promise<Notified> {
  let healthAtReady: Promise<string> | undefined;
  const socketPath = socketName ?? path.join(fs.mkdtempSync(path.join(dir, 'notify-')), 'notify.sock');
  const socket = new NotifySocket(socketPath, (message) => {
    if (message.fields.get('READY') === '1') healthAtReady ??= health(address);
  });
  t.teardown(() => socket.close());
  const daemon = await startDaemon(name, { args: ['--listen', address, ...args], env: { NOTIFY_SOCKET: socketPath, WATCHDOG_PID: '', ...env } });
  const ready = await socket.message('READY');
  return { daemon, socket, healthAtReady: healthAtReady!, ready };
}

/** SIGTERM; resolves with the exit, the STOPPING=1 message, how long the exit took and the warnings logged meanwhile. */
async function stopNotified(notified: Notified): Promise<{ exit: { code: number | null; signal: NodeJS.Signals | null }; stopping: Notification; exitMs: number; warnings: string[] }> {
  const sentMs = Date.now();
  const logged = notified.daemon.logs.length;
  const exited = notified.daemon.stop();
  const stopping = await notified.socket.message('STOPPING');
  const exit = await exited;
  const warnings = notified.daemon.logs.slice(logged).filter((line) => Number(line.level) >= 40).map((line) => `${String(line.msg)}${line.err ? `: ${JSON.stringify(line.err).slice(0, 200)}` : ''}`);
  return { exit, stopping, exitMs: Date.now() - sentMs, warnings };
}

const daemonArgs: Record<DaemonName, (dir: string) => string[]> = {
  'configuration-server': (dir) => ['--data-dir', path.join(dir, 'cs')],
  'process-server': (dir) => ['--data-dir', path.join(dir, 'ps')],
  'master-target': (dir) => ['--data-dir', path.join(dir, 'mt'), '--datastore-root', path.join(dir, 'ds')],
  agent: (dir) => {
    const disk = path.join(dir, 'disk.img');
    fs.writeFileSync(disk, Buffer.alloc(MiB));
    return ['--data-dir', path.join(dir, 'agent'), '--disk', disk];
  },
};

for (const name of Object.keys(daemonArgs) as DaemonName[]) {
  t.test(`${name}: READY=1 once it serves, WATCHDOG=1, STOPPING=1 and exit 0 on SIGTERM`, async (t) => {
    const dir = tempDir();
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const address = await freePort();
    // WatchdogSec=0.5s: a keep-alive every 250 ms.
    const notified = await startNotified(t, dir, name, address, daemonArgs[name](dir), { WATCHDOG_USEC: '500000' });
    const { daemon, socket, ready } = notified;
    t.teardown(() => daemon.kill());
    t.equal(ready.fields.get('MAINPID'), String(daemon.process.pid), 'MAINPID is the daemon process (NotifyAccess=main)');
    t.equal(ready.fields.get('STATUS'), `serving on ${address}`, 'STATUS says where it serves');
    t.equal(await notified.healthAtReady, 'SERVING', 'health answered SERVING to a Check sent the moment READY=1 arrived');
    t.ok(daemon.logs.some((line) => line.msg === 'listening'), 'the "listening" line came before');

    await socket.waitFor('two WATCHDOG=1', () => socket.count('WATCHDOG') >= 2);
    t.ok(socket.indexOf('WATCHDOG') > socket.indexOf('READY'), 'keep-alives start after READY=1');

    const { exit, stopping, exitMs } = await stopNotified(notified);
    t.same(exit, { code: 0, signal: null }, 'SIGTERM: exit code 0');
    t.match(stopping.fields.get('STATUS') ?? '', /^stopping on SIGTERM/, 'STOPPING=1 with a STATUS line');
    const stoppingIndex = socket.indexOf('STOPPING');
    t.notOk(socket.messages.slice(stoppingIndex + 1).some((message) => message.fields.has('WATCHDOG')), 'no keep-alive after STOPPING=1');
    t.equal(socket.count('READY'), 1, 'READY=1 was sent once');
    t.comment(`${name}: ${socket.count('WATCHDOG')} keep-alives; exited ${exitMs} ms after SIGTERM`);
  });
}

t.test('an abstract NOTIFY_SOCKET (@name) works too, and WATCHDOG_PID of another process means no keep-alives', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const address = await freePort();
  const socketName = `@drplane-test-${process.pid}-${Date.now()}`;
  const notified = await startNotified(t, dir, 'process-server', address, daemonArgs['process-server'](dir), { WATCHDOG_USEC: '200000', WATCHDOG_PID: '1' }, socketName);
  t.equal(notified.ready.fields.get('MAINPID'), String(notified.daemon.process.pid), 'READY=1 arrives on the abstract socket');
  t.equal(await notified.healthAtReady, 'SERVING');
  // Ten keep-alive intervals: none is due, the watchdog belongs to pid 1.
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  const { exit } = await stopNotified(notified);
  t.same(exit, { code: 0, signal: null });
  t.equal(notified.socket.count('WATCHDOG'), 0, 'no WATCHDOG=1 for a WATCHDOG_PID that is not the daemon');
});

t.test('SIGTERM during work: exit 0, and after a restart the work resumes and the replica equals the source', async (t) => {
  t.comment(`seed ${seed}`);
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const datastore = path.join(dir, 'ds');
  const syncSource = path.join(dir, 'sync-source.img');
  const replicationSource = path.join(dir, 'replication-source.img');
  createImage(syncSource, 64 * MiB, seed); // 32 MiB of data: 8 batches of 4 MiB
  createImage(replicationSource, 16 * MiB, seed + 1, MiB);
  const [agentAddress, mtAddress, psAddress] = await Promise.all([freePort(), freePort(), freePort()]);

  const agent = await startDaemon('agent', { args: ['--name', 'agent1', '--listen', agentAddress, '--data-dir', path.join(dir, 'agent'), '--disk', syncSource, '--disk', replicationSource] });
  t.teardown(() => agent.stop());
  // Daemons are replaced as the cases go on; the teardown stops whichever runs.
  const running: { mt?: RunningDaemon; ps?: RunningDaemon } = {};
  t.teardown(async () => {
    await Promise.all([running.mt?.stop(), running.ps?.stop()]);
  });
  const startMasterTarget = async (failpoints = '') => {
    const notified = await startNotified(t, dir, 'master-target', mtAddress, ['--name', 'mt1', '--data-dir', path.join(dir, 'mt'), '--datastore-root', datastore], { DRPLANE_FAILPOINTS: failpoints });
    running.mt = notified.daemon;
    return notified;
  };
  const startProcessServer = async () => {
    const notified = await startNotified(t, dir, 'process-server', psAddress, [
      '--name', 'ps1', '--data-dir', path.join(dir, 'ps'), '--batch-bytes-max', String(4 * MiB), '--cache-bytes-max', String(64 * MiB), '--memory-queue-bytes-max', String(MiB),
    ]);
    running.ps = notified.daemon;
    return notified;
  };
  const ps = processServerClient(psAddress);
  const mt = masterTargetClient(mtAddress);
  t.teardown(() => {
    ps.close();
    mt.close();
  });

  // Every apply waits 500 ms after its commit, so the sync is surely running when SIGTERM lands.
  let masterTarget = await startMasterTarget('apply.applied-committed=sleep:500');
  let processServer = await startProcessServer();
  for (const diskId of ['sync1', 'sync2']) {
    await unary(mt, mt.createReplica, { diskId, path: path.join(datastore, `${diskId}.img`), diskBytes: 64 * MiB, epoch: 1 });
  }
  const startSync = (diskId: string) =>
    unary(ps, ps.startSync, { diskId, syncId: `full-${diskId}`, mode: 'SYNC_MODE_FULL', epoch: 1, agentAddress, sourcePath: syncSource, masterTargetAddress: mtAddress });

  await t.test('the process server stopped in the middle of a full sync', async (t) => {
    await startSync('sync1');
    const acked = await waitForSync(ps, 'sync1', (status) => status.batchesAcked >= 2);
    t.equal(acked.state, 'SYNC_STATE_RUNNING', `running, ${acked.batchesAcked} of 9 batches acknowledged`);
    const { exit, exitMs, warnings } = await stopNotified(processServer);
    t.same(exit, { code: 0, signal: null }, 'exit code 0');
    t.comment(`the process server exited ${exitMs} ms after SIGTERM, in the middle of a sync; warnings while stopping: ${JSON.stringify(warnings)}`);
    processServer = await startProcessServer();
    await startSync('sync1');
    const status = await waitForSync(ps, 'sync1');
    t.equal(status.state, 'SYNC_STATE_COMPLETED', status.error);
    // The master target applies the batches it had received whole; the sync goes on after them (or, when they
    // included the final one, it is complete and nothing is sent again).
    t.ok(status.resumedFrom > 0 || status.bytesSent === 0, `resumed from ${status.resumedFrom} of ${64 * MiB}; ${status.bytesSent} bytes sent again`);
    t.equal(sha256File(path.join(datastore, 'sync1.img')), sha256File(syncSource), 'the replica equals the source');
  });

  await t.test('the master target stopped while a batch is written to the replica but not yet committed', async (t) => {
    t.same((await stopNotified(masterTarget)).exit, { code: 0, signal: null }, 'the idle master target stops with exit 0');
    // Each batch now waits 2 s with the replica written and the batch not yet committed. On SIGTERM the
    // master target takes no more frames, finishes the batches it accepted and ends the stream (UNAVAILABLE).
    masterTarget = await startMasterTarget('apply.replica-written=sleep:2000');
    await startSync('sync2');
    const acked = await waitForSync(ps, 'sync2', (status) => status.batchesAcked >= 1);
    t.equal(acked.state, 'SYNC_STATE_RUNNING', `running, ${acked.batchesAcked} batches acknowledged; the next is being applied`);
    const { exit, exitMs, warnings } = await stopNotified(masterTarget);
    t.same(exit, { code: 0, signal: null }, 'exit code 0');
    t.comment(`the master target exited ${exitMs} ms after SIGTERM, in the middle of an apply; warnings while stopping: ${JSON.stringify(warnings)}`);
    masterTarget = await startMasterTarget();
    t.notOk(
      warnings.some((line) => /roll back|file closed|refused/.test(line)),
      'no apply was cut off and no stream was refused by the stop',
    );
    const rolledBack = masterTarget.daemon.logs.find((line) => line.msg === 'start-up recovery rolled back half-applied batches');
    t.notOk(rolledBack, 'it stopped at a batch boundary: start-up recovery found nothing half-applied');
    const status = await waitForSync(ps, 'sync2');
    t.equal(status.state, 'SYNC_STATE_COMPLETED', status.error);
    t.comment(`the process server reconnected ${status.reconnects} times; the sync resumed from ${status.resumedFrom}`);
    t.equal(sha256File(path.join(datastore, 'sync2.img')), sha256File(syncSource), 'the replica equals the source');
  });

  await t.test('the process server stopped during continuous replication under a workload', async (t) => {
    const diskId = 'replicated';
    await unary(mt, mt.createReplica, { diskId, path: path.join(datastore, `${diskId}.img`), diskBytes: 16 * MiB, epoch: 1 });
    await unary(ps, ps.startReplication, { diskId, epoch: 1, agentAddress, sourcePath: replicationSource, masterTargetAddress: mtAddress, captureMode: 'CAPTURE_WRITE_THROUGH', crashConsistentIntervalMs: 300 });
    const status = () => unary(ps, ps.getReplication, { diskId });
    const captureId = await until('the capture', async () => (await status()).captureId);
    const writer = new WriteThroughClient(agentAddress);
    const random = seededRandom(seed);
    let writing = true;
    // The workload goes on whatever happens to the process server: the agent holds what is not acknowledged.
    const workload = (async () => {
      while (writing) {
        await Promise.all(Array.from({ length: 8 }, () => randomWrite(random, 16 * MiB)).map((write) => writer.write(replicationSource, write.offset, write.data)));
        await new Promise((resolve) => setTimeout(resolve, 40));
      }
    })();
    t.teardown(async () => {
      writing = false;
      await workload.catch(() => undefined);
      await writer.close();
    });
    const before = await until('replicating with points applied', async () => {
      const current = await status();
      return current.state === 'REPLICATION_REPLICATING' && current.appliedSequence > 0 && current;
    }, waitMs);
    const { exit, exitMs, warnings } = await stopNotified(processServer);
    t.same(exit, { code: 0, signal: null }, 'exit code 0');
    t.comment(`warnings while stopping: ${JSON.stringify(warnings)}`);
    t.comment(`the process server exited ${exitMs} ms after SIGTERM, replicating (applied ${before.appliedSequence} batches before)`);
    processServer = await startProcessServer();
    const resumed = await until('the session back, replicating', async () => {
      const current = await status();
      return current.state === 'REPLICATION_REPLICATING' && current.agentConnected && current;
    }, waitMs);
    t.equal(resumed.captureId, captureId, 'the same capture');
    t.equal(resumed.resyncs, 0, 'no resync: nothing was lost');
    writing = false;
    await workload;
    const flushed = await unary(ps, ps.flushReplication, { diskId, timeoutMs: waitMs });
    t.equal(flushed.status?.backlogBytes, 0, 'nothing left to apply');
    t.equal(sha256File(path.join(datastore, `${diskId}.img`)), sha256File(replicationSource), 'the replica equals the source');
  });
});
