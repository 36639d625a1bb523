// The life of a daemon process: configuration, data directory, logger, gRPC
// server, registration with the configuration server, and shutdown on SIGTERM.
import net from 'node:net';
import { z } from 'zod';
import type * as grpc from '@grpc/grpc-js';
import { ConfigError, isLoopbackHost, loadConfig, prepareDataDir, readPassphrase, type FlagSpec } from './config';
import { createLogger, type Logger } from './log';
import { setTransportSecurity, startGrpcServer, startStatusServer, stopGrpcServer, type ServiceRegistration, type StartedServer } from './grpc';
import { createMetrics, startMetricsServer, type Metrics, type MetricsServer } from './metrics';
import { SystemdNotifier } from './systemd';
import { loadTls, type TlsFiles, type TlsMaterial } from './tls';
import { shutdownGraceMs } from './limits';
import { initHashing } from './hashing';

import { exitCode, version } from './process';
import { Registration } from './registration';
import type { ServerKind } from '../generated/drplane/v1/ServerKind';

export { exitCode, version };

export interface DaemonContext<C> {
  config: C;
  dataDir: string;
  log: Logger;
  /** Where the daemon registers its Prometheus figures (served when metricsListen is set). */
  metrics: Metrics;
}

export interface DaemonParts {
  services: ServiceRegistration[];
  /** Runs once the server listens (registration, background loops). */
  started?(server: StartedServer): Promise<void> | void;
  /** Finishes or safely abandons in-flight work; the server has stopped accepting calls. */
  stop?(): Promise<void> | void;
}

/** What runDaemon itself reads from every daemon's configuration. */
interface DaemonConfig {
  name: string;
  dataDir: string;
  listen: string;
  advertise?: string;
  logLevel?: string;
  tls?: TlsFiles;
  statusListen?: string;
  metricsListen?: string;
  insecurePlaintext?: boolean;
  configurationServer?: { address: string; passphrase?: string; passphraseFile?: string };
}

export interface DaemonSpec<S extends z.ZodType> {
  name: string;
  schema: S;
  usage: string;
  flags?: FlagSpec;
  defaults?: Record<string, unknown>;
  /** Registers with the configuration server (and sends heartbeats) when the config has a configurationServer link. */
  registerAs?: ServerKind;
  create(context: DaemonContext<z.infer<S> & DaemonConfig>): Promise<DaemonParts>;
}

/** A start-up that may succeed later without a change of configuration. */
class NotReadyError extends Error {}

/**
 * Binds each configured address for a moment, so that one another process
 * holds fails as a configuration error before the daemon opens its data
 * (the real listeners bind after start-up recovery). Port 0 needs no check.
 */
async function checkAddressesFree(addresses: Record<string, string | undefined>): Promise<void> {
  for (const [key, address] of Object.entries(addresses)) {
    if (!address) continue;
    const separator = address.lastIndexOf(':');
    const port = Number(address.slice(separator + 1));
    if (port === 0) continue;
    const host = address.slice(0, separator).replace(/^\[|\]$/g, '');
    await new Promise<void>((resolve, reject) => {
      const probe = net.createServer();
      probe.once('error', (error: NodeJS.ErrnoException) => {
        const reasons: Record<string, string> = {
          EADDRINUSE: 'the address is already in use (is another daemon running?)',
          EADDRNOTAVAIL: 'no interface of this host has that address (yet)',
          ENOTFOUND: 'the host name does not resolve (yet)',
          EAI_AGAIN: 'the host name does not resolve (yet)',
        };
        const reason = reasons[error.code ?? ''];
        // These can pass (an old instance still stopping, an address or DNS not up at boot): exit 3, and systemd retries.
        reject(reason ? new NotReadyError(`config key ${key}: cannot listen on ${address}: ${reason}`) : new ConfigError(`config key ${key}: cannot listen on ${address}: ${error.message}`));
      });
      probe.listen({ port, host, exclusive: true }, () => probe.close(() => resolve()));
    });
  }
}

function listenHost(listen: string): string {
  return listen.slice(0, listen.lastIndexOf(':'));
}

/**
 * Plaintext has no certificates, so no roles: every caller is trusted. That is
 * only safe where only this host's processes reach the listener (loopback),
 * unless the operator says otherwise with insecurePlaintext.
 */
function checkPlaintextOnLoopback(config: DaemonConfig): void {
  if (config.tls || config.insecurePlaintext || isLoopbackHost(listenHost(config.listen))) return;
  throw new ConfigError(
    `config key listen: ${config.listen} is not a loopback address and tls is not configured: in plaintext anyone who reaches it may call every method; configure tls (docs/security.md) or, to accept that, --insecure-plaintext (config key insecurePlaintext)`,
  );
}

/**
 * A daemon's own certificate must carry its own role, and a daemon that
 * registers must be named as its certificate is (the configuration server
 * binds the name to the certificate): said here rather than by a peer's
 * refusal later.
 */
function checkOwnCertificate(spec: { name: string; registerAs?: ServerKind }, config: DaemonConfig, material: TlsMaterial): TlsMaterial {
  if (material.role !== spec.name) {
    throw new ConfigError(`config key tls.certFile: ${config.tls!.certFile} has the role ${material.role}; a ${spec.name} needs one issued with --role ${spec.name} (deploy/drplane-certs)`);
  }
  if (spec.registerAs && config.configurationServer && material.commonName !== config.name) {
    throw new ConfigError(`config key name: ${config.name} is not the name in ${config.tls!.certFile} (CN=${material.commonName}); the configuration server accepts a registration only under its certificate's name`);
  }
  return material;
}

