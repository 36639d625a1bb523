// What the benchmark commands share in reading their options: the common
// ones (--work-dir, --seed, --help), a usage error (exit 2, one line on
// stderr), lists from a fixed set, positive integers.
import os from 'node:os';
import path from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';

type ParseArgsOptionsConfig = NonNullable<ParseArgsConfig['options']>;

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

export function nonNegativeInteger(flag: string, text: string): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 0) fail(`--${flag} must be a non-negative integer, got "${text}"`);
  return value;
}

export function positiveInteger(flag: string, text: string): number {
  const value = Number(text);
  if (!Number.isInteger(value) || value < 1) fail(`--${flag} must be a positive integer, got "${text}"`);
  return value;
}

/** The options every benchmark command takes besides its own. */
const commonOptions = {
  'work-dir': { type: 'string' },
  seed: { type: 'string', default: '1' },
  help: { type: 'boolean', short: 'h', default: false },
} as const satisfies ParseArgsOptionsConfig;

/**
 * A benchmark command's options: its own and the common ones (--work-dir,
 * --seed, --help). A usage error stops it (exit 2, the message and the usage);
 * --help prints the usage and exits 0.
 */
export function readOptions<const O extends ParseArgsOptionsConfig>(argv: string[], own: O, usage: string) {
  const options = { ...commonOptions, ...own };
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, strict: true, allowPositionals: false });
  } catch (error) {
    fail(`${(error as Error).message}\n${usage}`);
  }
  const values = parsed.values as unknown as { [K in keyof typeof options]: (typeof options)[K] extends { type: 'boolean' } ? boolean : (typeof options)[K] extends { default: string } ? string : string | undefined };
  if (values.help) {
    process.stdout.write(usage);
    process.exit(0);
  }
  return { values, workParent: path.resolve((values['work-dir'] as string | undefined) ?? os.tmpdir()), seed: nonNegativeInteger('seed', values.seed as string) };
}
