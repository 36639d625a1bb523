// Network namespaces for the multi-host tests (test/multihost, docs/multi-host.md):
// thin wrappers over iproute2 (ip, tc), nft and ping, each run as a process.
// Every name a run creates starts with `drp<pid>-` (namespaces) or `drp<pid>`
// (the root namespace's ends of the management links), so a later run can find
// and remove what a killed run left behind.
import { execFile } from 'node:child_process';
import path from 'node:path';
import { repoRoot } from './daemons';

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command (inside `netns` when given); throws with its output when it fails, unless `allowFailure`. */
export function run(command: string, args: string[], options: { netns?: string; allowFailure?: boolean; timeoutMs?: number } = {}): Promise<CommandResult> {
  const argv = options.netns ? ['ip', 'netns', 'exec', options.netns, command, ...args] : [command, ...args];
  return new Promise((resolve, reject) => {
    execFile(argv[0]!, argv.slice(1), { timeout: options.timeoutMs ?? 60_000, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      if (code !== 0 && !options.allowFailure) {
        reject(new Error(`${argv.join(' ')} exited ${code}: ${stderr.trim() || error?.message}`));
        return;
      }
      resolve({ code, stdout, stderr });
    });
  });
}

/** `ip ARGS` in the root namespace (use `-n NS` in args for another). */
export const ip = (...args: string[]) => run('ip', args);

/** Why this process cannot build namespaces, or '' when it can. */
export function whyNoNamespaces(): string {
  if (process.platform !== 'linux') return `network namespaces need Linux (this is ${process.platform})`;
  if (process.getuid?.() !== 0) return `creating network namespaces, veth links and qdiscs needs root (uid ${process.getuid?.()}); run the tests as root (CI does)`;
  return '';
}

/** Installs ip, tc, nft, ping and openssl where missing (scripts/install-test-deps.sh); throws with its output if it fails. */
export async function installTestDeps(): Promise<string> {
  const script = path.join(repoRoot, 'scripts', 'install-test-deps.sh');
  const result = await run('bash', [script], { allowFailure: true, timeoutMs: 10 * 60_000 });
  if (result.code !== 0) throw new Error(`${script} failed (exit ${result.code}):\n${result.stdout}\n${result.stderr}`);
  return result.stdout.trim().split('\n').pop() ?? '';
}

/**
 * openssl for deploy/drplane-certs: installed by scripts/install-test-deps.sh
 * where missing (as root); answers why not when it cannot be, for t.skip.
 */
export async function whyNoOpenssl(): Promise<string> {
  const found = await run('sh', ['-c', 'command -v openssl'], { allowFailure: true });
  if (found.code === 0) return '';
  if (process.getuid?.() !== 0) return 'openssl is not installed and installing it needs root (scripts/install-test-deps.sh)';
  await installTestDeps();
  return '';
}

/** The namespace prefix of this run: `drp<pid>-`. */
export const runPrefix = (pid = process.pid) => `drp${pid}-`;

/** Whether a process with this pid exists (a pid reused since only keeps leftovers a little longer). */
export const isAlive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
};

/**
 * Removes the namespaces (and so their veth links, with the root ends) of runs
 * that are gone, and this pid's own leftovers: a run killed before its
 * teardown. Processes still inside them are killed first (they are daemons
 * such a run started).
 */
export async function removeStaleNamespaces(): Promise<string[]> {
  const listed = await run('ip', ['netns', 'list'], { allowFailure: true });
  const removed: string[] = [];
  for (const line of listed.stdout.split('\n')) {
    const name = line.split(' ')[0] ?? '';
    const match = /^drp(\d+)-/.exec(name);
    if (!match) continue;
    const pid = Number(match[1]);
    if (pid !== process.pid && isAlive(pid)) continue;
    const pids = await run('ip', ['netns', 'pids', name], { allowFailure: true });
    for (const inside of pids.stdout.split('\n').filter(Boolean).map(Number)) {
      try {
        process.kill(inside, 'SIGKILL');
      } catch {
        // Gone already.
      }
    }
    await run('ip', ['netns', 'delete', name], { allowFailure: true });
    removed.push(name);
  }
  return removed;
}

export type ShapingMethod = 'netem' | 'tbf+nft';

export interface Shaping {
  method: ShapingMethod;
  /** What was set up, in words, for the test's output. */
  description: string;
  remove(): Promise<void>;
}

