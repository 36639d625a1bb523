// The retention store's map: how much address space lmdb maps for it. One
// map of 1 TiB is never outgrown (lmdb maps the file again as it outgrows a
// map and keeps the old mapping resident, docs/performance.md); under an
// address-space limit (RLIMIT_AS) what the limit leaves, decided before lmdb
// opens the store, because lmdb dies of SIGSEGV when the kernel refuses its map.
import fs from 'node:fs';

/** The retention store's map: address space reserved once (a remap keeps the old mapping resident). */
export const retentionMapBytes = 2 ** 40;
/** The smallest map the store takes under an address-space limit (lmdb grows it, remapping, as the store outgrows it). */
export const retentionMapBytesMin = 64 * 2 ** 20;

/** Address space V8 reserves for one WebAssembly memory on 64-bit Linux (a 4 GiB memory and its guard regions). */
export const wasmMemoryReservationBytes = 10 * 2 ** 30;
/**
 * Room the heap, thread stacks and a growing map need beyond what a daemon has reserved at start: V8 aborts the
 * process (SIGTRAP) when it cannot grow its heap. Measured: a master target under a limit 1 GiB above its start-up
 * size died after 12 batches; 5 GiB above it applied 193 batches of 1 MiB and grew its map to three times the first.
 */
export const addressSpaceHeadroomBytes = 4 * 2 ** 30;

/**
 * The map to reserve: retentionMapBytes, or, under an address-space limit
 * (RLIMIT_AS: systemd's LimitAS=, ulimit -v), half of the room the process has
 * left under it after `reserveBytes` (the hashing threads' WebAssembly
 * memories), in whole 64 MiB, so the heap and the thread stacks still fit.
 * lmdb does not survive a map the kernel refuses (the process dies of
 * SIGSEGV with no word), so this is decided before the open. `limits` and
 * `status` are /proc/self/limits and /proc/self/status; `limitBytes` is
 * undefined without a limit.
 */
export function retentionMapSize(limits: string, status: string, reserveBytes = 0): { bytes: number; limitBytes?: number; roomBytes?: number; neededBytes?: number } {
  const soft = /^Max address space\s+(\S+)/m.exec(limits)?.[1];
  if (!soft || soft === 'unlimited') return { bytes: retentionMapBytes };
  const limitBytes = Number(soft);
  const usedBytes = Number(/^VmSize:\s+(\d+) kB/m.exec(status)?.[1] ?? 0) * 1024;
  const roomBytes = Math.max(0, limitBytes - usedBytes - reserveBytes);
  const half = Math.floor(roomBytes / 2 / retentionMapBytesMin) * retentionMapBytesMin;
  // What the daemon needs to work fully: what it holds, its hashers, and room to grow.
  const neededBytes = usedBytes + reserveBytes + addressSpaceHeadroomBytes;
  return { bytes: Math.min(retentionMapBytes, Math.max(retentionMapBytesMin, half)), limitBytes, roomBytes, neededBytes };
}

/** This process's map size (Linux /proc; elsewhere retentionMapBytes), leaving room for `hashThreads` WebAssembly hashers. */
export function ownRetentionMapSize(hashThreads = 0): ReturnType<typeof retentionMapSize> {
  try {
    return retentionMapSize(fs.readFileSync('/proc/self/limits', 'utf8'), fs.readFileSync('/proc/self/status', 'utf8'), hashThreads * wasmMemoryReservationBytes);
  } catch {
    return { bytes: retentionMapBytes };
  }
}
