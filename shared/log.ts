// Structured logs on stdout (JSON lines, one object per event), as systemd's journal and log shippers expect.
import pino from 'pino';

export type Logger = pino.Logger;

/** `level` comes from the daemon's configuration (logLevel; DRPLANE_LOG_LEVEL is read there). */
export function createLogger(daemon: string, level: string): Logger {
  return pino({ level, base: { daemon, pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime });
}
