// The Prometheus endpoint every daemon serves on metricsListen (HTTP GET
// /metrics, prom-client's text format). Each daemon registers its own
// figures (daemons/<name>/metrics.ts) in the registry it is given; the
// process and Node.js figures come with it. Names and labels: docs/metrics.md.
import http from 'node:http';
import { Registry, collectDefaultMetrics } from 'prom-client';
import type { Logger } from './log';

/** Every drplane figure starts with this, so a dashboard can select them at once. */
export const metricPrefix = 'drplane_';

export interface Metrics {
  registry: Registry;
}

/** A registry with the process and Node.js figures (process_cpu_seconds_total, nodejs_heap_size_used_bytes, ...). */
export function createMetrics(): Metrics {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  return { registry };
}

export interface MetricsServer {
  address: string;
  close(): Promise<void>;
}

/** Serves GET /metrics on listen (host:port); anything else is 404. Throws a clear error when the address is taken. */
export async function startMetricsServer(listen: string, metrics: Metrics, log: Logger): Promise<MetricsServer> {
  const server = http.createServer((request, response) => {
    const url = new URL(request.url ?? '/', 'http://localhost');
    if (request.method !== 'GET' || url.pathname !== '/metrics') {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('not found: the metrics are at GET /metrics\n');
      return;
    }
    metrics.registry.metrics().then(
      (text) => response.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text),
      (error: unknown) => {
        log.error({ err: error }, 'cannot collect metrics');
        response.writeHead(500, { 'content-type': 'text/plain' }).end(`cannot collect metrics: ${(error as Error).message}\n`);
      },
    );
  });
  // A scrape is small and quick; an idle keep-alive connection must not hold shutdown.
  server.keepAliveTimeout = 5_000;
  const separator = listen.lastIndexOf(':');
  const host = listen.slice(0, separator).replace(/^\[|\]$/g, '');
  const port = Number(listen.slice(separator + 1));
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) =>
      reject(new Error(error.code === 'EADDRINUSE' ? `cannot serve metrics on ${listen}: the address is already in use (config key metricsListen)` : `cannot serve metrics on ${listen}: ${error.message} (config key metricsListen)`)),
    );
    server.listen(port, host, () => resolve());
  });
  const bound = server.address();
  const boundPort = typeof bound === 'object' && bound ? bound.port : port;
  return {
    address: `${listen.slice(0, separator)}:${boundPort}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
