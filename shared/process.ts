// Facts about a drplane process that several modules need.
export const version = '0.1.0';

/** Exit codes: 0 stopped, 1 crashed (a bug: systemd restarts it), 2 bad configuration or environment. */
export const exitCode = { ok: 0, crash: 1, config: 2 } as const;