/**
 * Delay and random loss on `device`'s egress in namespace `netns`. tc netem
 * first; a kernel without it (CONFIG_NET_SCH_NETEM unset: "Specified qdisc
 * kind is unknown") gets the nearest we can build from what it has: a tbf
 * rate limit whose queue adds up to `fallbackQueueMs` of delay when the link
 * is busy (not a fixed delay: an idle link stays fast), and random loss from
 * an nft rule (numgen random) on the same egress.
 */
export async function shapeLink(netns: string, device: string, options: { delayMs: number; lossPercent: number; fallbackRate: string; fallbackQueueMs: number }): Promise<Shaping> {
  const netem = await run('tc', ['qdisc', 'add', 'dev', device, 'root', 'netem', 'delay', `${options.delayMs}ms`, 'loss', `${options.lossPercent}%`], { netns, allowFailure: true });
  if (netem.code === 0) {
    return {
      method: 'netem',
      description: `tc netem delay ${options.delayMs}ms loss ${options.lossPercent}% on ${device} in ${netns}`,
      remove: async () => void (await run('tc', ['qdisc', 'del', 'dev', device, 'root'], { netns, allowFailure: true })),
    };
  }
  if (!/qdisc kind is unknown|Unknown qdisc/i.test(netem.stderr)) throw new Error(`tc netem on ${device} in ${netns} failed: ${netem.stderr.trim()}`);
  // burst: a few full-size packets, so the rate holds at a small time scale and the queue (latency) fills.
  await run('tc', ['qdisc', 'add', 'dev', device, 'root', 'tbf', 'rate', options.fallbackRate, 'burst', '16kb', 'latency', `${options.fallbackQueueMs}ms`], { netns });
  const table = 'drplane_shaping';
  const rules = `table inet ${table} {\n  chain egress {\n    type filter hook output priority 0; policy accept;\n    oifname "${device}" numgen random mod 1000 < ${Math.round(options.lossPercent * 10)} counter drop\n  }\n}\n`;
  await new Promise<void>((resolve, reject) => {
    const child = execFile('ip', ['netns', 'exec', netns, 'nft', '-f', '-'], (error, _stdout, stderr) => (error ? reject(new Error(`nft in ${netns}: ${stderr.trim() || error.message}`)) : resolve()));
    child.stdin!.end(rules);
  });
  return {
    method: 'tbf+nft',
    description: `no netem in this kernel (${netem.stderr.trim()}): tc tbf rate ${options.fallbackRate} with a ${options.fallbackQueueMs} ms queue (delay when busy) and nft "numgen random mod 1000 < ${Math.round(options.lossPercent * 10)} drop" (${options.lossPercent}% loss) on ${device} in ${netns}`,
    remove: async () => {
      await run('tc', ['qdisc', 'del', 'dev', device, 'root'], { netns, allowFailure: true });
      await run('nft', ['delete', 'table', 'inet', table], { netns, allowFailure: true });
    },
  };
}

export interface PingFigures {
  transmitted: number;
  received: number;
  lossPercent: number;
  rttMsMin: number;
  rttMsAvg: number;
  rttMsMax: number;
}

/** `ping -c count -i intervalS address` from inside `netns`, parsed (an unreachable network counts as every packet lost). */
export async function ping(netns: string, address: string, count = 20, intervalS = 0.05): Promise<PingFigures> {
  const result = await run('ping', ['-n', '-q', '-c', String(count), '-i', String(intervalS), '-W', '2', address], { netns, allowFailure: true });
  const packets = /(\d+) packets transmitted, (\d+) received/.exec(result.stdout);
  const rtt = /= ([\d.]+)\/([\d.]+)\/([\d.]+)/.exec(result.stdout);
  // No route at all (a link that is down took its routes): nothing gets through.
  if (!packets && /Network is unreachable/.test(result.stdout + result.stderr)) return { transmitted: count, received: 0, lossPercent: 100, rttMsMin: NaN, rttMsAvg: NaN, rttMsMax: NaN };
  if (!packets) throw new Error(`ping from ${netns} to ${address}: no summary in ${JSON.stringify(result.stdout + result.stderr)}`);
  const transmitted = Number(packets[1]);
  const received = Number(packets[2]);
  return {
    transmitted,
    received,
    lossPercent: transmitted ? (100 * (transmitted - received)) / transmitted : 0,
    rttMsMin: rtt ? Number(rtt[1]) : NaN,
    rttMsAvg: rtt ? Number(rtt[2]) : NaN,
    rttMsMax: rtt ? Number(rtt[3]) : NaN,
  };
}
