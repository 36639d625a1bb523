// gRPC server and client set-up shared by every daemon: message limits,
// flow-control windows, reflection, health, and promise helpers.
import assert from 'node:assert/strict';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import type http2 from 'node:http2';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import { flowControlWindowBytes, messageBytesMax } from './limits';
import { reflectionPackageDefinition } from './proto';
import { invalidArgument, toServiceError } from './errors';
import type { Logger } from './log';
import { channelCredentials, serverCredentials, type TlsMaterial } from './tls';
import { authorizationInterceptor, type MethodRoles } from './roles';
import { UndecodableRequest } from './wire';
import type { Metrics } from './metrics';

/**
 * The process's TLS material: set once at start-up (runDaemon, drctl) and used
 * by every server and client after it. Unset means plaintext.
 */
let transportSecurity: TlsMaterial | undefined;

export function setTransportSecurity(material: TlsMaterial | undefined): void {
  transportSecurity = material;
  if (material) silenceIpServerNameWarning();
}

/**
 * grpc-js passes the dialled IP address as the TLS server name, which Node
 * flags once per process (DEP0123) on stderr: a line that is not JSON in the
 * journal and in drctl's output. The certificate is still checked against the
 * address (its IP SAN); only that one warning is dropped.
 */
function silenceIpServerNameWarning(): void {
  const emitWarning = process.emitWarning.bind(process) as (...args: unknown[]) => void;
  process.emitWarning = ((...args: unknown[]) => {
    const [, type, code] = args;
    const options = typeof type === 'object' && type !== null ? (type as { code?: string }) : undefined;
    if (code === 'DEP0123' || options?.code === 'DEP0123') return;
    emitWarning(...args);
  }) as typeof process.emitWarning;
}

export function usesTls(): boolean {
  return transportSecurity !== undefined;
}

export const channelOptions: grpc.ChannelOptions = {
  'grpc.max_receive_message_length': messageBytesMax,
  'grpc.max_send_message_length': messageBytesMax,
  // A client's receive window (grpc/grpc-node#2864): bulk data flowing toward a client is not capped at 64 KiB in flight.
  'grpc-node.flow_control_window': flowControlWindowBytes,
  'grpc.keepalive_time_ms': 20_000,
  'grpc.keepalive_timeout_ms': 10_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.initial_reconnect_backoff_ms': 200,
  'grpc.max_reconnect_backoff_ms': 2_000,
};

const serverOptions: grpc.ServerOptions = {
  'grpc.max_receive_message_length': messageBytesMax,
  'grpc.max_send_message_length': messageBytesMax,
  'grpc.keepalive_time_ms': 20_000,
  'grpc.keepalive_timeout_ms': 10_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.http2.min_ping_interval_without_data_ms': 5_000,
};

/**
 * grpc-js has no option for a server's HTTP/2 receive window (grpc/grpc-node#3058),
 * so data streamed toward a server moves at 0.3-0.4 GB/s (MEASURED.md). We set the
 * stream window through the http2 settings grpc-js passes to http2.createServer and
 * the connection window on each session. If grpc-js changes its internals this
 * degrades to the default window, never to an error.
 */
function widenServerFlowControlWindow(server: grpc.Server, log: Logger): void {
  const internals = server as unknown as { commonServerOptions?: http2.ServerOptions };
  if (!internals.commonServerOptions) {
    log.warn('grpc-js internals changed: the server keeps the default HTTP/2 window');
    return;
  }
  internals.commonServerOptions.settings = { ...internals.commonServerOptions.settings, initialWindowSize: flowControlWindowBytes };
}

function widenSessionWindows(server: grpc.Server): void {
  const internals = server as unknown as { http2Servers?: Map<http2.Http2Server, unknown> };
  for (const http2Server of internals.http2Servers?.keys() ?? []) {
    http2Server.on('session', (session: http2.ServerHttp2Session) => {
      session.once('connect', () => session.setLocalWindowSize(flowControlWindowBytes));
      if (!session.connecting) session.setLocalWindowSize(flowControlWindowBytes);
    });
  }
}

export interface ServiceRegistration {
  definition: grpc.ServiceDefinition;
  implementation: grpc.UntypedServiceImplementation;
  /** Fully qualified name, for the health service. */
  name: string;
  /** Who may call each method (daemons/<name>/roles.ts), enforced for every call under mTLS (shared/roles.ts). */
  roles: MethodRoles;
}

export interface StartedServer {
  server: grpc.Server;
  health: HealthImplementation;
  /** host:port actually bound (port 0 in the configuration picks a free port). */
  address: string;
  port: number;
}

