// gRPC clients and a batch sender for tests that talk to the real daemons.
import fs from 'node:fs';
import path from 'node:path';
import type * as grpc from '@grpc/grpc-js';
import type { Test } from 'tap';
import { startDaemon, type RunningDaemon } from './daemons';
import { createClient } from '../../shared/grpc';
import { v1 } from '../../shared/proto';
import { blockHashes, initHashing } from '../../shared/hashing';
import { encode } from '../../shared/codec';
import type { BatchFrame } from '../../generated/drplane/v1/BatchFrame';
import type { BatchAck__Output } from '../../generated/drplane/v1/BatchAck';
import type { Extent } from '../../generated/drplane/v1/Extent';
import type { SyncStatus__Output } from '../../generated/drplane/v1/SyncStatus';
import { unary as callUnary } from '../../shared/grpc';

export { unary } from '../../shared/grpc';

export const masterTargetClient = (address: string) => createClient(v1.MasterTarget, address);
export const processServerClient = (address: string) => createClient(v1.ProcessServer, address);
export const agentClient = (address: string) => createClient(v1.Agent, address);
export const configurationServerClient = (address: string) => createClient(v1.ConfigurationServer, address);

/** An extent as the process server would send it. */
export async function makeExtent(offset: number, plain: Buffer, compress = true): Promise<Extent> {
  await initHashing();
  const { codec, data } = encode(plain, compress);
  return { offset, length: plain.length, codec, data, blockHashes: blockHashes(plain) };
}

export interface SendResult {
  acks: BatchAck__Output[];
  error?: grpc.ServiceError;
}

/** Sends frames on one ApplyBatches stream and collects the acks until the stream ends. */
export function sendFrames(client: ReturnType<typeof masterTargetClient>, frames: BatchFrame[]): Promise<SendResult> {
  return new Promise((resolve) => {
    const acks: BatchAck__Output[] = [];
    const call = client.applyBatches();
    call.on('data', (ack: BatchAck__Output) => acks.push(ack));
    call.on('error', (error: grpc.ServiceError) => resolve({ acks, error }));
    call.on('end', () => resolve({ acks }));
    void (async () => {
      for (const frame of frames) {
        if (!call.write(frame)) await new Promise((r) => call.once('drain', r));
      }
      call.end();
    })();
  });
}

/** Polls the process server until the disk's sync is no longer running, or `until` says so earlier. */
export async function waitForSync(client: ReturnType<typeof processServerClient>, diskId: string, until: (status: SyncStatus__Output) => boolean = () => false): Promise<SyncStatus__Output> {
  for (;;) {
    const status = await callUnary(client, client.getSync, { diskId });
    if (until(status) || status.state !== 'SYNC_STATE_RUNNING') return status;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A master target on a free port with its data under dir (datastore root dir/ds) and a client; both stop at the test's end. */
export async function startMasterTarget(t: Test, dir: string, env?: NodeJS.ProcessEnv): Promise<{ mt: RunningDaemon; client: ReturnType<typeof masterTargetClient>; datastore: string }> {
  const datastore = path.join(dir, 'ds');
  const mt = await startDaemon('master-target', { args: ['--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt'), '--datastore-root', datastore], env });
  t.teardown(() => mt.stop());
  const client = masterTargetClient(mt.address);
  t.teardown(() => client.close());
  return { mt, client, datastore };
}

/** Like startMasterTarget, with more configuration keys (pruneIntervalMs, retentionDir, ...) written to dir/mt.json. */
export async function startMasterTargetWithConfig(t: Test, dir: string, config: Record<string, unknown>, env?: NodeJS.ProcessEnv): Promise<{ mt: RunningDaemon; client: ReturnType<typeof masterTargetClient>; datastore: string }> {
  const datastore = path.join(dir, 'ds');
  const configPath = path.join(dir, 'mt.json');
  fs.writeFileSync(configPath, JSON.stringify({ datastoreRoots: [datastore], ...config }));
  const mt = await startDaemon('master-target', { args: ['--config', configPath, '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'mt')], env });
  t.teardown(() => mt.stop());
  const client = masterTargetClient(mt.address);
  t.teardown(() => client.close());
  return { mt, client, datastore };
}
