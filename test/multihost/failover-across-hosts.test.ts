// Goal (issue 5, must-show 2): drplane across separate network hosts, over
// mutual TLS. Three network namespaces built by the test (test/helpers/hosts.ts,
// docs/multi-host.md): the configuration server's host, site A (psA, mtA,
// agentA) and site B (psB, mtB, agentB), each with its own address and
// point-to-point links. A machine with two disks is protected A -> B with
// write-through capture while a workload writes through agentA, and then:
//   - the link between the sites is cut for longer than a batch interval (until
//     psA itself finds mtB gone, ~30 s) while the workload goes on: the backlog
//     on psA grows, nothing reaches mtB, and the configuration server raises
//     the RPO event; once restored (a reconnection over mTLS), the RPO
//     falls back under the threshold, the session never resynced, and the
//     latest point materialises byte-exact to the source;
//   - delay and loss on the link (tc netem, or where the kernel has none a tbf
//     queue and nft random drops): replication carries on and ends byte-exact;
//   - planned failover A -> B, commit, reprotect B -> A, writes on B, failback
//     B -> A, run by drctl on the configuration server's host: every job
//     succeeds and each step ends byte-exact where it should.
// Plaintext, and a certificate from another CA, are refused. Real daemons,
// real files, real LMDB; the seed is printed and DRPLANE_SEED replays it.
import fs from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import * as grpc from '@grpc/grpc-js';
import t, { type Test } from 'tap';
import { channelOptions, createClient, unary } from '../../shared/grpc';
import { v1 } from '../../shared/proto';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import type { Job__Output } from '../../generated/drplane/v1/Job';
import type { SystemStatus__Output } from '../../generated/drplane/v1/SystemStatus';
import { createImage, seededRandom } from '../helpers/disks';
import { repoRoot } from '../helpers/daemons';
import { startHosts, type Hosts } from '../helpers/hosts';
import { ip, ping, run, shapeLink, whyNoNamespaces } from '../helpers/netns';
import { writeDirect, writeThrough } from '../helpers/sites';
import { eventually } from '../helpers/stack';
import { randomWrite, sha256OfFile } from '../helpers/write-log';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 4 * MiB;
/** The policy's batch interval: a crash-consistent point closes at least this often. */
const crashIntervalMs = 1_000;
/** The policy's RPO threshold: the configuration server raises RPO_THRESHOLD_EXCEEDED past it. */
const rpoThresholdMs = 4_000;

/** Writes through agentA in the background, a few at a time with pauses (about 1 MB/s), until stopped. */
class Workload {
  writes = 0;
  bytes = 0;
  private running: Promise<void> | undefined;
  private stopping = false;
  private failure: unknown;

  constructor(
    private readonly writer: WriteThroughClient,
    private readonly paths: string[],
    private readonly random: () => number,
  ) {}

  start(): void {
    this.stopping = false;
    this.running = this.loop().catch((error: unknown) => void (this.failure ??= error));
  }

