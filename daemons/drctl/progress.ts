// Progress as drctl shows it: a smoothed transfer rate and the ETA it gives,
// and one line per bar that fits the terminal (the detail text is cut, never
// the numbers). Used by job watching (watch.ts) and by the long calls that are
// not jobs (materialise, backup).
import { SingleBar } from 'cli-progress';
import { formatBytes } from '../../shared/sizes';

/** Time constant of the rate's exponential smoothing: a rate change shows within a few seconds, a stall of one poll does not swing the ETA. */
export const rateSmoothingMs = 3_000;
/** No ETA until the rate has been measured over this long (the first samples say little). */
export const rateWarmupMs = 600;
/** Widest bar drawn, in characters; narrower when the terminal is. */
export const barWidthMax = 24;
/** The bar narrows (down to barWidthMin) before the detail is cut below this many characters. */
export const detailWidthMin = 24;
/** Narrowest bar worth drawing; below it the line has no bar, only the numbers. */
export const barWidthMin = 8;

/**
 * Bytes per second, smoothed exponentially over rateSmoothingMs, from samples
 * of a growing count. A count that goes back (a sync that started over)
 * starts the measure again.
 */
export class RateMeter {
  private first: { timeMs: number; bytes: number } | undefined;
  private last: { timeMs: number; bytes: number } | undefined;
  private smoothed = 0;

  sample(bytes: number, timeMs = Date.now()): void {
    if (!this.first || !this.last || bytes < this.last.bytes) {
      this.first = this.last = { timeMs, bytes };
      this.smoothed = 0;
      return;
    }
    const elapsedMs = timeMs - this.last.timeMs;
    if (elapsedMs <= 0) {
      this.last.bytes = bytes;
      return;
    }
    const instant = ((bytes - this.last.bytes) * 1_000) / elapsedMs;
    // Until the first time constant has passed, the plain average since the first sample (no bias toward 0).
    if (timeMs - this.first.timeMs <= rateSmoothingMs) this.smoothed = ((bytes - this.first.bytes) * 1_000) / (timeMs - this.first.timeMs);
    else this.smoothed += (1 - Math.exp(-elapsedMs / rateSmoothingMs)) * (instant - this.smoothed);
    this.last = { timeMs, bytes };
  }

  /** Bytes per second; 0 until measured over rateWarmupMs. */
  bytesPerSecond(): number {
    if (!this.first || !this.last || this.last.timeMs - this.first.timeMs < rateWarmupMs) return 0;
    return Math.max(0, this.smoothed);
  }

  /** Milliseconds to reach `total` at the smoothed rate; 0 when unknown (no rate yet, or nothing left). */
  etaMs(total: number): number {
    const rate = this.bytesPerSecond();
    const left = total - (this.last?.bytes ?? 0);
    if (rate <= 0 || left <= 0) return 0;
    return Math.ceil((left / rate) * 1_000);
  }
}

export function formatRate(bytesPerSecond: number): string {
  return bytesPerSecond > 0 ? `${formatBytes(Math.round(bytesPerSecond))}/s` : '-/s';
}

