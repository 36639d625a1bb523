// The prune lock: `drctl prune-retention` replaces the retention store's file,
// so it must never run beside a master target or another prune on the same
// store. Both sides announce themselves first and check second, so of two that
// start together at least one sees the other:
// - a prune creates <store>.prune-lock (exclusively), then looks in /proc for
//   a process holding the store open (processesHolding), and keeps the lock to
//   the end of its run;
// - a master target opens the store file (and keeps it open), then reads the
//   lock, and does not start while its owner lives.
// Linux only: an owner is alive when /proc/<pid>/stat shows the same start
// time (field 22) in the same boot, so a dead prune's lock whose pid was reused
// counts as stale. The master target never removes a lock; the next prune takes
// a stale one over.
//
// The lock is a symbolic link whose target is its owner ("pid:startTime:bootId"),
// not a file holding it: a prune runs when the retention volume is full, where
// a file's first byte finds no block (ENOSPC on a full tmpfs) while a short
// link's target lives in its inode; and the link is created with its content in
// one step, so no reader ever finds a lock without an owner. No fsync: a lock
// only matters within the boot that made it (after a crash it is stale anyway).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { failedPrecondition } from '../../shared/errors';
import type { Logger } from '../../shared/log';

export const pruneLockSuffix = '.prune-lock';
/** Held for the few system calls of a stale lock's takeover, so two prunes never take the same one over. */
export const pruneLockTakeoverSuffix = '.prune-lock-takeover';
/** Longer link targets take a block of their own on ext4 (fast symlinks are shorter than 60 bytes): none is free on a full volume. */
const lockTargetBytesMax = 59;

/** What a lock says about the prune that holds it. */
export interface PruneLockOwner {
  pid: number;
  /** Field 22 of /proc/<pid>/stat: clock ticks after boot, which tells a reused pid from its first process. */
  startTime: string;
  bootId: string;
}

export interface PruneLock {
  file: string;
  /** Removes the lock (on every ending of the prune). */
  release(): void;
}

export const pruneLockPath = (storeFile: string) => `${storeFile}${pruneLockSuffix}`;
/** A link beside the store, to its pruned copy on the --compact-via volume, while the store itself is removed. */
export const prunedCopyMarkerPath = (storeFile: string) => `${storeFile}.pruned-copy`;

function bootId(): string {
  return fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
}

/**
 * Field 22 of /proc/<pid>/stat, or undefined when no such process lives (a
 * zombie counts as dead: its descriptors are closed). A process that exists
 * but whose /proc entry is hidden (mount option hidepid) gives 'hidden'.
 */
function processStartTime(pid: number): string | undefined {
  let stat: string;
  try {
    stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    try {
      process.kill(pid, 0);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ESRCH') return undefined;
    }
    return 'hidden';
  }
  // The command name (field 2) is in parentheses and may hold spaces: fields count from after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  if (fields[0] === 'Z' || fields[0] === 'X') return undefined;
  return fields[19];
}

function ownerOf(target: string | undefined): PruneLockOwner | undefined {
  const match = /^(\d+):(\d+):([0-9a-f-]+)$/.exec(target ?? '');
  if (!match) return undefined;
  return { pid: Number(match[1]), startTime: match[2]!, bootId: match[3]! };
}

/** Whether the process that made the lock still runs (a hidden one counts as running: refuse rather than guess). */
function isAlive(owner: PruneLockOwner): boolean {
  if (owner.bootId !== bootId()) return false;
  const startTime = processStartTime(owner.pid);
  return startTime === 'hidden' || startTime === owner.startTime;
}

