// Goal (issue 3, must-show 2 and 3):
// - app-consistent points: the agent's hooks run in order (freeze, then the
//   marker, then thaw), the point is listed as app-consistent and
//   latest-app-consistent selects it, and it materialises exactly; a failing
//   freeze hook answers promptly with an error, raises a health event and makes
//   no app-consistent point.
// - group-consistent points: two machines (two agents) in one replication
//   group; one writer alternates writes between their disks, one at a time, so
//   the writes have a single global order. Every common point must contain a
//   prefix of that order on both disks together (no write after the barrier on
//   one disk while a write before it on the other is missing), and each disk
//   materialises to exactly its state at the barrier.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { unary } from '../../shared/grpc';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import type { RecoveryPoint__Output } from '../../generated/drplane/v1/RecoveryPoint';
import { createImage, seededRandom } from '../helpers/disks';
import { eventually, startStack, type Stack } from '../helpers/stack';
import { randomWrite, sha256OfFile, WriteLog } from '../helpers/write-log';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 8 * MiB;
/** How long the agent lets a hook run: the hanging freeze hook is killed after it. */
const hookTimeoutMs = 2_000;
/** Writes the group test's workload makes before each barrier, at least. */
const writesBetweenBarriers = 100;

async function enableWriteThrough(stack: Stack, machine: string, agentName: string, source: string): Promise<void> {
  await stack.drctlJson('machine', 'add', machine, '--agent', agentName, '--disk', source);
  const job = await stack.drctlJson<{ state: string }>('enable', machine, '--datastore', path.join(stack.datastore, machine), '--policy', 'fast', '--capture', 'write-through');
  if (job.state !== 'JOB_SUCCEEDED') throw new Error(`enable ${machine}: ${JSON.stringify(job)}`);
}

async function pointsOf(stack: Stack, machine: string): Promise<RecoveryPoint__Output[]> {
  return (await unary(stack.csClient, stack.csClient.listRecoveryPoints, { machine, diskId: '' })).recoveryPoints;
}

// One site for both tests (its start-up is not what either is about): agent1
// (with the hooks) holds vm1's disk for the app-consistent test; agentA and
// agentB hold the group's two machines.
const dir = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'drplane-app-group-'));
const source = path.join(dir, 'source.img');
const sources = { vmA: path.join(dir, 'a.img'), vmB: path.join(dir, 'b.img') } as const;
const hookLog = path.join(dir, 'hooks.log');
const failFlag = path.join(dir, 'fail-freeze');
const hangFlag = path.join(dir, 'hang-freeze');
let stack: Stack;
t.before(async () => {
  createImage(source, diskBytes, seed);
  createImage(sources.vmA, diskBytes, seed + 2);
  createImage(sources.vmB, diskBytes, seed + 3);
  // Each hook appends its name and the time in ms; the freeze hook fails while the fail flag exists and hangs while the hang flag does.
  const stamp = (name: string) => `echo ${name} $(($(date +%s%N) / 1000000)) >> ${hookLog}`;
  stack = await startStack(t, {
    dir,
    agents: [
      { name: 'agent1', disks: [source], args: ['--freeze-hook', `if [ -e ${hangFlag} ]; then sleep 600; fi; test ! -e ${failFlag} && ${stamp('freeze')}`, '--thaw-hook', stamp('thaw'), '--hook-timeout-ms', String(hookTimeoutMs)] },
      { name: 'agentA', disks: [sources.vmA] },
      { name: 'agentB', disks: [sources.vmB] },
    ],
  });
  await stack.drctlJson('policy', 'create', 'fast', '--crash-interval', '1s', '--app-interval', '0', '--group-interval', '0');
});