  /** Stops and waits until every write issued is answered; throws the first write that failed. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.running;
    this.running = undefined;
    if (this.failure) throw this.failure;
  }

  private async loop(): Promise<void> {
    while (!this.stopping) {
      const round = Array.from({ length: 6 }, (_, index) => {
        const { offset, data } = randomWrite(this.random, diskBytes);
        this.bytes += data.length;
        return this.writer.write(this.paths[(this.writes + index) % this.paths.length]!, offset, data);
      });
      await Promise.all(round);
      this.writes += round.length;
      await sleep(150);
    }
  }
}

const why = whyNoNamespaces();

t.test('three hosts in network namespaces, mTLS: link cut, delay and loss, failover and failback', { skip: why || false }, async (t) => {
  const testStarted = Date.now();
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const hosts = await startHosts(t);
  const { cs } = hosts;
  const homeDisks = [0, 1].map((index) => path.join(hosts.disksA, `vm1-d${index}.img`));
  homeDisks.forEach((disk, index) => createImage(disk, diskBytes, seed + index, 1 * MiB));
  const diskIds = ['vm1-disk0', 'vm1-disk1'];
  const sourceOf = (diskId: string) => homeDisks[Number(/disk(\d+)$/.exec(diskId)![1])]!;
  const replications = async () => Promise.all(diskIds.map((diskId) => unary(hosts.client.psA, hosts.client.psA.getReplication, { diskId })));
  const status = () => unary(cs, cs.getStatus, {});
  const rpoEvents = (system: SystemStatus__Output) => system.activeEvents.filter((event) => event.code === 'RPO_THRESHOLD_EXCEEDED' && diskIds.includes(event.subject));
  const phase = (name: string, since: number) => t.comment(`${name}: ${((Date.now() - since) / 1000).toFixed(1)} s`);

  /** Drains psA into a new point per disk (selector LATEST) and compares each, materialised at B, with its source. */
  const checkLatest = async (t: Test, label: string) => {
    const latest = await unary(cs, cs.selectRecoveryPoint, { machine: 'vm1', selector: 'LATEST' }, { timeoutMs: 120_000 });
    t.equal(latest.recoveryPoints.length, 2, `${label}: a latest point per disk`);
    for (const point of latest.recoveryPoints) {
      const target = path.join(hosts.dsB, 'check', `${label.replace(/\W+/g, '-')}-${point.diskId}.img`);
      await unary(cs, cs.materialiseRecoveryPoint, { recoveryPointId: point.id, path: target }, { timeoutMs: 120_000 });
      t.equal(sha256OfFile(target), sha256OfFile(sourceOf(point.diskId)), `${label}: ${point.id} materialised at B is byte-exact to the source at A`);
      fs.rmSync(target);
    }
  };

  await t.test('the daemons listen on their hosts, and only over mTLS', async (t) => {
    for (const [name, daemon] of Object.entries(hosts.daemons)) t.equal(daemon.address, hosts.endpoint[name as keyof Hosts['endpoint']], `${name} listens on its host's address`);
    const routeAB = await ip('-n', hosts.netns.siteA, 'route', 'get', hosts.address.siteB);
    t.match(routeAB.stdout, /dev toB /, `siteA reaches siteB over the link between the sites: ${routeAB.stdout.trim()}`);
    const routeACs = await ip('-n', hosts.netns.siteA, 'route', 'get', hosts.address.cs);
    t.match(routeACs.stdout, /dev toCS /, 'and the configuration server over its own link');

    const servers = await unary(cs, cs.listServers, {});
    t.same(servers.servers.map((server) => server.name).sort(), ['agentA', 'agentB', 'mtA', 'mtB', 'psA', 'psB'], 'every daemon registered over mTLS');
    for (const server of servers.servers) t.equal(server.address, hosts.endpoint[server.name as keyof Hosts['endpoint']], `${server.name} is known at its host's address`);

    const plainCs = createClient(v1.ConfigurationServer, hosts.endpoint.cs, grpc.credentials.createInsecure());
    await t.rejects(unary(plainCs, plainCs.getStatus, {}, { timeoutMs: 5_000 }), { code: grpc.status.UNAVAILABLE }, 'a plaintext call to the configuration server is refused');
    plainCs.close();
    const plainMt = createClient(v1.MasterTarget, hosts.endpoint.mtB, grpc.credentials.createInsecure());
    await t.rejects(unary(plainMt, plainMt.getStatus, {}, { timeoutMs: 5_000 }), { code: grpc.status.UNAVAILABLE }, 'a plaintext call to a master target (mtB) is refused');
    plainMt.close();
    // A client with a certificate from another CA: it trusts our CA, but ours do not trust it.
    const rogueDir = path.join(hosts.dir, 'rogue-ca');
    const certs = path.join(repoRoot, 'deploy', 'drplane-certs');
    await run('bash', [certs, 'init', rogueDir]);
    await run('bash', [certs, 'issue', rogueDir, 'intruder', '--role', 'operator']);
    const rogueCredentials = grpc.credentials.createSsl(fs.readFileSync(hosts.tls.caFile), fs.readFileSync(path.join(rogueDir, 'intruder.key')), fs.readFileSync(path.join(rogueDir, 'intruder.crt')));
    const rogue = createClient(v1.ConfigurationServer, hosts.endpoint.cs, rogueCredentials);
    await t.rejects(unary(rogue, rogue.getStatus, {}, { timeoutMs: 5_000 }), { code: grpc.status.UNAVAILABLE }, 'a client whose certificate another CA signed is refused');
    rogue.close();
    const anonymous = await hosts.drctlRaw('--json', 'status');
    t.not(anonymous.code, 0, `drctl without a certificate, on the configuration server's host, is refused: ${anonymous.stderr.trim().split('\n')[0]}`);
    const operator = await hosts.drctl('servers');
    t.equal(operator.code, 0, `drctl with the operator's certificate works there: ${operator.stderr.trim()}`);
  });