/** The lock's target; undefined when there is no lock; '' when something else has its name (a regular file). */
function readLock(file: string): string | undefined {
  try {
    return fs.readlinkSync(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return undefined;
    if (code === 'EINVAL') return '';
    throw error;
  }
}

/** This process as a lock names it. */
function ownTarget(): string {
  const target = `${process.pid}:${processStartTime(process.pid)}:${bootId()}`;
  // 7 digits of pid_max, 11 of ticks (ten years at 100 Hz) and a 36-character boot id fit.
  assert(Buffer.byteLength(target) <= lockTargetBytesMax, `prune lock target ${target} is longer than ${lockTargetBytesMax} bytes`);
  return target;
}

/** Makes the lock `file` name this process, only if no lock is there (symlink fails with EEXIST). False if one is. */
function createExclusive(file: string): boolean {
  try {
    fs.symlinkSync(ownTarget(), file);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  }
  return true;
}

/**
 * Takes the prune lock of `storeFile`, or throws FAILED_PRECONDITION naming
 * its owner. A stale lock (its owner is dead) is taken over under the
 * takeover lock: only its holder removes a lock it did not make, and only
 * after reading again that it is the same stale one; a new prune only ever
 * makes the lock where none is. A lock or takeover lock that cannot be judged
 * (not one of ours, or left by a prune that died in the takeover) is refused,
 * with the file to remove by hand.
 */
export function acquirePruneLock(storeFile: string): PruneLock {
  const file = pruneLockPath(storeFile);
  const lock = {
    file,
    release: () => {
      // Only while it is still ours: a lock removed by hand and made again by another prune stays.
      if (readLock(file) === ownTarget()) fs.unlinkSync(file);
    },
  };
  if (createExclusive(file)) return lock;
  const target = readLock(file);
  if (target === undefined) {
    // Released between our two calls: one more try, as a new prune.
    if (createExclusive(file)) return lock;
    throw failedPrecondition(`${file} appeared while this prune started: another drctl prune-retention is working on the store; wait for it to finish`);
  }
  const owner = ownerOf(target);
  if (!owner) throw failedPrecondition(`${file} is not a prune lock drctl made: if no drctl prune-retention runs on this host, remove it and try again`);
  if (isAlive(owner)) throw failedPrecondition(`${file} is held by process ${owner.pid}: another drctl prune-retention is working on the store; wait for it to finish`);

  const takeover = `${storeFile}${pruneLockTakeoverSuffix}`;
  if (!createExclusive(takeover)) {
    const takerTarget = readLock(takeover);
    const taker = ownerOf(takerTarget);
    if (takerTarget === undefined || (taker && isAlive(taker))) {
      throw failedPrecondition(`another drctl prune-retention${taker ? ` (process ${taker.pid})` : ''} is taking over the stale ${file}: wait for it to finish`);
    }
    throw failedPrecondition(`${takeover} was left by a prune that died while taking over a stale lock: if no drctl prune-retention runs on this host, remove it and try again`);
  }
  try {
    // Only the holder of the takeover lock removes a lock, and this one's owner is dead: if it still names that
    // owner, nobody can change it before it goes.
    if (readLock(file) !== target) throw failedPrecondition(`${file} changed while this prune judged it stale: another drctl prune-retention is working on the store; wait for it to finish`);
    fs.unlinkSync(file);
    if (!createExclusive(file)) throw failedPrecondition(`${file} was taken by another drctl prune-retention as this one removed the stale lock of process ${owner.pid}; wait for it to finish`);
  } finally {
    fs.rmSync(takeover, { force: true });
  }
  return lock;
}

/**
 * The master target's side, before its RetentionStore opens: holds the store
 * file open (a prune's holders check sees it), then refuses to start, with
 * FAILED_PRECONDITION, while a prune's lock names a live owner. A stale lock
 * is left for the next prune to take over. The descriptor stays open until
 * close(), after the store's own close. There is none while the store does
 * not exist yet: a prune refuses a store that does not exist, and once this
 * daemon's LMDB has made it, LMDB holds it open.
 */
export function holdAgainstPrunes(storeFile: string, log: Logger): { close(): void } {
  let fd: number | undefined;
  try {
    fd = fs.openSync(storeFile, 'r');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    // Gone because a prune with --compact-via removed it and was killed before its copy came back: an empty store
    // made here would lose every point.
    const marker = prunedCopyMarkerPath(storeFile);
    const copy = fs.lstatSync(marker, { throwIfNoEntry: false }) ? fs.readlinkSync(marker) : undefined;
    if (copy !== undefined) throw failedPrecondition(`${storeFile} is missing: a drctl prune-retention --compact-via was stopped before its pruned copy (${copy}) came back; run drctl prune-retention --retention-dir ${path.dirname(storeFile)} --keep-hours N again to finish it, then start the master target`);
  }
  const close = () => {
    if (fd !== undefined) fs.closeSync(fd);
    fd = undefined;
  };
  const file = pruneLockPath(storeFile);
  let target: string | undefined;
  try {
    target = readLock(file);
  } catch (error) {
    close();
    throw error;
  }
  if (target !== undefined) {
    const owner = ownerOf(target);
    if (owner && isAlive(owner)) {
      close();
      throw failedPrecondition(`${file}: drctl prune-retention (process ${owner.pid}) is pruning the retention store: wait for it to finish, then start the master target`);
    }
    if (owner) log.warn({ pruneLock: file, pid: owner.pid }, 'a prune lock is left from a drctl prune-retention that is no longer running: starting (the next prune takes the lock over)');
    // No prune of ours made it, so none is at work: a prune refuses until it is removed.
    else log.warn({ pruneLock: file }, 'something that is not a prune lock has its name: starting; drctl prune-retention refuses to run until it is removed');
  }
  return { close };
}

/** Processes that have a file open (Linux /proc): the master target keeps its store open while it runs. */
export function processesHolding(file: string): number[] {
  const holders: number[] = [];
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    let fds: string[];
    try {
      fds = fs.readdirSync(`/proc/${entry}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        if (fs.readlinkSync(`/proc/${entry}/fd/${fd}`) === file) {
          holders.push(Number(entry));
          break;
        }
      } catch {
        // The descriptor closed meanwhile.
      }
    }
  }
  return holders;
}
