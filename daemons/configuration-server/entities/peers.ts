// gRPC clients to the registered servers, one per address, kept for the life
// of the daemon (a channel reconnects by itself when its peer comes back).
import type * as grpc from '@grpc/grpc-js';
import { fromServiceError } from '../../../shared/errors';
import { createClient } from '../../../shared/grpc';
import { v1, type AgentClient, type MasterTargetClient, type ProcessServerClient } from '../../../shared/proto';
import { kindLabel } from './servers';
import type { ServerRecord } from '../store/records';

export class Peers {
  private readonly clients = new Map<string, grpc.Client>();

  agent(server: ServerRecord): AgentClient {
    return this.client(`agent ${server.address}`, () => createClient(v1.Agent, server.address));
  }

  processServer(server: ServerRecord): ProcessServerClient {
    return this.client(`ps ${server.address}`, () => createClient(v1.ProcessServer, server.address));
  }

  masterTarget(server: ServerRecord): MasterTargetClient {
    return this.client(`mt ${server.address}`, () => createClient(v1.MasterTarget, server.address));
  }

  close(): void {
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }

  private client<C extends grpc.Client>(key: string, create: () => C): C {
    let client = this.clients.get(key) as C | undefined;
    if (!client) {
      client = create();
      this.clients.set(key, client);
    }
    return client;
  }
}

/** How a peer is named in errors: "master target mt1 (127.0.0.1:7102)". */
export function peerName(server: ServerRecord): string {
  return `${kindLabel[server.kind]} ${server.name} (${server.address})`;
}

/** Runs a call to a peer; its failure becomes a DrplaneError that names the peer and keeps its message. */
export async function callPeer<T>(server: ServerRecord, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (error) {
    throw fromServiceError(error, peerName(server));
  }
}