  // Protect vm1 A -> B with write-through capture, and keep writing through agentA.
  const protectStarted = Date.now();
  await hosts.drctlJson('policy', 'create', 'fast', '--crash-interval', `${crashIntervalMs}ms`, '--rpo-threshold', `${rpoThresholdMs / 1000}s`, '--app-interval', '0', '--group-interval', '0');
  await hosts.drctlJson('machine', 'add', 'vm1', '--agent', 'agentA', '--disk', homeDisks[0]!, '--disk', homeDisks[1]!);
  const enabled = await hosts.drctlJson<Job__Output>('enable', 'vm1', '--datastore', path.join(hosts.dsB, 'vm1'), '--process-server', 'psA', '--master-target', 'mtB', '--policy', 'fast', '--capture', 'write-through');
  const jobs: Job__Output[] = [enabled];
  const writerA = hosts.track(new WriteThroughClient(hosts.endpoint.agentA, { credentials: hosts.tls.credentials('agentA') }));
  const workload = new Workload(writerA, homeDisks, random);
  workload.start();
  // Steady: both sessions make points from change records applied at B, and the configuration server sees the RPO under the threshold.
  const before = await eventually(
    'both disks replicating A -> B with the RPO under the threshold',
    async () => {
      const sessions = await replications();
      const system = await status();
      const disks = system.disks.filter((disk) => diskIds.includes(disk.diskId));
      const replicating = sessions.every((session) => session.state === 'REPLICATION_REPLICATING' && Number(session.appliedSequence) > 0 && Number(session.recoveryPoints) >= 2);
      return replicating && disks.length === 2 && disks.every((disk) => Number(disk.rpoMs) < rpoThresholdMs) && rpoEvents(system).length === 0 ? { sessions, system } : undefined;
    },
    90_000,
  );
  t.equal(enabled.state, 'JOB_SUCCEEDED', 'drctl enable (on the configuration server host) protected vm1 A -> B');
  phase('protected, points flowing', protectStarted);

