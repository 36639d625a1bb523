// Process servers, master targets and agents register with the configuration
// server (with its passphrase) and send heartbeats. A wrong passphrase is
// final: the daemon says so and exits. An unreachable configuration server is
// not: the daemon keeps serving and retries.
import * as grpc from '@grpc/grpc-js';
import { createClient, unary } from './grpc';
import { v1, type ConfigurationServerClient } from './proto';
import { readPassphrase } from './config';
import type { Logger } from './log';
import { exitCode, version } from './process';
import { heartbeatIntervalMs } from './limits';
import type { ServerKind } from '../generated/drplane/v1/ServerKind';

export interface RegistrationOptions {
  kind: ServerKind;
  name: string;
  /** Address peers use to reach this daemon. */
  address: string;
  link: { address: string; passphrase?: string; passphraseFile?: string };
  log: Logger;
}

export class Registration {
  serverId = '';
  private token = '';
  /** The interval the configuration server asked for when we registered. */
  private intervalMs = heartbeatIntervalMs;
  private timer: NodeJS.Timeout | undefined;
  private readonly client: ConfigurationServerClient;
  private stopped = false;

  constructor(private readonly options: RegistrationOptions) {
    this.client = createClient(v1.ConfigurationServer, options.link.address);
  }

  start(): void {
    void this.register();
  }

  private schedule(ms: number, action: () => Promise<void>): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void action(), ms);
    this.timer.unref();
  }

  private async register(): Promise<void> {
    const { kind, name, address, log } = this.options;
    try {
      const response = await unary(this.client, this.client.registerServer, { kind, name, address, passphrase: readPassphrase(this.options.link), version }, { timeoutMs: 5_000 });
      this.serverId = response.serverId;
      this.token = response.token;
      log.info({ serverId: this.serverId, configurationServer: this.options.link.address }, 'registered with the configuration server');
      this.intervalMs = response.heartbeatIntervalMs || heartbeatIntervalMs;
      this.schedule(this.intervalMs, () => this.heartbeat());
    } catch (error) {
      const code = (error as grpc.ServiceError).code;
      if (code === grpc.status.UNAUTHENTICATED || code === grpc.status.PERMISSION_DENIED || code === grpc.status.INVALID_ARGUMENT) {
        log.fatal({ err: error }, 'the configuration server refused registration');
        process.stderr.write(`registration refused by the configuration server: ${(error as grpc.ServiceError).details}\n`);
        process.exit(exitCode.config);
      }
      // Too many wrong passphrases from this address (another process here guessing): ours is right, so wait and retry.
      if (code === grpc.status.RESOURCE_EXHAUSTED) log.warn({ err: (error as grpc.ServiceError).details }, 'the configuration server refuses registration from this address for now; retrying');
      else log.warn({ err: (error as Error).message }, 'configuration server unreachable; retrying');
      this.schedule(2_000, () => this.register());
    }
  }

  private async heartbeat(): Promise<void> {
    try {
      await unary(this.client, this.client.heartbeat, { serverId: this.serverId, token: this.token }, { timeoutMs: 5_000 });
      this.schedule(this.intervalMs, () => this.heartbeat());
    } catch (error) {
      const code = (error as grpc.ServiceError).code;
      // The configuration server forgot us (restored from a backup, say): register again.
      if (code === grpc.status.NOT_FOUND || code === grpc.status.UNAUTHENTICATED) this.schedule(0, () => this.register());
      else this.schedule(this.intervalMs, () => this.heartbeat());
    }
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.client.close();
  }
}
