// Named failpoints before and after every durable write, for fault tests.
// DRPLANE_FAILPOINTS="apply.replica-written=crash@3,apply.before-images-committed=sleep:200"
// crash: SIGKILL this process (as a power cut would) on the Nth hit (default 1st);
// log: log every hit with its detail (what a test checks was done); sleep:MS: pause there; wait-for:PATH: on the Nth hit, log and wait until PATH exists (a test acts meanwhile); error:CODE: throw an error with that errno code (ENOSPC, EIO)
// on the Nth hit; short: the Nth write at a write's failpoint (writeLength) asks for
// half its bytes, as a kernel's short write would return. Unset in production: a lookup in an empty map.
import fs from 'node:fs';

const actions = new Map<string, { action: string; at: number; hits: number }>();
for (const entry of (process.env.DRPLANE_FAILPOINTS ?? '').split(',').filter(Boolean)) {
  const [name, spec = 'crash'] = entry.split('=');
  const [action, at = '1'] = spec.split('@');
  actions.set(name.trim(), { action, at: Number(at), hits: 0 });
}

export async function failpoint(name: string, detail?: string): Promise<void> {
  const entry = actions.get(name);
  if (!entry) return;
  entry.hits++;
  if (entry.action === 'log') process.stdout.write(`${JSON.stringify({ level: 30, msg: 'failpoint', failpoint: name, hit: entry.hits, detail })}\n`);
  if (entry.action === 'crash' && entry.hits === entry.at) {
    process.stdout.write(`${JSON.stringify({ level: 60, msg: 'failpoint crash', failpoint: name, hit: entry.hits })}\n`);
    process.kill(process.pid, 'SIGKILL');
    await new Promise(() => undefined);
  }
  if (entry.action.startsWith('error:') && entry.hits === entry.at) {
    const code = entry.action.slice(6);
    throw Object.assign(new Error(`${code}: injected by failpoint ${name}`), { code });
  }
  if (entry.action.startsWith('wait-for:') && entry.hits === entry.at) {
    const file = entry.action.slice('wait-for:'.length);
    process.stdout.write(`${JSON.stringify({ level: 40, msg: 'failpoint waiting', failpoint: name, hit: entry.hits, file })}\n`);
    while (!fs.existsSync(file)) await new Promise((resolve) => setTimeout(resolve, 20));
  }
  if (entry.action.startsWith('sleep:')) await new Promise((resolve) => setTimeout(resolve, Number(entry.action.slice(6))));
}

/**
 * The bytes a write at failpoint `name` asks for: all of `length`, or on the Nth
 * hit of `name=short@N` about half of it (whole `alignBytes` units, at least one),
 * so the write returns fewer bytes than its caller wanted. Synchronous: it sits
 * inside the write loops.
 */
export function writeLength(name: string, length: number, alignBytes = 1): number {
  const entry = actions.get(name);
  if (!entry || entry.action !== 'short') return length;
  entry.hits++;
  if (entry.hits !== entry.at || length <= alignBytes) return length;
  const shorter = Math.max(alignBytes, Math.floor(length / 2 / alignBytes) * alignBytes);
  process.stdout.write(`${JSON.stringify({ level: 40, msg: 'failpoint short write', failpoint: name, hit: entry.hits, length, asked: shorter })}\n`);
  return shorter;
}

/**
 * A clock that is wrong, for fault tests: DRPLANE_TEST_CLOCK_OFFSET_MS moves
 * this process's Date.now by that many milliseconds (an agent whose clock is
 * ahead). Unset in production: Date.now is left alone.
 */
export function offsetClockForTests(): void {
  const offsetMs = Number(process.env.DRPLANE_TEST_CLOCK_OFFSET_MS ?? 0);
  if (!Number.isSafeInteger(offsetMs) || offsetMs === 0) return;
  const realNow = Date.now;
  Date.now = () => realNow() + offsetMs;
  process.stdout.write(`${JSON.stringify({ level: 40, msg: 'clock offset for a test', offsetMs })}\n`);
}
