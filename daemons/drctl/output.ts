// Human output (tables, sizes, times) and JSON output.
import type { Context } from './client';

/** Columns padded to their widest cell, two spaces apart; the last column is not padded. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((header, column) => Math.max(header.length, ...rows.map((row) => (row[column] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((cell, column) => (column === cells.length - 1 ? cell : cell.padEnd(widths[column]!)))
      .join('  ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n');
}

/** Key-value lines, keys aligned. */
export function fields(entries: [string, string][]): string {
  const width = Math.max(...entries.map(([key]) => key.length));
  return entries.map(([key, value]) => `${`${key}:`.padEnd(width + 1)} ${value}`).join('\n');
}

export { formatBytes } from '../../shared/sizes';

export function formatDuration(ms: number): string {
  if (ms < 1_000) return `${Math.round(ms)} ms`;
  const seconds = Math.round(ms / 1_000);
  if (seconds < 60) return `${(ms / 1_000).toFixed(1)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m${String(seconds % 60).padStart(2, '0')}s`;
  return `${Math.floor(minutes / 60)}h${String(minutes % 60).padStart(2, '0')}m`;
}

/** Local time, "2024-05-01 13:45:07"; "-" for 0. */
export function formatTime(ms: number): string {
  if (!ms) return '-';
  const date = new Date(ms);
  const two = (value: number) => String(value).padStart(2, '0');
  return `${date.getFullYear()}-${two(date.getMonth() + 1)}-${two(date.getDate())} ${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}`;
}

export function formatAge(ms: number, now = Date.now()): string {
  if (!ms) return 'never';
  return `${formatDuration(Math.max(0, now - ms))} ago`;
}

/** Enum names without their common prefix: JOB_SUCCEEDED -> SUCCEEDED. */
export function shortState(state: string): string {
  return state.replace(/^(JOB_|SYNC_STATE_|SYNC_MODE_)/, '');
}

/** Writes the result: JSON (the response as is) with --json, the human text otherwise. */
export function print(context: Context, value: unknown, human: () => string): void {
  process.stdout.write(context.json ? `${JSON.stringify(value, null, 2)}\n` : `${human()}\n`);
}