/** "4s", "1m05s", "2h10m"; "-" for unknown. */
export function formatEta(ms: number): string {
  if (ms <= 0) return '-';
  const seconds = Math.ceil(ms / 1_000);
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m${String(seconds % 60).padStart(2, '0')}s`;
  return `${Math.floor(minutes / 60)}h${String(minutes % 60).padStart(2, '0')}m`;
}

export interface BarFields {
  /** What moves: a job's step, "materialise", "backup". */
  label: string;
  bytesDone: number;
  bytesTotal: number;
  bytesPerSecond: number;
  etaMs: number;
  /** Free text after the numbers: the first thing cut when the line is too wide. */
  detail: string;
}

/** "  42%  215 MiB of 512 MiB  85.3 MiB/s  ETA 4s": the numbers, each padded so the line does not jitter. */
export function numbersText(fields: BarFields): string {
  const percent = fields.bytesTotal > 0 ? Math.min(100, Math.floor((100 * fields.bytesDone) / fields.bytesTotal)) : 0;
  return `${`${percent}%`.padStart(4)} ${formatBytes(fields.bytesDone).padStart(9)} of ${formatBytes(fields.bytesTotal)} ${formatRate(fields.bytesPerSecond).padStart(11)} ETA ${formatEta(fields.etaMs).padEnd(6)}`;
}

/**
 * One line of at most `width` characters: label, bar, numbers, detail. The
 * bar narrows, then the detail is cut (with "…"), then the label; the numbers
 * are cut only when they alone are wider than the terminal.
 */
export function fitLine(fields: BarFields, width: number): string {
  const numbers = numbersText(fields);
  let label = fields.label;
  // Room left for the bar's brackets and fill, and the detail.
  const room = width - label.length - 1 - numbers.length;
  let bar = '';
  // The bar leaves the detail its minimum where it can, and is drawn at least barWidthMin wide, or not at all.
  // Reserved whether or not there is a detail now, so the bar keeps its width when one comes and goes.
  const barWidth = Math.max(barWidthMin, Math.min(barWidthMax, room - 3 - detailWidthMin));
  if (room - 3 >= barWidth) {
    const filled = fields.bytesTotal > 0 ? Math.min(barWidth, Math.floor((barWidth * fields.bytesDone) / fields.bytesTotal)) : 0;
    bar = `[${'#'.repeat(filled)}${'-'.repeat(barWidth - filled)}] `;
  }
  // Padded numbers keep the detail's column still from one redraw to the next.
  let line = `${label} ${bar}${numbers}`;
  if (line.trimEnd().length <= width) return withDetail(line.length <= width ? line : line.trimEnd(), fields.detail, width);
  line = line.trimEnd();
  if (line.length > width) {
    // Not even the numbers fit beside the label: the label gives way first.
    label = cut(label, Math.max(1, width - numbers.trimEnd().length - 1));
    line = `${label} ${numbers}`.trimEnd();
  }
  if (line.length > width) return line.slice(0, width);
  return withDetail(line, fields.detail, width);
}

/** A line for a step that moves no bytes (a hook, a commit): label, what it does, for how long. */
export function fitStatusLine(label: string, status: string, detail: string, width: number): string {
  let line = `${label} ${status}`;
  if (line.length > width) line = `${cut(label, Math.max(1, width - status.length - 1))} ${status}`;
  if (line.length > width) return line.slice(0, width);
  return withDetail(line, detail, width);
}

function withDetail(line: string, detail: string, width: number): string {
  const text = detail.replace(/\s+/g, ' ').trim();
  const room = width - line.length - 1;
  if (!text || room < 4) return line.trimEnd();
  return `${line} ${cut(text, room)}`;
}

/** `text` in at most `width` characters, "…" marking a cut. */
export function cut(text: string, width: number): string {
  if (text.length <= width) return text;
  if (width <= 1) return text.slice(0, width);
  return `${text.slice(0, width - 1)}…`;
}

/** The plain line for logs (no terminal): nothing cut. */
export function plainLine(fields: BarFields): string {
  const numbers = numbersText(fields).replace(/\s+/g, ' ').trim();
  return `${fields.label} ${numbers}${fields.detail ? ` (${fields.detail.replace(/\s+/g, ' ').trim()})` : ''}`;
}

/** One line on the terminal (stderr), redrawn in place by cli-progress; its text is made for the terminal's width at each redraw. */
export class TerminalLine {
  private readonly bar: SingleBar;
  private render: (width: number) => string = () => '';

  /** Ctrl-C (or a kill) while the bar hides the cursor: the line is ended and the cursor shown again before drctl exits. */
  private readonly onSignal = (signal: NodeJS.Signals) => {
    this.close();
    process.exit(signal === 'SIGINT' ? 130 : 143);
  };

  constructor() {
    this.bar = new SingleBar({
      // cli-progress gives the terminal's width; one column is kept free so that no terminal wraps the line.
      format: (_options, params) => this.render(Math.max(20, params.maxWidth - 1)),
      hideCursor: true,
      clearOnComplete: false,
      linewrap: false,
      fps: 10,
      stream: process.stderr,
      // Its own handler stops the bar but leaves drctl running; ours (onSignal) exits.
      gracefulExit: false,
    });
    this.bar.start(1, 0);
    process.once('SIGINT', this.onSignal);
    process.once('SIGTERM', this.onSignal);
  }

  show(render: (width: number) => string): void {
    this.render = render;
    this.refresh();
  }

  refresh(): void {
    // The value does not matter (the text comes from render); a new one makes cli-progress redraw.
    this.bar.update(Math.random());
  }

  close(): void {
    process.removeListener('SIGINT', this.onSignal);
    process.removeListener('SIGTERM', this.onSignal);
    this.bar.stop();
  }
}
