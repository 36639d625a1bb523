// drctl's connection to the configuration server, and how a failed call is
// reported: one line, "drctl: <status name>: <message>", exit code 1.
import * as grpc from '@grpc/grpc-js';
import type { Command } from 'commander';
import { createClient, unary, type CallOptions } from '../../shared/grpc';
import { isServiceError } from '../../shared/errors';
import { v1, type ConfigurationServerClient } from '../../shared/proto';

export const defaultServerAddress = '127.0.0.1:7100';

export interface Context {
  client: ConfigurationServerClient;
  /** host:port of the configuration server. */
  server: string;
  /** Machine-readable output. */
  json: boolean;
  /** Unary call to the configuration server. */
  call<TReq, TRes>(method: (request: TReq, callback: grpc.requestCallback<TRes>) => grpc.ClientUnaryCall, request: TReq, options?: CallOptions): Promise<TRes>;
}

/** An error drctl reports as it is: "drctl: <name>: <message>". */
export class DrctlError extends Error {
  constructor(
    readonly statusName: string,
    message: string,
  ) {
    super(message);
  }
}

let shared: Context | undefined;

/** The context built from the global options (--server, --json); one client per run. */
export function context(command: Command): Context {
  if (shared) return shared;
  const options = command.optsWithGlobals<{ server: string; json?: boolean }>();
  const client = createClient(v1.ConfigurationServer, options.server);
  shared = {
    client,
    server: options.server,
    json: Boolean(options.json),
    call: (method, request, callOptions) => unary(client, method, request, callOptions),
  };
  return shared;
}

export function closeContext(): void {
  shared?.client.close();
  shared = undefined;
}

/** A status's details without grpc-js's empty trailer. */
export function cleanDetails(details: string): string {
  return details.replace(/\.?\s*Resolution note:\s*$/, '');
}

/** The one line drctl prints for a failure. */
export function describeError(error: unknown, server: string): string {
  if (error instanceof DrctlError) return `drctl: ${error.statusName}: ${error.message}`;
  if (isServiceError(error)) {
    const name = grpc.status[error.code] ?? String(error.code);
    let message = cleanDetails(error.details || error.message);
    if (error.code === grpc.status.UNAVAILABLE && /No connection established|ECONNREFUSED|connect/i.test(message)) {
      message = `cannot reach the configuration server at ${server} (${message}): is it running? (--server or DRPLANE_SERVER)`;
    }
    return `drctl: ${name}: ${message}`;
  }
  return `drctl: INTERNAL: ${error instanceof Error ? error.message : String(error)}`;
}
