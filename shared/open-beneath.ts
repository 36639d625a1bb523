// Opening a file inside a confined root by descriptor, not by a path checked
// earlier: a symlink swapped into the path after the check (a directory
// replaced by a link, or a link as the file itself) cannot lead the daemon
// outside its roots. Linux: the parent directory is opened first and its real
// place read from /proc/self/fd; the file is then opened through that
// descriptor (/proc/self/fd/N/name resolves the name in the directory held,
// as openat would) with O_NOFOLLOW on the last component; the opened file's
// real place is checked too.
import fs from 'node:fs';
import path from 'node:path';
import type { FileHandle } from 'node:fs/promises';
import { type DrplaneError, permissionDenied } from './errors';
import { failpoint } from './failpoints';

export interface Confinement {
  /** Whether a directory (a real path) may hold the file. */
  directoryAllowed(realDirectory: string): boolean;
  /** Whether the file (a real path) may be opened. */
  fileAllowed(realFile: string): boolean;
  /** The refusal for `requested`. */
  outside(requested: string, realPath: string): DrplaneError;
}

/** Where the file or directory a descriptor holds really is. */
export function realPathOf(fd: number): string {
  return fs.realpathSync(`/proc/self/fd/${fd}`);
}

/**
 * Opens `filePath` (absolute, already checked by its letters) with `flags`
 * plus O_NOFOLLOW, through a descriptor of its parent directory. A link as
 * the last component is refused (ELOOP, or EEXIST with O_CREAT|O_EXCL); a
 * directory or file found outside the confinement is refused with its
 * `outside` error, and a file this call created there is removed again.
 */
export async function openBeneath(filePath: string, flags: number, mode: number | undefined, confinement: Confinement): Promise<FileHandle> {
  // Between the caller's check of the path and the open, for the test that swaps a directory for a link there.
  await failpoint('open-beneath.checked');
  const directory = await fs.promises.open(path.dirname(filePath), fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
  try {
    const realDirectory = realPathOf(directory.fd);
    if (!confinement.directoryAllowed(realDirectory)) throw confinement.outside(filePath, realDirectory);
    let handle: FileHandle;
    try {
      handle = await fs.promises.open(`/proc/self/fd/${directory.fd}/${path.basename(filePath)}`, flags | fs.constants.O_NOFOLLOW, mode);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ELOOP') throw permissionDenied(`${filePath} is a symbolic link: drplane opens only the file itself, never a link in its last component`);
      // Keep the error the caller knows (ENOENT, EEXIST, ...), with the path it asked for rather than /proc's.
      throw Object.assign(new Error(`cannot open ${filePath}: ${code ?? (error as Error).message}`), { code, cause: error });
    }
    const realFile = realPathOf(handle.fd);
    if (!confinement.fileAllowed(realFile)) {
      await handle.close();
      if (flags & fs.constants.O_CREAT && flags & fs.constants.O_EXCL) await fs.promises.rm(realFile, { force: true });
      throw confinement.outside(filePath, realFile);
    }
    return handle;
  } finally {
    await directory.close();
  }
}

/** open(2) flags by what the caller does with the file. */
export const openFlags = {
  read: fs.constants.O_RDONLY,
  readWrite: fs.constants.O_RDWR,
  /** A new file: refused when the name exists (a link included). */
  createNew: fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL,
} as const;