  await t.test('the link between the sites is cut for longer than a batch interval, then restored: nothing lost, the RPO recovers', async (t) => {
    const cutStarted = Date.now();
    // Whatever happens here, the next parts need the link back.
    t.teardown(() => hosts.restoreSites());
    const appliedBefore = before.sessions.map((session) => Number(session.appliedSequence));
    const captures = before.sessions.map((session) => session.captureId);
    const resyncs = before.sessions.map((session) => session.resyncs);
    await hosts.cutSites();
    const cutAt = Date.now();
    const probe = await ping(hosts.netns.siteA, hosts.address.siteB, 3, 0.2);
    t.equal(probe.received, 0, 'siteA cannot reach siteB any more (no other path between the sites)');
    const probeCs = await ping(hosts.netns.siteA, hosts.address.cs, 3, 0.2);
    t.ok(probeCs.received > 0, 'while both sites still reach the configuration server');

    // The configuration server still hears psA (its link is up): the backlog grows and the RPO passes the
    // threshold. The cut lasts until psA also finds mtB gone (its gRPC keepalive gives up on the connection,
    // within 30 s), so the restore is a reconnection over mTLS, not only TCP retransmitting.
    const firstSeen = await replications();
    let noticedMs = 0;
    const during = await eventually(
      'psA to find mtB unreachable and the RPO to pass the threshold at the configuration server, while the workload writes',
      async () => {
        const system = await status();
        const raised = rpoEvents(system).filter((event) => Number(event.raisedTimeMs) >= cutAt);
        const sessions = await replications();
        const grown = sessions.every((session, index) => Number(session.backlogBytes) > 0 && Number(session.receivedSequence) > Number(firstSeen[index]!.receivedSequence));
        const away = sessions.every((session) => !session.masterTargetConnected && session.state === 'REPLICATION_DEGRADED');
        if (away && !noticedMs) noticedMs = Date.now() - cutAt;
        return raised.length === 2 && grown && away ? { system, sessions, raised } : undefined;
      },
      // gRPC keepalive: a ping every keepalive_time_ms, the connection given up keepalive_timeout_ms after an unanswered one.
      Number(channelOptions['grpc.keepalive_time_ms']) + Number(channelOptions['grpc.keepalive_timeout_ms']) + 60_000,
    );
    t.comment(`psA found mtB unreachable ${noticedMs} ms into the cut: ${during.sessions[0]!.stateReason}`);
    const replicaDuring = await Promise.all(diskIds.map((diskId) => unary(hosts.client.mtB, hosts.client.mtB.getReplica, { diskId })));
    for (const [index, session] of during.sessions.entries()) {
      const disk = during.system.disks.find((candidate) => candidate.diskId === session.diskId)!;
      t.ok(Number(session.backlogBytes) > Number(before.sessions[index]!.backlogBytes), `${session.diskId}: psA's backlog grew to ${session.backlogBytes} bytes (received ${session.receivedSequence}, applied ${session.appliedSequence})`);
      t.ok(Number(disk.rpoMs) > rpoThresholdMs, `${session.diskId}: the RPO at the configuration server rose to ${disk.rpoMs} ms (threshold ${rpoThresholdMs} ms)`);
      t.ok(Number(session.appliedSequence) <= Number(firstSeen[index]!.appliedSequence), `${session.diskId}: nothing was applied across the cut (psA applied ${session.appliedSequence}, ${Number(session.receivedSequence) - Number(session.appliedSequence)} records waiting)`);
      t.ok(Number(replicaDuring[index]!.appliedChangeSequence) < Number(session.receivedSequence), `${session.diskId}: mtB stands at change ${replicaDuring[index]!.appliedChangeSequence}, behind the source`);
      t.match(session.stateReason, /master target/, `${session.diskId}: psA is DEGRADED and says why`);
    }
    t.ok(during.raised.every((event) => event.severity === 'HEALTH_WARNING'), `RPO_THRESHOLD_EXCEEDED raised for both disks: ${during.raised[0]!.message}`);
    await sleep(crashIntervalMs); // the workload writes on, one more batch interval into the cut
    await hosts.restoreSites();
    const cutMs = Date.now() - cutAt;
    t.ok(cutMs > 3 * crashIntervalMs, `the link was down ${cutMs} ms, longer than the batch interval (${crashIntervalMs} ms)`);

    // Restored: the backlog drains, points flow again and the RPO event clears, while the workload goes on.
    const restoredAt = Date.now();
    const recovered = await eventually(
      'the RPO to recover after the link is restored',
      async () => {
        const system = await status();
        const disks = system.disks.filter((disk) => diskIds.includes(disk.diskId));
        const fresh = disks.every((disk) => Number(disk.latestRecoveryPointTimeMs) > restoredAt && Number(disk.rpoMs) < rpoThresholdMs);
        return fresh && disks.length === 2 && rpoEvents(system).length === 0 ? system : undefined;
      },
      90_000,
    );
    t.comment(`RPO back under ${rpoThresholdMs} ms ${Date.now() - restoredAt} ms after the link came back: ${recovered.disks.map((disk) => `${disk.diskId} ${disk.rpoMs} ms, backlog ${disk.backlogBytes} bytes`).join('; ')}`);
    t.pass('the RPO fell back under the threshold and the RPO event cleared');
    const events = await unary(cs, cs.listHealthEvents, { machine: 'vm1', activeOnly: false, limit: 100 });
    const cleared = events.events.filter((event) => event.code === 'RPO_THRESHOLD_EXCEEDED' && Number(event.raisedTimeMs) >= cutAt && Number(event.clearedTimeMs) > 0);
    t.ok(cleared.length >= 2, `the events raised during the cut are cleared (${cleared.length})`);

    await workload.stop();
    const after = await replications();
    for (const [index, session] of after.entries()) {
      t.ok(Number(session.appliedSequence) > appliedBefore[index]!, `${session.diskId}: psA applied on past the cut (${appliedBefore[index]} -> ${session.appliedSequence})`);
      t.equal(session.captureId, captures[index], `${session.diskId}: the same capture throughout: the journal carried the cut`);
      t.equal(session.resyncs, resyncs[index], `${session.diskId}: no resync was needed`);
    }
    t.comment(`${workload.writes} writes (${(workload.bytes / MiB).toFixed(1)} MiB) through agentA so far`);
    await checkLatest(t, 'after the cut');
    workload.start();
    phase('link cut and restored', cutStarted);
  });

