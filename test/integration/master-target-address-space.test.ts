// Goal: a master target under an address-space limit (RLIMIT_AS: systemd's
// LimitAS=, ulimit -v) starts, says so, and replicates; lmdb, asked to map its
// usual 1 TiB there, killed the process with SIGSEGV and no word. A retention
// store larger than the room the limit leaves is refused at start with a
// clear message (exit 2), not mapped. Also the map size's arithmetic.
import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import t, { type Test } from 'tap';
import { addressSpaceHeadroomBytes, retentionMapBytes, retentionMapBytesMin, retentionMapSize, wasmMemoryReservationBytes } from '../../daemons/master-target/retention-map';
import { startDaemon, tempDir } from '../helpers/daemons';
import { makeExtent, masterTargetClient, sendFrames, unary } from '../helpers/clients';

const MiB = 1024 * 1024;
/** prlimit is util-linux's (essential on Debian; scripts/install-test-deps.sh names it). */
const noPrlimit = spawnSync('prlimit', ['--version']).error ? 'prlimit (util-linux) is not installed' : false;
const GiB = 1024 * MiB;
/** Room for Node and its WebAssembly hasher (about 11 GiB), two hashing threads' hashers (20 GiB) and a map of a few GiB; not for the direct-write buffers' memories. */
const limitBytes = 40 * GiB;
/** Room for Node and its hasher only. */
const tightLimitBytes = 16 * GiB;

const limits = (soft: string) => `Limit                     Soft Limit           Hard Limit           Units\nMax address space         ${soft}            unlimited            bytes\n`;
const status = (vmSizeKiB: number) => `Name:\tnode\nVmPeak:\t  99 kB\nVmSize:\t ${vmSizeKiB} kB\n`;

t.test('the map size under a limit', async (t) => {
  t.same(retentionMapSize(limits('unlimited'), status(1_000_000)), { bytes: retentionMapBytes }, 'no limit: the whole map');
  const limited = retentionMapSize(limits(String(10 * GiB)), status(2 * 1024 * 1024));
  t.equal(limited.bytes, 4 * GiB, 'half of the room left (10 GiB - 2 GiB in use)');
  t.equal(limited.limitBytes, 10 * GiB);
  t.equal(limited.neededBytes, 2 * GiB + addressSpaceHeadroomBytes, 'what it needs: what it holds and room to grow');
  t.equal(retentionMapSize(limits(String(10 * GiB + 100 * MiB)), status(2 * 1024 * 1024)).bytes, 4 * GiB, 'in whole 64 MiB');
  t.equal(retentionMapSize(limits(String(GiB)), status(2 * 1024 * 1024)).bytes, retentionMapBytesMin, 'never below the minimum');
  t.equal(retentionMapSize(limits(String(2 ** 50)), status(0)).bytes, retentionMapBytes, 'never above the usual map');
  t.equal(retentionMapSize(limits(String(30 * GiB)), status(2 * 1024 * 1024), 2 * wasmMemoryReservationBytes).bytes, 4 * GiB, 'room kept for two hashing threads (30 - 2 - 20 GiB, halved)');
});

async function startLimited(t: Test, limit: number) {
  const dir = tempDir();
  const datastore = path.join(dir, 'ds');
  const configPath = path.join(dir, 'mt.json');
  fs.writeFileSync(configPath, JSON.stringify({ datastoreRoots: [datastore] }));
  const mt = await startDaemon('master-target', { args: ['--config', configPath, '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt')], addressSpaceBytes: limit });
  t.teardown(() => mt.stop());
  const client = masterTargetClient(mt.address);
  t.teardown(() => client.close());
  const replicaPath = path.join(datastore, 'd.img');
  await unary(client, client.createReplica, { diskId: 'd', path: replicaPath, diskBytes: 4 * MiB, epoch: 1 });
  const data = Buffer.alloc(MiB, 7);
  const sent = await sendFrames(client, [{ diskId: 'd', epoch: 1, sequence: 1, extents: [await makeExtent(0, data, false)], last: true, recoveryPointKind: 'CRASH_CONSISTENT', sourceTimeMs: Date.now() }]);
  t.error(sent.error, 'a batch applies');
  t.ok(fs.readFileSync(replicaPath).subarray(0, MiB).equals(data), 'and is on the replica');
  const points = (await unary(client, client.listRecoveryPoints, { diskId: 'd' })).recoveryPoints;
  t.equal(points.length, 1, 'with its point');
  const restored = await unary(client, client.materialiseRecoveryPoint, { recoveryPointId: points[0]!.id, path: path.join(datastore, 'restore', 'd.img') });
  t.ok(fs.readFileSync(restored.path).subarray(0, MiB).equals(data), 'the point materialises');
  return { mt, client };
}

