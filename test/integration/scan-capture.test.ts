// Goal (issue 3, must-show 6): scan-mode capture replicates changes that
// another process makes to an image file (the agent is not in the write path).
// A quiet pass (nothing changed since the previous one) makes a
// crash-consistent point; the point made after the writer stopped materialises
// to exactly the source.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { unary } from '../../shared/grpc';
import type { RecoveryPoint__Output } from '../../generated/drplane/v1/RecoveryPoint';
import { createImage } from '../helpers/disks';
import { eventually, startStack } from '../helpers/stack';
import { sha256OfFile } from '../helpers/write-log';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 16 * MiB;

/** Another process: node rewriting random 4 KiB blocks of the image for a while, then exiting. */
function externalWriter(file: string, writes: number, writeSeed: number): Promise<number> {
  const script = `
    const fs = require('node:fs');
    let state = ${writeSeed} >>> 0;
    const random = () => ((state = (Math.imul(state, 1664525) + 1013904223) >>> 0) / 2 ** 32);
    const fd = fs.openSync(${JSON.stringify(file)}, 'r+');
    const blocks = ${diskBytes / 4096};
    const block = Buffer.alloc(4096);
    for (let index = 0; index < ${writes}; index++) {
      for (let byte = 0; byte < block.length; byte++) block[byte] = random() * 256;
      fs.writeSync(fd, block, 0, block.length, Math.floor(random() * blocks) * 4096);
      if (index % 50 === 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    }
    fs.closeSync(fd);
  `;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['-e', script], { stdio: 'inherit' });
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve(writes) : reject(new Error(`writer exited ${code}`))));
  });
}

t.test('scan mode picks up changes made by another process', async (t) => {
  t.comment(`seed ${seed}`);
  const dir = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'drplane-scan-'));
  const source = path.join(dir, 'source.img');
  createImage(source, diskBytes, seed);
  const stack = await startStack(t, { dir, agents: [{ name: 'agent1', disks: [source] }] });
  await stack.drctlJson('policy', 'create', 'fast', '--crash-interval', '1s', '--app-interval', '0', '--group-interval', '0');
  await stack.drctlJson('machine', 'add', 'vm1', '--agent', 'agent1', '--disk', source);
  const job = await stack.drctlJson<{ state: string }>('enable', 'vm1', '--datastore', path.join(stack.datastore, 'vm1'), '--policy', 'fast', '--capture', 'scan', '--scan-interval', '300ms');
  t.equal(job.state, 'JOB_SUCCEEDED', 'replication enabled in scan mode');

  const written = await externalWriter(source, 400, seed + 7);
  const writerEndedMs = Date.now();
  const expected = sha256OfFile(source);
  t.comment(`another process wrote ${written} blocks`);

  // A quiet pass after the writer ended makes a crash-consistent point of the final state.
  const point = await eventually('a point of a pass that began after the writer ended', async () => {
    const { recoveryPoints } = await unary(stack.csClient, stack.csClient.listRecoveryPoints, { machine: 'vm1', diskId: '' });
    return recoveryPoints.filter((candidate) => candidate.sourceTimeMs > writerEndedMs + 400).pop() as RecoveryPoint__Output | undefined;
  });
  t.equal(point.kind, 'CRASH_CONSISTENT');
  const materialised = await unary(stack.csClient, stack.csClient.materialiseRecoveryPoint, { recoveryPointId: point.id, path: path.join(stack.datastore, 'restore', 'scan.img') });
  t.equal(sha256OfFile(materialised.path), expected, 'the point equals the source as the other process left it');
  const replication = await unary(stack.psClient, stack.psClient.getReplication, { diskId: 'vm1-disk0' });
  t.equal(replication.captureMode, 'CAPTURE_SCAN');
  t.equal(replication.resyncs, 0, 'the changes came through the scan, not a resync');
});
