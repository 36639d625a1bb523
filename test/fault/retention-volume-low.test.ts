// Goal: a master target whose retention volume runs low (a 24 MiB tmpfs, root
// only) raises RETENTION_VOLUME_LOW at the configuration server, naming the
// master target, the volume and what to do; freeing the space clears it.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { configurationServerClient, makeExtent, masterTargetClient, sendFrames, unary } from '../helpers/clients';
import { startDaemon, tempDir } from '../helpers/daemons';
import { eventually } from '../helpers/stack';
import { tmpfsVolume, whyNoTmpfs } from '../helpers/disks';

const MiB = 1024 * 1024;

t.test('a retention volume running low raises RETENTION_VOLUME_LOW; room again clears it', { skip: whyNoTmpfs }, async (t) => {
  const dir = tempDir();
  const volume = tmpfsVolume(t, dir, '24m');
  const cs = await startDaemon('configuration-server', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'cs'), '--heartbeat-interval-ms', '200', '--status-poll-interval-ms', '200'] });
  t.teardown(() => cs.stop());
  fs.writeFileSync(path.join(dir, 'mt.json'), JSON.stringify({ retentionDir: volume, retentionFreeBytesMin: 0 }));
  const mt = await startDaemon('master-target', { args: ['--listen', '127.0.0.1:0', '--name', 'mt1', '--data-dir', path.join(dir, 'mt'), '--datastore-root', path.join(dir, 'ds'), '--config', path.join(dir, 'mt.json'), '--configuration-server', cs.address, '--passphrase-file', path.join(dir, 'cs', 'passphrase')] });
  t.teardown(() => mt.stop());
  await mt.waitForLog((line) => line.msg === 'registered with the configuration server');
  const csClient = configurationServerClient(cs.address);
  const client = masterTargetClient(mt.address);
  t.teardown(() => (csClient.close(), client.close()));
  const events = async () => (await unary(csClient, csClient.listHealthEvents, { activeOnly: true })).events.filter((event) => event.code === 'RETENTION_VOLUME_LOW');

  await new Promise((resolve) => setTimeout(resolve, 1_000));
  t.same(await events(), [], 'no event while the volume has room');
  // Fill the volume with something else than the store: the master target's view of its free space is what counts.
  const filler = path.join(volume, 'filler');
  const free = () => {
    const stats = fs.statfsSync(volume);
    return stats.bavail * stats.bsize;
  };
  fs.writeFileSync(filler, Buffer.alloc(free() - 1 * MiB));
  const raised = await eventually('RETENTION_VOLUME_LOW raised', async () => (await events())[0], 15_000);
  t.equal(raised.severity, 'HEALTH_ERROR');
  t.match(raised.message, new RegExp(`master target mt1.*retention volume ${volume.replace(/[/]/g, '\\/')} has .* free of .*shorten retention windows.*grow the volume`), 'names the master target, the volume, and what to do');
  // It still serves: a batch that fits applies.
  await unary(client, client.createReplica, { diskId: 'd', path: path.join(dir, 'ds', 'd.img'), diskBytes: 4 * MiB, epoch: 1 });
  t.error((await sendFrames(client, [{ diskId: 'd', epoch: 1, sequence: 1, extents: [await makeExtent(0, Buffer.alloc(4096, 1), false)], last: true, recoveryPointKind: 'CRASH_CONSISTENT' }])).error, 'a small batch still applies');
  fs.rmSync(filler);
  await eventually('RETENTION_VOLUME_LOW cleared', async () => ((await events()).length === 0 ? true : undefined), 15_000);
  t.pass('cleared once the volume has room again');
});