/** The reflection protos @grpc/reflection ships (v1 and v1alpha: grpcurl asks for either). */
const reflectionProtoDir = path.join(path.dirname(require.resolve('@grpc/reflection/package.json')), 'build', 'proto', 'grpc', 'reflection');
let reflectionDefinitions: grpc.ServiceDefinition[] | undefined;

/**
 * Adds reflection that lists what this daemon serves (grpcurl list), not
 * every service our protos define. Building its descriptors costs about
 * 100 ms of CPU, so the ReflectionService is made on the first reflection
 * call, not at start-up: the server gets the reflection services now, with
 * handlers that make it then and hand each call to its own handler.
 */
function addReflection(server: grpc.Server, services: ServiceRegistration[]): void {
  reflectionDefinitions ??= (() => {
    const loaded = grpc.loadPackageDefinition(
      // The options @grpc/reflection loads them with (its PROTO_LOADER_OPTS): its handlers build messages for them.
      protoLoader.loadSync(['v1', 'v1alpha'].map((version) => path.join(reflectionProtoDir, version, 'reflection.proto')), { longs: String, enums: String, bytes: Array, defaults: true, oneofs: true }),
    ) as unknown as { grpc: { reflection: Record<'v1' | 'v1alpha', { ServerReflection: grpc.ServiceClientConstructor }> } };
    return [loaded.grpc.reflection.v1.ServerReflection.service, loaded.grpc.reflection.v1alpha.ServerReflection.service];
  })();
  let handlers: Map<string, grpc.handleBidiStreamingCall<unknown, unknown>> | undefined;
  const handlerFor = (method: string) => {
    if (!handlers) {
      const made = new Map<string, grpc.handleBidiStreamingCall<unknown, unknown>>();
      const reflection = new ReflectionService(reflectionPackageDefinition(), { services: [...services.map((service) => service.name), 'grpc.health.v1.Health'] });
      reflection.addToServer({
        addService: (definition, implementation) => {
          for (const [name, method] of Object.entries(definition)) made.set(method.path, implementation[name] as grpc.handleBidiStreamingCall<unknown, unknown>);
        },
      });
      handlers = made;
    }
    const handler = handlers.get(method);
    assert.ok(handler, `@grpc/reflection made no handler for ${method}`);
    return handler;
  };
  for (const definition of reflectionDefinitions) {
    const [[name, method]] = Object.entries(definition);
    server.addService(definition, { [name!]: (call: grpc.ServerDuplexStream<unknown, unknown>) => handlerFor(method!.path)(call) });
  }
}

/**
 * Answers a request that did not decode (an UndecodableRequest from its
 * deserializer, shared/wire.ts) with INVALID_ARGUMENT naming the method and
 * the message type; the handler never sees it, so nothing is done.
 */
function undecodableRequests(): grpc.ServerInterceptor {
  return (descriptor, call) =>
    new grpc.ServerInterceptingCall(call, {
      start: (next) => {
        next({
          onReceiveMessage: (message, forward) => {
            if (!(message instanceof UndecodableRequest)) {
              forward(message);
              return;
            }
            const status = toServiceError(invalidArgument(`${descriptor.path.slice(1)}: the request does not decode as ${message.typeName} (${message.reason}); nothing was done`));
            call.sendStatus({ code: status.code, details: status.details, metadata: status.metadata ?? new grpc.Metadata() });
          },
        });
      },
    });
}

async function bind(server: grpc.Server, listen: string, credentials: grpc.ServerCredentials): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    server.bindAsync(listen, credentials, (error, boundPort) => {
      if (error) {
        const inUse = /EADDRINUSE|address already in use/i.test(error.message);
        reject(new Error(inUse ? `cannot listen on ${listen}: the address is already in use (is another daemon running?)` : `cannot listen on ${listen}: ${error.message}`));
      } else resolve(boundPort);
    });
  });
}

/**
 * Starts a gRPC server with reflection and grpc.health.v1, or throws a clear
 * error (port in use, bad address). With TLS set (setTransportSecurity) it
 * speaks only TLS, asks every client for a certificate the CA signed, and
 * allows each call only to the roles the service's table names.
 */
export async function startGrpcServer(listen: string, services: ServiceRegistration[], log: Logger, metrics?: Metrics): Promise<StartedServer> {
  const security = transportSecurity;
  const interceptors = [...(security ? [authorizationInterceptor({ self: { commonName: security.commonName, role: security.role }, services, log, registry: metrics?.registry })] : []), undecodableRequests()];
  const server = new grpc.Server({ ...serverOptions, interceptors });
  widenServerFlowControlWindow(server, log);
  for (const service of services) server.addService(service.definition, service.implementation);
  addReflection(server, services);
  const statusMap: Record<string, 'SERVING' | 'NOT_SERVING'> = { '': 'SERVING' };
  for (const service of services) statusMap[service.name] = 'SERVING';
  const health = new HealthImplementation(statusMap);
  health.addToServer(server);
  const port = await bind(server, listen, serverCredentials(transportSecurity));
  widenSessionWindows(server);
  const host = listen.slice(0, listen.lastIndexOf(':'));
  return { server, health, port, address: `${host}:${port}` };
}

