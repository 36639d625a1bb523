// CPU time and peak memory of processes, read from /proc (Linux only), for the
// CPU-seconds and peak-RSS figures of both benchmarks.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';

let clockTicksPerSecondCached: number | undefined;

/** The unit of the CPU times in /proc/<pid>/stat (`getconf CLK_TCK`, 100 on every Linux we know). */
export function clockTicksPerSecond(): number {
  if (clockTicksPerSecondCached === undefined) {
    const result = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
    const ticks = Number(result.stdout?.trim());
    clockTicksPerSecondCached = result.status === 0 && Number.isInteger(ticks) && ticks > 0 ? ticks : 100;
  }
  return clockTicksPerSecondCached;
}

/** CPU seconds of one process, all its threads (worker threads included). */
export interface CpuTimes {
  /** utime + stime: the process itself. */
  ownSeconds: number;
  /** cutime + cstime: its children that exited and that it reaped (waited for). */
  reapedChildrenSeconds: number;
}

/** CPU times of `pid` (or of this process, 'self') from /proc/<pid>/stat. */
export function cpuTimes(pid: number | 'self'): CpuTimes {
  const text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) is in parentheses and may hold spaces or ')': fields are counted after the last ')'.
  const fields = text.slice(text.lastIndexOf(')') + 1).trim().split(/\s+/);
  // fields[0] is field 3 (state), so field N is fields[N - 3]: utime 14, stime 15, cutime 16, cstime 17.
  const ticks = (field: number) => Number(fields[field - 3]);
  const perSecond = clockTicksPerSecond();
  return { ownSeconds: (ticks(14) + ticks(15)) / perSecond, reapedChildrenSeconds: (ticks(16) + ticks(17)) / perSecond };
}

/**
 * Starts a measurement; the function returned gives the CPU seconds of this
 * process's children that exited since. A child's times are added to its
 * parent's cutime/cstime when the parent reaps it, which node does before the
 * child's 'exit' event. Exact only when no other child exits meanwhile.
 */
export function reapedChildrenCpu(): () => number {
  const before = cpuTimes('self').reapedChildrenSeconds;
  return () => roundCpu(cpuTimes('self').reapedChildrenSeconds - before);
}

/** CPU seconds are multiples of a clock tick (10 ms); sums of them get float noise. */
export function roundCpu(seconds: number): number {
  return Number(seconds.toFixed(3));
}

/** The pids of `pid`'s children, zombies included (/proc/<pid>/task/<tid>/children). */
export function childPids(pid: number): number[] {
  const pids: number[] = [];
  for (const task of fs.readdirSync(`/proc/${pid}/task`)) {
    try {
      pids.push(...fs.readFileSync(`/proc/${pid}/task/${task}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number));
    } catch {
      // The thread ended meanwhile.
    }
  }
  return pids;
}

/** Waits until `pid` has reaped every child (so their CPU is in its cutime/cstime); false on timeout. */
export async function waitForNoChildren(pid: number, timeoutMs = 5_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (childPids(pid).length > 0) {
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
  return true;
}

/** Resident memory of a process: now (VmRSS) and its peak (VmHWM), in bytes. */
export function memoryOf(pid: number): { rssBytes: number; peakBytes: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0) * 1024;
  return { rssBytes: field('VmRSS'), peakBytes: field('VmHWM') };
}

/**
 * Resets the peak RSS (VmHWM) of `pid` to its current RSS: "5" to
 * /proc/<pid>/clear_refs (Linux 4.0+; root, or the process's owner). Returns
 * undefined when it worked, else why not (VmHWM is then the lifetime peak).
 */
export function resetPeakRss(pid: number): string | undefined {
  try {
    fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
    return undefined;
  } catch (error) {
    return (error as Error).message;
  }
}
