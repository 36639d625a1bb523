// drctl's connection to the configuration server, and how a failed call is
// reported: one line, "drctl: <status name>: <message>", exit code 1.
import * as grpc from '@grpc/grpc-js';
import type { Command } from 'commander';
import { createClient, setTransportSecurity, unary, usesTls, type CallOptions } from '../../shared/grpc';
import { ConfigError } from '../../shared/config';
import { loadTls } from '../../shared/tls';
import { isServiceError } from '../../shared/errors';
import { v1, type ConfigurationServerClient } from '../../shared/proto';

export const defaultServerAddress = '127.0.0.1:7100';
/** Not on a terminal, a long operation prints a progress line this often (--progress-interval). */
export const defaultProgressIntervalMs = 5_000;

export interface Context {
  client: ConfigurationServerClient;
  /** host:port of the configuration server. */
  server: string;
  /** Machine-readable output. */
  json: boolean;
  /** Not on a terminal: time between two progress lines of a long operation. */
  progressIntervalMs: number;
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
  const options = command.optsWithGlobals<{ server: string; json?: boolean; progressInterval: number; caFile?: string; certFile?: string; keyFile?: string }>();
  configureTls(options);
  const client = createClient(v1.ConfigurationServer, options.server);
  shared = {
    client,
    server: options.server,
    json: Boolean(options.json),
    progressIntervalMs: options.progressInterval,
    call: (method, request, callOptions) => unary(client, method, request, callOptions),
  };
  return shared;
}

/** With --ca-file, --cert-file and --key-file (or their DRPLANE_* variables) every call is mutual TLS; with none, plaintext. */
function configureTls(options: { caFile?: string; certFile?: string; keyFile?: string }): void {
  const given = [options.caFile, options.certFile, options.keyFile].filter(Boolean).length;
  if (given === 0) return;
  if (given < 3) throw new DrctlError('INVALID_ARGUMENT', 'mTLS needs all three of --ca-file, --cert-file and --key-file (or DRPLANE_CA_FILE, DRPLANE_CERT_FILE and DRPLANE_KEY_FILE)');
  try {
    setTransportSecurity(loadTls({ caFile: options.caFile!, certFile: options.certFile!, keyFile: options.keyFile! }, { caFile: '--ca-file', certFile: '--cert-file', keyFile: '--key-file' }));
  } catch (error) {
    if (error instanceof ConfigError) throw new DrctlError('INVALID_ARGUMENT', error.message);
    throw error;
  }
}

export function closeContext(): void {
  shared?.client.close();
  shared = undefined;
}

/** A status's details without grpc-js's empty trailer. */
export function cleanDetails(details: string): string {
  return details.replace(/\.?\s*Resolution note:\s*$/, '');
}

/** What an UNAVAILABLE status means for the operator: not running, a TLS mismatch, or plaintext to a TLS server. */
function explainUnavailable(message: string, server: string): string {
  if (/ECONNREFUSED|ENOTFOUND|EHOSTUNREACH|ETIMEDOUT/i.test(message)) return `cannot reach the configuration server at ${server} (${message}): is it running? (--server or DRPLANE_SERVER)`;
  if (/certificate|altnames|SSL|TLS|handshake|alert/i.test(message)) {
    return `the TLS handshake with ${server} failed (${message}): the server's certificate must be signed by --ca-file's CA and name this host or address, and ours must be signed by the server's CA`;
  }
  if (!usesTls() && /No connection established|Failed to connect|Connection dropped|socket hang up|ECONNRESET/i.test(message)) {
    return `${server} closed the connection during set-up (${message}): if it requires mTLS, give --ca-file, --cert-file and --key-file (or DRPLANE_CA_FILE, DRPLANE_CERT_FILE, DRPLANE_KEY_FILE)`;
  }
  return `cannot reach the configuration server at ${server} (${message}): is it running? (--server or DRPLANE_SERVER)`;
}

/** The one line drctl prints for a failure. */
export function describeError(error: unknown, server: string): string {
  if (error instanceof DrctlError) return `drctl: ${error.statusName}: ${error.message}`;
  if (isServiceError(error)) {
    const name = grpc.status[error.code] ?? String(error.code);
    let message = cleanDetails(error.details || error.message);
    if (error.code === grpc.status.UNAVAILABLE) message = explainUnavailable(message, server);
    return `drctl: ${name}: ${message}`;
  }
  return `drctl: INTERNAL: ${error instanceof Error ? error.message : String(error)}`;
}
