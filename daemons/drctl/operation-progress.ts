// The progress of a long call that is not a job (materialise, backup,
// restore): on a terminal one bar redrawn in place, otherwise a plain line at
// most every --progress-interval, with --json nothing (the result stays one
// JSON document on stdout).
import type { Context } from './client';
import { formatDuration } from './output';
import { fitLine, fitStatusLine, plainLine, RateMeter, TerminalLine, type BarFields } from './progress';

export class OperationProgress {
  private readonly meter = new RateMeter();
  private readonly startedMs = Date.now();
  private line: TerminalLine | undefined;
  private fields: BarFields;
  /** A plain line at most every --progress-interval, the first one an interval after the start: a quick call prints only its end. */
  private lastPlainMs = Date.now();
  private readonly mode: 'terminal' | 'plain' | 'silent';

  constructor(
    private readonly context: Context,
    label: string,
  ) {
    this.mode = context.json ? 'silent' : process.stderr.isTTY ? 'terminal' : 'plain';
    this.fields = { label, bytesDone: 0, bytesTotal: 0, bytesPerSecond: 0, etaMs: 0, detail: '' };
  }

  /** Bytes done of a known total (0: not known yet, a line without a bar), and what is going on. */
  update(bytesDone: number, bytesTotal: number, detail = ''): void {
    if (bytesTotal > 0) this.meter.sample(bytesDone);
    this.fields = { ...this.fields, bytesDone, bytesTotal, bytesPerSecond: this.meter.bytesPerSecond(), etaMs: this.meter.etaMs(bytesTotal), detail };
    this.show(false);
  }

  /** The operation succeeded: its bar is full, and stays on the terminal (or is the last plain line). */
  finish(detail: string): void {
    this.fields = { ...this.fields, bytesDone: this.fields.bytesTotal, etaMs: 0, detail };
    this.show(true);
    this.line?.close();
    this.line = undefined;
  }

  /** An error ends the bar where it got to. */
  abandon(): void {
    this.line?.close();
    this.line = undefined;
  }

  private show(final: boolean): void {
    if (this.mode === 'silent') return;
    const fields = this.fields;
    if (this.mode === 'terminal') {
      this.line ??= new TerminalLine();
      this.line.show((width) => (fields.bytesTotal > 0 ? fitLine(fields, width) : fitStatusLine(fields.label, formatDuration(Date.now() - this.startedMs), fields.detail, width)));
      return;
    }
    if (!final && Date.now() - this.lastPlainMs < this.context.progressIntervalMs) return;
    this.lastPlainMs = Date.now();
    const text = fields.bytesTotal > 0 ? plainLine(fields) : `${fields.label} ${formatDuration(Date.now() - this.startedMs)}${fields.detail ? ` (${fields.detail})` : ''}`;
    process.stderr.write(`${text}\n`);
  }
}

/**
 * Resolves with `work`; meanwhile calls `poll` every `intervalMs`, one at a
 * time. A poll that fails is skipped (a figure for the operator, not a
 * reason to fail the command).
 */
export async function whilePolling<T>(work: Promise<T>, intervalMs: number, poll: (pending: () => boolean) => Promise<void>): Promise<T> {
  let done = false;
  void (async () => {
    while (!done) {
      await new Promise((resolve) => setTimeout(resolve, intervalMs).unref());
      if (done) return;
      await poll(() => !done).catch(() => undefined);
    }
  })();
  try {
    return await work;
  } finally {
    done = true;
  }
}
