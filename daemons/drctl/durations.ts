// Durations on the command line ("500ms", "5s", "15m", "24h", "30d") and in
// drctl's output, in the same short form.
import { InvalidArgumentError } from 'commander';

const unitMs: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, min: 60_000, h: 3_600_000, d: 86_400_000 };

/** Milliseconds from "500ms", "5s", "1.5s", "15m", "15min", "24h", "30d" or a bare number of ms; "off" is 0. */
export function parseDuration(text: string): number {
  const trimmed = text.trim().toLowerCase();
  if (trimmed === 'off' || trimmed === '0') return 0;
  const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|min|h|d)?$/.exec(trimmed);
  if (!match) throw new InvalidArgumentError(`not a duration: ${JSON.stringify(text)} (e.g. 500ms, 5s, 15m, 24h, 30d)`);
  const ms = Number(match[1]) * unitMs[match[2] ?? 'ms']!;
  if (!Number.isSafeInteger(Math.round(ms))) throw new InvalidArgumentError(`duration too long: ${text}`);
  return Math.round(ms);
}

/** The shortest exact form: 500ms, 5s, 15m, 24h, 30d; `zero` for 0. */
export function formatInterval(ms: number, zero = '0'): string {
  if (ms === 0) return zero;
  for (const [unit, size] of [['d', 86_400_000], ['h', 3_600_000], ['m', 60_000], ['s', 1_000]] as const) {
    // "24h" reads better than "1d"; days from two on.
    if (ms % size === 0 && (unit !== 'd' || ms >= 2 * size)) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}