  await t.test('delay and loss on the link between the sites during continuous replication', async (t) => {
    const shapingStarted = Date.now();
    const link = hosts.siteLink.siteA;
    const shaping = await shapeLink(link.netns, link.device, { delayMs: 40, lossPercent: 2, fallbackRate: '16mbit', fallbackQueueMs: 200 });
    t.teardown(() => shaping.remove());
    t.comment(`shaping (${shaping.method}): ${shaping.description}`);
    const startSessions = await replications();
    const measured = await ping(link.netns, hosts.address.siteB, 50, 0.02);
    t.comment(`measured from siteA to siteB while replicating: ${measured.received}/${measured.transmitted} answered (${measured.lossPercent.toFixed(0)}% loss), rtt min/avg/max ${measured.rttMsMin}/${measured.rttMsAvg}/${measured.rttMsMax} ms`);
    if (shaping.method === 'netem') t.ok(measured.rttMsMin >= 40, 'netem delays every packet by 40 ms');
    const moved = await eventually(
      'replication to carry on over the shaped link',
      async () => {
        const sessions = await replications();
        return sessions.every((session, index) => Number(session.recoveryPoints) >= Number(startSessions[index]!.recoveryPoints) + 3 && Number(session.bytesApplied) >= Number(startSessions[index]!.bytesApplied) + 1 * MiB) ? sessions : undefined;
      },
      90_000,
    );
    for (const [index, session] of moved.entries()) {
      t.pass(`${session.diskId}: ${Number(session.recoveryPoints) - Number(startSessions[index]!.recoveryPoints)} points and ${((Number(session.bytesApplied) - Number(startSessions[index]!.bytesApplied)) / MiB).toFixed(1)} MiB applied over the shaped link`);
    }
    const second = await ping(link.netns, hosts.address.siteB, 50, 0.02);
    t.comment(`measured again: ${second.received}/${second.transmitted} answered (${second.lossPercent.toFixed(0)}% loss), rtt min/avg/max ${second.rttMsMin}/${second.rttMsAvg}/${second.rttMsMax} ms`);
    await workload.stop();
    await checkLatest(t, 'under delay and loss');
    await shaping.remove();
    phase('delay and loss', shapingStarted);
  });

