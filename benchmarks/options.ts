// What the benchmark commands share in reading their options: a usage error
// (exit 2, one line on stderr), lists from a fixed set, positive integers.

/** Stops the benchmark with a usage error: one line on stderr, exit 2. */
export function fail(message: string): never {
  process.stderr.write(`bench: ${message}\n`);
  process.exit(2);
}

/** A comma-separated list of names from `allowed`, each once. */
export function parseList<T extends string>(flag: string, text: string, allowed: readonly T[]): T[] {
  const items = text.split(',').map((item) => item.trim()).filter(Boolean);
  for (const item of items) if (!allowed.includes(item as T)) fail(`--${flag}: unknown "${item}"; choose from ${allowed.join(',')}`);
  if (items.length === 0) fail(`--${flag}: empty list`);
  return [...new Set(items)] as T[];
}

export function positiveInteger(flag: string, text: string): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) fail(`--${flag} must be a positive integer, got "${text}"`);
  return value;
}