t.test('app-consistent points: hooks in order, selectable, exact; a failing freeze is an event, not a hang', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const log = new WriteLog(fs.readFileSync(source));
  await enableWriteThrough(stack, 'vm1', 'agent1', source);

  const writer = new WriteThroughClient(stack.agents.get('agent1')!.address);
  t.teardown(() => writer.close());
  const writeSome = async (count: number) => {
    for (let index = 0; index < count; index++) {
      const { offset, data } = randomWrite(random, diskBytes);
      const { sequence, captureId } = await writer.write(source, offset, data);
      log.add({ captureId, sequence, offset, data });
    }
  };
  await writeSome(50);

  const taken = await stack.drctlJson<{ recoveryPoints: RecoveryPoint__Output[] }>('app-point', 'vm1', '--tag', 'nightly');
  const appPoint = taken.recoveryPoints[0]!;
  t.match(appPoint, { kind: 'APP_CONSISTENT', tag: 'nightly' }, 'the point is app-consistent and tagged');
  const hooks = fs.readFileSync(hookLog, 'utf8').trim().split('\n').map((line) => line.split(' '));
  t.same(hooks.map(([name]) => name), ['freeze', 'thaw'], 'freeze ran, then thaw');
  const [freezeMs, thawMs] = hooks.map(([, ms]) => Number(ms));
  t.ok(freezeMs! <= appPoint.sourceTimeMs && appPoint.sourceTimeMs <= thawMs!, `the marker (${appPoint.sourceTimeMs}) sits between freeze (${freezeMs}) and thaw (${thawMs})`);
  t.equal(appPoint.changeSequence, log.lastSequence + 1, 'the marker follows the last write before the freeze');

  await writeSome(30);
  const selected = await stack.drctlJson<{ recoveryPoints: RecoveryPoint__Output[] }>('points', 'vm1', '--select', 'latest-app-consistent');
  t.equal(selected.recoveryPoints[0]!.id, appPoint.id, 'latest-app-consistent selects it, though newer crash-consistent points exist');
  const materialised = await unary(stack.csClient, stack.csClient.materialiseRecoveryPoint, { recoveryPointId: appPoint.id, path: path.join(stack.datastore, 'restore', 'app.img') });
  t.equal(sha256OfFile(materialised.path), log.hashAt(appPoint.changeSequence), 'the app-consistent point materialises to the source at the freeze');

  // A failing freeze hook.
  fs.writeFileSync(failFlag, '');
  const started = Date.now();
  const failed = await stack.drctl('app-point', 'vm1', '--tag', 'doomed');
  t.not(failed.code, 0, 'the app point fails');
  t.match(failed.stderr, /FAILED_PRECONDITION.*freeze/i, `the error names the freeze hook: ${failed.stderr.trim()}`);
  t.comment(`answered in ${Date.now() - started} ms`);
  const events = await eventually('a FREEZE_HOOK_FAILED event', async () => {
    const { events } = await unary(stack.csClient, stack.csClient.listHealthEvents, { machine: 'vm1', activeOnly: true, limit: 0 });
    return events.find((event) => event.code === 'FREEZE_HOOK_FAILED') ? events : undefined;
  });
  t.ok(events.length > 0, 'the failing freeze hook raised a health event');
  const status = await stack.drctlJson<{ activeEvents: { code: string }[] }>('status');
  t.ok(status.activeEvents.some((event) => event.code === 'FREEZE_HOOK_FAILED'), 'drctl status shows it');
  const thaws = fs.readFileSync(hookLog, 'utf8').trim().split('\n').filter((line) => line.startsWith('thaw')).length;
  t.equal(thaws, 2, 'thaw ran after the failed freeze too');
  const stillLatest = await stack.drctlJson<{ recoveryPoints: RecoveryPoint__Output[] }>('points', 'vm1', '--select', 'latest-app-consistent');
  t.equal(stillLatest.recoveryPoints[0]!.id, appPoint.id, 'no app-consistent point was made');
  t.notOk((await pointsOf(stack, 'vm1')).some((point) => point.tag === 'doomed'), 'no point carries the failed tag');

  // A freeze hook that hangs is killed at the agent's hook timeout: an error, not a hang.
  fs.rmSync(failFlag);
  fs.writeFileSync(hangFlag, '');
  const hung = await stack.drctl('app-point', 'vm1', '--tag', 'hung');
  t.not(hung.code, 0, 'the app point with a hanging freeze hook fails');
  t.match(hung.stderr, new RegExp(`FAILED_PRECONDITION.*timed out after ${hookTimeoutMs} ms`), `it says the hook timed out: ${hung.stderr.trim()}`);
  fs.rmSync(hangFlag);
  t.notOk((await pointsOf(stack, 'vm1')).some((point) => point.tag === 'hung'), 'and made no point');

  // The next successful app point clears the event.
  await stack.drctlJson('app-point', 'vm1', '--tag', 'again');
  await eventually('the event to clear', async () => {
    const { events } = await unary(stack.csClient, stack.csClient.listHealthEvents, { machine: 'vm1', activeOnly: true, limit: 0 });
    return events.some((event) => event.code === 'FREEZE_HOOK_FAILED') ? undefined : true;
  });
  t.pass('a successful app point cleared the event');
});

