// Structured logs on stdout (JSON lines, one object per event), as systemd's journal and log shippers expect.
import pino from 'pino';

export type Logger = pino.Logger;

export function createLogger(daemon: string, level: string = process.env.DRPLANE_LOG_LEVEL ?? 'info'): Logger {
  return pino({ level, base: { daemon, pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime });
}
