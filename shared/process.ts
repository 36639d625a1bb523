// Facts about a drplane process that several modules need.
export const version = '0.1.0';

/**
 * Exit codes: 0 stopped; 1 crashed (a bug: systemd restarts it); 2 bad
 * configuration or environment (the units do not restart it: the same start
 * would fail the same way); 3 not yet possible (an address in use or not yet
 * on this host, a name that does not resolve yet: systemd restarts it).
 */
export const exitCode = { ok: 0, crash: 1, config: 2, notReady: 3 } as const;