  await t.test('planned failover A -> B, commit, reprotect B -> A, failback B -> A, run by drctl on the configuration server host', async (t) => {
    const cycleStarted = Date.now();
    await workload.stop(); // stopped already unless a part above failed half-way
    await writeThrough(writerA, homeDisks, diskBytes, 100, random);
    const failover = await hosts.drctlJson<Job__Output>('failover', 'vm1', '--planned');
    jobs.push(failover);
    let machine = await hosts.machine('vm1');
    t.equal(machine.state, 'FAILED_OVER', 'failed over to B, commit pending');
    const disksB = machine.recovery!.diskPaths;
    t.equal(disksB.length, 2, 'a recovered disk per disk at B');
    for (const [index, disk] of homeDisks.entries()) t.equal(sha256OfFile(disksB[index]!), sha256OfFile(disk), `B's ${path.basename(disksB[index]!)} equals the source at A at shutdown`);
    await t.rejects(writerA.write(homeDisks[0]!, 0, Buffer.alloc(4096, 1)), /shut down/, 'the source at A takes no more writes');

    jobs.push(await hosts.drctlJson<Job__Output>('commit', 'vm1'));
    t.equal((await hosts.machine('vm1')).state, 'COMMITTED', 'committed');
    const changedOnB = writeDirect(disksB, diskBytes, 40, random);

    const reprotected = await hosts.drctlJson<Job__Output>('reprotect', 'vm1', '--agent', 'agentB', '--process-server', 'psB', '--master-target', 'mtA', '--datastore', path.join(hosts.dsA, 'vm1'));
    jobs.push(reprotected);
    machine = await hosts.machine('vm1');
    t.equal(machine.state, 'PROTECTED', 'protected again');
    t.equal(machine.direction, 'REVERSE', 'B -> A');
    t.comment(`reprotect to the original location sent ${reprotected.bytesSent} bytes for ${changedOnB} bytes changed on B`);

    const writerB = hosts.track(new WriteThroughClient(hosts.endpoint.agentB, { credentials: hosts.tls.credentials('agentB') }));
    await writeThrough(writerB, disksB, diskBytes, 100, random);
    jobs.push(await hosts.drctlJson<Job__Output>('failback', 'vm1'));
    machine = await hosts.machine('vm1');
    t.equal(machine.state, 'PROTECTED', 'failed back and protected');
    t.equal(machine.direction, 'FORWARD', 'from home again (A -> B)');
    t.same(machine.disks.map((disk) => disk.sourcePath), homeDisks, 'running on its original disks at A');
    for (const [index, disk] of homeDisks.entries()) t.equal(sha256OfFile(disk), sha256OfFile(disksB[index]!), `${path.basename(disk)} at A equals B's disk at shutdown`);

    const writerHome = hosts.track(new WriteThroughClient(hosts.endpoint.agentA, { credentials: hosts.tls.credentials('agentA') }));
    await writeThrough(writerHome, homeDisks, diskBytes, 50, random);
    await checkLatest(t, 'protected from home after failback');

    for (const job of jobs) {
      t.equal(job.state, 'JOB_SUCCEEDED', `${job.kind} ${job.jobId} succeeded`);
      t.ok(job.steps.every((step) => step.state === 'JOB_SUCCEEDED'), `every step of ${job.kind} finished: ${job.steps.map((step) => step.name).join(', ')}`);
    }
    t.same(jobs.map((job) => job.kind), ['enable-replication', 'failover', 'commit', 'reprotect', 'failback'], 'one job per operation');
    phase('failover and failback cycle', cycleStarted);
  });
  phase('whole test', testStarted);
});