t.test('group-consistent points: one barrier across two machines', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed + 1);
  const logs = { vmA: new WriteLog(fs.readFileSync(sources.vmA)), vmB: new WriteLog(fs.readFileSync(sources.vmB)) };
  await Promise.all([enableWriteThrough(stack, 'vmA', 'agentA', sources.vmA), enableWriteThrough(stack, 'vmB', 'agentB', sources.vmB)]);
  await stack.drctlJson('group', 'create', 'g1', '--machine', 'vmA', '--machine', 'vmB');

  const writers = { vmA: new WriteThroughClient(stack.agents.get('agentA')!.address), vmB: new WriteThroughClient(stack.agents.get('agentB')!.address) };
  t.teardown(() => Object.values(writers).forEach((writer) => writer.close()));
  /** The global order: which machine, and the sequence its agent gave the write. */
  const order: { machine: 'vmA' | 'vmB'; sequence: number }[] = [];
  let writing = true;
  const workload = (async () => {
    while (writing) {
      const machine = random() < 0.5 ? 'vmA' : 'vmB';
      const { offset, data } = randomWrite(random, diskBytes);
      const { sequence, captureId } = await writers[machine].write(sources[machine], offset, data);
      logs[machine].add({ captureId, sequence, offset, data });
      order.push({ machine, sequence });
    }
  })();

  const groupPoints: { groupPointId: string }[] = [];
  for (let index = 0; index < 3; index++) {
    // Some writes (either machine, at random) since the last barrier; the workload goes on while the next is taken.
    const before = order.length;
    await Promise.race([
      eventually(`${writesBetweenBarriers} more writes`, async () => (order.length >= before + writesBetweenBarriers ? true : undefined), 60_000, 20),
      workload.then(() => Promise.reject(new Error('the workload ended before the barriers'))),
    ]);
    // The call drctl group point makes (configuration-server-groups.test.ts runs that command): here the barrier
    // lands within milliseconds of the writes counted above, not after a drctl start-up while the writes pile up.
    groupPoints.push(await unary(stack.csClient, stack.csClient.takeGroupPoint, { group: 'g1', tag: `barrier-${index}` }, { timeoutMs: 2 * 60_000 }));
  }
  writing = false;
  await workload;
  const perMachine = { vmA: order.filter((write) => write.machine === 'vmA').length, vmB: order.filter((write) => write.machine === 'vmB').length };
  const switches = order.filter((write, index) => index > 0 && write.machine !== order[index - 1]!.machine).length;
  t.ok(perMachine.vmA > 0 && perMachine.vmB > 0 && switches >= order.length / 4, `${order.length} writes, interleaved between the two machines (vmA ${perMachine.vmA}, vmB ${perMachine.vmB}, ${switches} switches)`);

  const listed = await eventually('every group point to be complete', async () => {
    const { points } = await unary(stack.csClient, stack.csClient.listGroupPoints, { group: 'g1' });
    return points.length >= groupPoints.length && points.every((point) => point.complete) ? points : undefined;
  });
  for (const point of listed) {
    const members = new Map(point.members.map((member) => [member.diskId, member]));
    const memberA = members.get('vmA-disk0')!;
    const memberB = members.get('vmB-disk0')!;
    t.match([memberA.kind, memberB.kind], ['GROUP_CONSISTENT', 'GROUP_CONSISTENT'], `${point.groupPointId}: both members are group-consistent points`);
    // The writes the point holds, in global order: they must be a prefix of it.
    const included = order.map((write) => write.sequence <= (write.machine === 'vmA' ? memberA.changeSequence : memberB.changeSequence));
    const prefixLength = included.indexOf(false) === -1 ? included.length : included.indexOf(false);
    t.notOk(included.slice(prefixLength).includes(true), `${point.groupPointId}: the point holds the first ${prefixLength} writes of the global order and none after`);
    for (const [machine, member] of [['vmA', memberA], ['vmB', memberB]] as const) {
      const materialised = await unary(stack.csClient, stack.csClient.materialiseRecoveryPoint, { recoveryPointId: member.id, path: path.join(stack.datastore, 'restore', `${point.groupPointId}-${machine}.img`) });
      t.equal(sha256OfFile(materialised.path), logs[machine].hashAt(member.changeSequence), `${point.groupPointId}: ${machine} materialises to its state at the barrier`);
      fs.rmSync(materialised.path);
    }
  }
});
