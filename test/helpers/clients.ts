// gRPC clients and a batch sender for tests that talk to the real daemons.
import type * as grpc from '@grpc/grpc-js';
import { createClient } from '../../shared/grpc';
import { v1 } from '../../shared/proto';
import { blockHashes, initHashing } from '../../shared/hashing';
import { encode } from '../../shared/codec';
import type { BatchFrame } from '../../generated/drplane/v1/BatchFrame';
import type { BatchAck__Output } from '../../generated/drplane/v1/BatchAck';
import type { Extent } from '../../generated/drplane/v1/Extent';

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