/** The methods of a service its table opens to the viewer role: reads of state, never a change, never disk contents or hashes. */
export function viewerMethods(service: Pick<ServiceRegistration, 'roles'>): string[] {
  return Object.entries(service.roles)
    .filter(([, grantees]) => grantees.includes('viewer'))
    .map(([method]) => method);
}

/**
 * The plaintext status listener: health (the same statuses as the main
 * listener), reflection, and the calls each service's table opens to the
 * viewer role (its callers are viewers); every other call answers
 * UNIMPLEMENTED there.
 */
export async function startStatusServer(listen: string, services: ServiceRegistration[], health: HealthImplementation): Promise<{ server: grpc.Server; address: string }> {
  const server = new grpc.Server({ ...serverOptions, interceptors: [undecodableRequests()] });
  for (const service of services) {
    const allowed = new Set(viewerMethods(service));
    const implementation = Object.fromEntries(Object.entries(service.implementation).filter(([method]) => allowed.has(method)));
    server.addService(service.definition, implementation);
  }
  addReflection(server, services);
  health.addToServer(server);
  const port = await bind(server, listen, grpc.ServerCredentials.createInsecure());
  const host = listen.slice(0, listen.lastIndexOf(':'));
  return { server, address: `${host}:${port}` };
}

/** Stops accepting calls and waits for running ones up to graceMs, then cancels them. */
export async function stopGrpcServer(server: grpc.Server, graceMs: number): Promise<void> {
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      server.forceShutdown();
      resolve();
    }, graceMs);
    timer.unref();
    server.tryShutdown(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

type AnyCallback = (error: grpc.ServiceError | null, response?: unknown) => void;

/**
 * Wraps a unary handler: the async function's result is the response, and a
 * thrown error becomes a status through the one table in errors.ts.
 */
export function unaryHandler<TReq, TRes>(handler: (request: TReq, call: grpc.ServerUnaryCall<TReq, TRes>) => Promise<TRes>, log?: Logger) {
  return (call: grpc.ServerUnaryCall<TReq, TRes>, callback: grpc.sendUnaryData<TRes>): void => {
    handler(call.request, call).then(
      (response) => callback(null, response),
      (error: unknown) => {
        const status = toServiceError(error);
        if (status.code === grpc.status.INTERNAL) log?.error({ err: error, method: call.getPath() }, 'internal error');
        callback(status as grpc.ServiceError);
      },
    );
  };
}

export interface CallOptions {
  timeoutMs?: number;
  metadata?: grpc.Metadata;
}

export const defaultCallTimeoutMs = 30_000;

/** Calls a unary method of a generated client and resolves with its response. */
export function unary<TReq, TRes>(
  client: grpc.Client,
  method: (request: TReq, callback: grpc.requestCallback<TRes>) => grpc.ClientUnaryCall,
  request: TReq,
  options: CallOptions = {},
): Promise<TRes> {
  return new Promise<TRes>((resolve, reject) => {
    const deadline = Date.now() + (options.timeoutMs ?? defaultCallTimeoutMs);
    const callback: AnyCallback = (error, response) => (error ? reject(error) : resolve(response as TRes));
    (method as unknown as (...args: unknown[]) => grpc.ClientUnaryCall).call(client, request, options.metadata ?? new grpc.Metadata(), { deadline }, callback);
  });
}

type ClientConstructor<C> = new (address: string, credentials: grpc.ChannelCredentials, options?: grpc.ChannelOptions) => C;

/** A client with drplane's message limits and flow-control window, over TLS when the process has it (or with the credentials given). */
export function createClient<C extends grpc.Client>(Constructor: ClientConstructor<C>, address: string, credentials?: grpc.ChannelCredentials): C {
  return new Constructor(address, credentials ?? channelCredentials(transportSecurity), channelOptions);
}

/** Handlers that answer UNIMPLEMENTED, for methods a daemon does not serve yet. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export function unimplemented<const K extends string>(names: readonly K[]): Record<K, grpc.handleUnaryCall<any, any>> {
  return Object.fromEntries(names.map((name) => [name, (_call: unknown, callback: grpc.sendUnaryData<unknown>) => callback({ code: grpc.status.UNIMPLEMENTED, details: `${name} is not implemented yet` })])) as Record<K, grpc.handleUnaryCall<any, any>>; // eslint-disable-line @typescript-eslint/no-explicit-any
}
