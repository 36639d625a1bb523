// Facts about a drplane process that several modules need.
export const version = '0.1.0';

/**
 * Exit codes: 0 stopped; 1 crashed (a bug: systemd restarts it); 2 bad
 * configuration or environment (the units do not restart it: the same start
 * would fail the same way); 3 not yet possible (an address in use or not yet
 * on this host, a name that does not resolve yet: systemd restarts it).
 */
export const exitCode = { ok: 0, crash: 1, config: 2, notReady: 3 } as const;

/**
 * Node flags every daemon is started with (systemd units, npm start, tests,
 * benchmarks). --single-threaded-gc: the data path allocates little on the
 * JavaScript heap but HTTP/2 and grpc-js allocate a buffer per socket read and
 * per message, so V8 collects often; its four parallel helper threads then
 * spent more CPU than they saved (a 1 GiB full sync: 9.8 -> 6.1 CPU-seconds
 * for the three daemons, docs/performance.md). A daemon started without it
 * works the same, with more CPU per byte.
 */
export const daemonNodeFlags: readonly string[] = ['--single-threaded-gc'];