t.test('a master target under a tight LimitAS starts, warns and replicates through the page cache', { skip: noPrlimit }, async (t) => {
  const { mt, client } = await startLimited(t, tightLimitBytes);
  const warned = mt.logs.find((line) => typeof line.msg === 'string' && line.msg.startsWith('the address space is limited'));
  t.equal(warned?.limitBytes, tightLimitBytes, 'the warning names the limit');
  t.equal(warned?.mapBytes, retentionMapBytesMin, 'the map is the smallest (no room is left)');
  t.ok(mt.logs.some((line) => line.level === 50 && typeof line.msg === 'string' && line.msg.startsWith('the address-space limit is below what the master target needs') && Number(line.neededBytes) > tightLimitBytes), 'and an error says the limit is below what it needs');
  t.ok(mt.logs.some((line) => line.msg === 'no aligned buffer for direct writes can be made (an address-space limit?): replicas are written through the page cache'), 'replica writes go through the page cache: V8 reserves about 10 GiB per WebAssembly memory, which the limit does not leave');
  const rescan = await unary(client, client.openHashTree, { diskId: 'd', rescan: true }).catch((error: Error & { code?: number }) => error);
  t.match(rescan, { code: 8, message: /a hashing thread cannot reserve the address space of its WebAssembly hasher .*: this process's address-space limit \(LimitAS= of the unit, or ulimit -v\) is too low for it; raise or remove the limit/ }, 'a hashing thread without room says why (RESOURCE_EXHAUSTED)');
  await unary(client, client.getReplica, { diskId: 'd' });
  t.pass('and the daemon serves on');

  // The store outgrows its small map: every batch overwrites the same MiB, so each keeps a MiB of before-images.
  const random = Buffer.alloc(MiB);
  let applied = 1;
  let refusal: Error | undefined;
  for (let sequence = 2; sequence <= 1 + (3 * retentionMapBytesMin) / MiB; sequence++) {
    for (let index = 0; index < random.length; index += 4) random.writeUInt32LE((sequence * 2654435761 + index) >>> 0, index);
    const result = await sendFrames(client, [{ diskId: 'd', epoch: 1, sequence, extents: [await makeExtent(0, random, false)], last: true, recoveryPointKind: 'CRASH_CONSISTENT', sourceTimeMs: Date.now() }]);
    if (result.error) {
      refusal = result.error;
      break;
    }
    applied = sequence;
  }
  t.comment(`applied ${applied} batches${refusal ? `, then: ${refusal.message}` : ''}`);
  const replica = await unary(client, client.getReplica, { diskId: 'd' });
  t.equal(Number(replica.appliedSequence), applied, 'the daemon serves on past its first map, and says how far it got');
});

t.test('under a looser LimitAS the hashing threads still have room', { skip: noPrlimit }, async (t) => {
  const { mt, client } = await startLimited(t, limitBytes);
  const warned = mt.logs.find((line) => typeof line.msg === 'string' && line.msg.startsWith('the address space is limited'));
  t.ok(Number(warned?.mapBytes) > retentionMapBytesMin && Number(warned?.mapBytes) < limitBytes, `the map is what is left after the hashers' room, halved (${warned?.mapBytes} bytes)`);
  t.notOk(mt.logs.some((line) => line.level === 50), 'with enough room for its hashers and heap, no error');
  // A rescan hashes the replica in the worker pool, each worker with its own WebAssembly hasher.
  const tree = await unary(client, client.openHashTree, { diskId: 'd', rescan: true });
  t.ok(tree.treeId, 'a rescan hashes the replica in the hashing threads');
});

t.test('a store larger than the limit leaves room for is refused with a clear message', { skip: noPrlimit }, async (t) => {
  const dir = tempDir();
  // The default retention directory (<dataDir>/retention): an explicit one must be a volume of its own.
  const retentionDir = path.join(dir, 'mt', 'retention');
  fs.mkdirSync(retentionDir, { recursive: true });
  // Sparse: the size is what counts, and the check comes before lmdb reads a byte.
  fs.writeFileSync(path.join(retentionDir, 'retention.lmdb'), '');
  fs.truncateSync(path.join(retentionDir, 'retention.lmdb'), 64 * GiB);
  const configPath = path.join(dir, 'mt.json');
  fs.writeFileSync(configPath, JSON.stringify({ datastoreRoots: [path.join(dir, 'ds')], retentionFreeBytesMin: 0 }));
  const refused = await startDaemon('master-target', { args: ['--config', configPath, '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt')], addressSpaceBytes: limitBytes, expectExit: true });
  const { code, signal } = await refused.exited;
  t.equal(signal, null, 'no SIGSEGV');
  t.equal(code, 2, 'exit 2, as every start-up refusal');
  await new Promise((resolve) => setTimeout(resolve, 200));
  t.match(refused.stderr.join(''), /does not fit in the \d+ bytes of address space this process's limit \(RLIMIT_AS: LimitAS= of the unit, or ulimit -v\) leaves for it: raise or remove the limit/);
});
