// sd_notify(3) for Type=notify units: READY=1 once the daemon serves,
// STOPPING=1 when it begins to stop, STATUS= lines for `systemctl status`,
// and WATCHDOG=1 keep-alives when the unit sets WatchdogSec=. The datagram
// goes from the main process itself (node-unix-socket), so the unit can keep
// NotifyAccess=main. Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
import { DgramSocket } from 'node-unix-socket';
import type { Logger } from './log';

export class SystemdNotifier {
  private socket: DgramSocket | undefined;
  private readonly path: string | undefined;
  private watchdog: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: Logger,
    environment: NodeJS.ProcessEnv = process.env,
  ) {
    const socketPath = environment.NOTIFY_SOCKET;
    if (!socketPath) return;
    // An abstract socket ("@name") is named with a leading NUL byte.
    this.path = socketPath.startsWith('@') ? `\0${socketPath.slice(1)}` : socketPath;
    const watchdogMicroseconds = Number(environment.WATCHDOG_USEC);
    const watchdogPid = environment.WATCHDOG_PID ? Number(environment.WATCHDOG_PID) : process.pid;
    if (watchdogMicroseconds > 0 && watchdogPid === process.pid) this.watchdogIntervalMs = Math.max(100, Math.floor(watchdogMicroseconds / 2_000));
  }

  /** Half the unit's WatchdogSec, when it has one. */
  readonly watchdogIntervalMs: number | undefined;

  get enabled(): boolean {
    return this.path !== undefined;
  }

  /** Sends one notification ("READY=1\nSTATUS=..."); resolves false when there is no socket or it failed (logged, never thrown). */
  notify(state: string): Promise<boolean> {
    if (!this.path) return Promise.resolve(false);
    this.socket ??= new DgramSocket();
    const message = Buffer.from(state);
    return new Promise<boolean>((resolve) => {
      try {
        this.socket!.sendTo(message, 0, message.length, this.path!, (error) => {
          if (error) this.log.warn({ err: error.message, state }, 'cannot notify systemd');
          resolve(!error);
        });
      } catch (error) {
        this.log.warn({ err: (error as Error).message, state }, 'cannot notify systemd');
        resolve(false);
      }
    });
  }

  /** READY=1 with a status line, and the watchdog keep-alives from now on. */
  async ready(status: string): Promise<void> {
    await this.notify(`READY=1\nSTATUS=${status}\nMAINPID=${process.pid}`);
    if (this.watchdogIntervalMs && !this.watchdog) {
      this.watchdog = setInterval(() => void this.notify('WATCHDOG=1'), this.watchdogIntervalMs);
      this.watchdog.unref();
    }
  }

  async stopping(status: string): Promise<void> {
    clearInterval(this.watchdog);
    this.watchdog = undefined;
    await this.notify(`STOPPING=1\nSTATUS=${status}`);
  }

  close(): void {
    clearInterval(this.watchdog);
    this.socket?.close();
    this.socket = undefined;
  }
}
