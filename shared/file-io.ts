// Reading and writing every byte of a buffer, and making new directory entries
// durable. A write may write less than it was asked to (a file system nearly
// full, a signal, a device's limit): the caller that ignores bytesWritten
// leaves a hole it believes is written. Every replica, rollback, materialise
// and source write goes through here: it loops on a short write and fails on a
// write that writes nothing, so a batch is either whole or refused. A read may
// also return less than asked; at the end of the file it returns nothing, and
// each caller says what that means (zeros, or its own error).
import fs from 'node:fs';
import path from 'node:path';
import type { FileHandle } from 'node:fs/promises';
import { failpoint, writeLength } from './failpoints';

/**
 * Writes all of `data` at `offset`, looping over short writes; throws when a
 * write writes nothing. `failpointName` lets a fault test make one write short;
 * `alignBytes` keeps an injected short write aligned (O_DIRECT).
 */
export async function writeAll(handle: FileHandle, data: Uint8Array, offset: number, failpointName: string, alignBytes = 1): Promise<void> {
  for (let done = 0; done < data.length; ) {
    const { bytesWritten } = await handle.write(data, done, writeLength(failpointName, data.length - done, alignBytes), offset + done);
    if (bytesWritten <= 0) throw Object.assign(new Error(`write at ${offset + done} wrote nothing (${data.length - done} bytes left)`), { code: 'EIO' });
    done += bytesWritten;
  }
}

/** writeAll for small writes, inline: a page-cache write of a few KiB costs less than a trip through the thread pool. */
export function writeAllSync(fd: number, data: Uint8Array, offset: number, failpointName: string): void {
  for (let done = 0; done < data.length; ) {
    const written = fs.writeSync(fd, data, done, writeLength(failpointName, data.length - done), offset + done);
    if (written <= 0) throw Object.assign(new Error(`write at ${offset + done} wrote nothing (${data.length - done} bytes left)`), { code: 'EIO' });
    done += written;
  }
}

/** What a read that meets the end of the file does: fill the rest with zeros, or throw the error made from where it stopped. */
export type PastEnd = 'zeros' | ((at: number) => Error);

function endOfFile(into: Uint8Array, done: number, offset: number, pastEnd: PastEnd): void {
  if (pastEnd !== 'zeros') throw pastEnd(offset + done);
  into.fill(0, done);
}

/** Reads all of `into` from `offset`, looping over short reads. */
export async function readAll(handle: FileHandle, into: Uint8Array, offset: number, pastEnd: PastEnd): Promise<void> {
  for (let done = 0; done < into.length; ) {
    const { bytesRead } = await handle.read(into, done, into.length - done, offset + done);
    if (bytesRead === 0) return endOfFile(into, done, offset, pastEnd);
    done += bytesRead;
  }
}

/** readAll for small reads, inline: a page-cache read of a few KiB costs less than a trip through the thread pool. */
export function readAllSync(fd: number, into: Uint8Array, offset: number, pastEnd: PastEnd): void {
  for (let done = 0; done < into.length; ) {
    const bytesRead = fs.readSync(fd, into, done, into.length - done, offset + done);
    if (bytesRead === 0) return endOfFile(into, done, offset, pastEnd);
    done += bytesRead;
  }
}

/** A new, renamed or removed directory entry is durable only once its directory is synced. */
export async function syncDirectory(dir: string): Promise<void> {
  const handle = await fs.promises.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
  await failpoint('directory.synced', dir);
}

/** Writes a small file so that a crash leaves the old or the new content, never a mix. */
export async function writeFileDurably(file: string, content: string): Promise<void> {
  const temporary = `${file}.tmp`;
  const handle = await fs.promises.open(temporary, 'w');
  try {
    await handle.writeFile(content);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fs.promises.rename(temporary, file);
  await syncDirectory(path.dirname(file));
}