/** Runs a daemon until SIGTERM/SIGINT. Never returns on failure: exits with a clear line on stderr. */
export async function runDaemon<S extends z.ZodType>(spec: DaemonSpec<S>, argv = process.argv.slice(2)): Promise<void> {
  let config: z.infer<S> & DaemonConfig & { help?: boolean };
  let dataDir: string;
  try {
    config = loadConfig(spec.schema, argv, spec.flags, spec.defaults) as typeof config;
    if (config.help) {
      process.stdout.write(spec.usage);
      process.exit(exitCode.ok);
    }
    // Before the data directory is touched: a bad certificate or a taken address stops the daemon here.
    if (config.tls) setTransportSecurity(checkOwnCertificate(spec, config, loadTls(config.tls)));
    checkPlaintextOnLoopback(config);
    // A passphrase file that cannot be read is a configuration error, not an unreachable configuration server.
    if (spec.registerAs && config.configurationServer) readPassphrase(config.configurationServer);
    await checkAddressesFree({ listen: config.listen, statusListen: config.statusListen, metricsListen: config.metricsListen });
    dataDir = prepareDataDir(config.dataDir);
  } catch (error) {
    if (error instanceof NotReadyError) {
      process.stderr.write(`${spec.name}: ${error.message}\n`);
      process.exit(exitCode.notReady);
    }
    if (error instanceof ConfigError) {
      process.stderr.write(`${spec.name}: ${error.message}\n`);
      process.exit(exitCode.config);
    }
    throw error;
  }
  const log = createLogger(spec.name, config.logLevel ?? 'info');
  if (!config.tls && config.insecurePlaintext && !isLoopbackHost(listenHost(config.listen))) {
    log.warn({ listen: config.listen }, 'insecurePlaintext: listening in plaintext on an address that is not loopback; anyone who reaches it may call every method (configure tls: docs/security.md)');
  }
  process.on('uncaughtException', (error) => {
    log.fatal({ err: error }, 'uncaught exception: this is a bug; exiting so the service manager restarts the daemon');
    process.exit(exitCode.crash);
  });
  process.on('unhandledRejection', (error) => {
    // lmdb leaves one internal copy of a failed commit's rejection unhandled (it carries commitError); the caller
    // of the transaction gets the same failure through its own promise (the master target's retention store
    // turns it into RESOURCE_EXHAUSTED when the volume is full), so this copy is no bug of ours.
    if (error instanceof Error && 'commitError' in error) {
      (error as { commitError?: Promise<unknown> }).commitError?.catch(() => undefined);
      log.warn({ err: error.message }, 'an LMDB commit failed (its caller was told)');
      return;
    }
    log.fatal({ err: error }, 'unhandled rejection: this is a bug; exiting so the service manager restarts the daemon');
    process.exit(exitCode.crash);
  });

  let parts: DaemonParts;
  let started: StartedServer;
  let statusServer: { server: grpc.Server; address: string } | undefined;
  let metricsServer: MetricsServer | undefined;
  const metrics = createMetrics();
  const systemd = new SystemdNotifier(log);
  try {
    await initHashing();
    parts = await spec.create({ config, dataDir, log, metrics });
    started = await startGrpcServer(config.listen, parts.services, log, metrics);
    if (config.statusListen) statusServer = await startStatusServer(config.statusListen, parts.services, started.health);
    if (config.metricsListen) metricsServer = await startMetricsServer(config.metricsListen, metrics, log);
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    log.error({ err: error }, 'cannot start');
    process.stderr.write(`${spec.name}: cannot start: ${message}\n`);
    process.exit(exitCode.config);
  }
  log.info({ address: started.address, tls: Boolean(config.tls), statusAddress: statusServer?.address, metricsAddress: metricsServer?.address, dataDir, version }, 'listening');
  let registration: Registration | undefined;
  if (spec.registerAs && config.configurationServer) {
    registration = new Registration({ kind: spec.registerAs, name: config.name, address: config.advertise ?? started.address, link: config.configurationServer, log });
    registration.start();
  }

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, 'stopping');
    void systemd.stopping(`stopping on ${signal}: finishing in-flight work (at most ${Math.round(shutdownGraceMs / 1000)} s)`);
    const timer = setTimeout(() => {
      log.warn('in-flight work did not finish in time; exiting');
      process.exit(exitCode.ok);
    }, shutdownGraceMs + 2_000);
    timer.unref();
    started.health.setStatus('', 'NOT_SERVING');
    registration?.stop();
    const metricsClosed = metricsServer?.close();
    if (statusServer) void stopGrpcServer(statusServer.server, 1_000);
    await stopGrpcServer(started.server, shutdownGraceMs);
    await metricsClosed;
    try {
      await parts.stop?.();
    } catch (error) {
      log.error({ err: error }, 'error while stopping');
    }
    log.info('stopped');
    process.exit(exitCode.ok);
  };
  process.on('SIGTERM', () => void shutdown('SIGTERM'));
  process.on('SIGINT', () => void shutdown('SIGINT'));
  await parts.started?.(started);
  // Ready only now: the listener serves and start-up recovery is done (and not when a stop began meanwhile).
  if (!stopping) await systemd.ready(`serving on ${started.address}${config.tls ? ' (mTLS)' : ''}`);
}

export type { grpc };
