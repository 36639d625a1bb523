// gRPC clients of the agents and master targets a process server talks to,
// one per address (a channel multiplexes every call and stream to that peer).
import { createClient } from '../../shared/grpc';
import { v1, type AgentClient, type MasterTargetClient } from '../../shared/proto';

export class Peers {
  private readonly agents = new Map<string, AgentClient>();
  private readonly masterTargets = new Map<string, MasterTargetClient>();

  agent(address: string): AgentClient {
    let client = this.agents.get(address);
    if (!client) this.agents.set(address, (client = createClient(v1.Agent, address)));
    return client;
  }

  masterTarget(address: string): MasterTargetClient {
    let client = this.masterTargets.get(address);
    if (!client) this.masterTargets.set(address, (client = createClient(v1.MasterTarget, address)));
    return client;
  }

  close(): void {
    for (const client of [...this.agents.values(), ...this.masterTargets.values()]) client.close();
    this.agents.clear();
    this.masterTargets.clear();
  }
}
