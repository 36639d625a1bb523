// The master target writes only inside its configured datastore roots, and
// never inside its own data (the retention store may live under a root).
import fs from 'node:fs';
import path from 'node:path';
import { DrplaneError, ErrorCode, invalidArgument, permissionDenied } from '../../shared/errors';
import { pathLengthMax } from '../../shared/limits';
import { openBeneath } from '../../shared/open-beneath';
import { syncDirectory } from '../../shared/file-io';
import type { FileHandle } from 'node:fs/promises';

/** A file name's longest length on the file systems we run on (NAME_MAX). */
const fileNameBytesMax = 255;

export class Datastores {
  readonly roots: string[];
  private readonly ownDirs: string[];

  /** ownDirs: the master target's data and retention directories; nothing inside them is ever a disk. */
  constructor(roots: string[], ownDirs: string[] = []) {
    this.roots = roots.map((root) => {
      fs.mkdirSync(root, { recursive: true });
      return fs.realpathSync(root);
    });
    this.ownDirs = ownDirs.map((dir) => (fs.existsSync(dir) ? fs.realpathSync(dir) : path.resolve(dir)));
  }

  /**
   * Resolves a path for a new file and proves it lies under a root, following
   * symlinks of the existing parent (so a link cannot lead outside). Creates
   * missing parent directories inside the root, durably (their parents fsynced).
   */
  async resolveNewFile(requested: string): Promise<string> {
    const planned = this.plannedPath(requested);
    const firstCreated = fs.mkdirSync(path.dirname(planned), { recursive: true });
    // Proven again now that the directories exist (one may have been replaced by a link meanwhile).
    const resolved = path.join(fs.realpathSync(path.dirname(planned)), path.basename(planned));
    if (resolved !== planned) throw this.outside(requested);
    // Each new directory's entry is durable once the directory holding it is synced; top down, so a crash keeps a prefix.
    if (firstCreated) {
      let parent = path.dirname(firstCreated);
      for (const name of path.relative(parent, path.dirname(planned)).split(path.sep)) {
        await syncDirectory(parent);
        parent = path.join(parent, name);
      }
    }
    return resolved;
  }

  /**
   * Where resolveNewFile would put the file, creating nothing: the links of the
   * deepest existing ancestor followed, so the answer is the real path the
   * file will have. For checks made before anything is written.
   */
  plannedPath(requested: string): string {
    const normal = this.lexicallyInside(requested);
    // Follow links of the deepest existing ancestor before creating anything, so a
    // symlink inside a root cannot make us create directories outside it.
    const existing = existingAncestor(path.dirname(normal));
    const realAncestor = fs.realpathSync(existing);
    if (!this.underRoot(realAncestor, true)) throw this.outside(requested);
    const resolved = path.join(realAncestor, path.relative(existing, normal));
    if (!this.underRoot(resolved, false)) throw this.outside(requested);
    this.checkNotOwn(requested, resolved);
    return resolved;
  }

  /**
   * The path of an existing directory entry (its parent's links followed, its
   * last component not), or undefined when its directory does not exist.
   * Creates nothing.
   */
  resolveEntry(requested: string): string | undefined {
    const planned = this.plannedPath(requested);
    return fs.existsSync(path.dirname(planned)) ? planned : undefined;
  }

  /** Resolves an existing file, following every link, and proves it lies under a root; undefined when it does not exist. */
  resolveExisting(requested: string): string | undefined {
    this.lexicallyInside(requested);
    let real: string;
    try {
      real = fs.realpathSync(path.resolve(requested));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
      throw error;
    }
    if (!this.underRoot(real, false)) throw this.outside(requested);
    this.checkNotOwn(requested, real);
    return real;
  }

  /** Proves a path lies under a root (the links of its existing part followed) without touching anything; refuses with `code`. */
  checkUnderRoots(requested: string, code: ErrorCode): string {
    try {
      return this.plannedPath(requested);
    } catch (error) {
      if (error instanceof DrplaneError && error.code !== code && error.code === ErrorCode.PermissionDenied) throw new DrplaneError(code, error.message);
      throw error;
    }
  }

  /**
   * Opens a file whose path was checked (plannedPath, resolveNewFile) by
   * descriptor: never through a link in its last component, and only if the
   * directory and the file it reaches are really under a root and not the
   * master target's own data, whatever changed in the path since the check.
   */
  open(filePath: string, flags: number, mode?: number): Promise<FileHandle> {
    return openBeneath(filePath, flags, mode, {
      directoryAllowed: (real) => this.underRoot(real, true) && !this.ownDirOf(real),
      fileAllowed: (real) => this.underRoot(real, false) && !this.ownDirOf(real),
      outside: (requested, real) => permissionDenied(`path ${requested} leads to ${real}, outside the datastore roots (${this.roots.join(', ')}) or inside the master target's own data: the master target writes only in its roots`),
    });
  }

  /** The checks every path from the network gets: present, bounded, absolute, under a root by its letters. */
  private lexicallyInside(requested: string): string {
    checkPathText(requested, 'path');
    const normal = path.resolve(requested);
    if (!this.underRoot(normal, false)) throw this.outside(requested);
    if (Buffer.byteLength(path.basename(normal)) > fileNameBytesMax) throw invalidArgument(`path ${requested}: its file name is longer than ${fileNameBytesMax} bytes`);
    return normal;
  }

  private underRoot(candidate: string, rootItself: boolean): boolean {
    return this.roots.some((root) => (rootItself && root === candidate) || isInside(root, candidate));
  }

  private ownDirOf(resolved: string): string | undefined {
    return this.ownDirs.find((dir) => dir === resolved || isInside(dir, resolved));
  }

  private checkNotOwn(requested: string, resolved: string): void {
    const own = this.ownDirOf(resolved);
    if (own) throw permissionDenied(`path ${requested} is inside the master target's own data (${own}): disks never live there`);
  }

  private outside(requested: string): DrplaneError {
    return permissionDenied(`path ${requested} is outside the datastore roots (${this.roots.join(', ')}): the master target writes only there`);
  }
}

/** Checks a path given by a peer: present, at most pathLengthMax, absolute, no NUL. */
export function checkPathText(requested: string, field: string): void {
  if (!requested) throw invalidArgument(`${field} is empty`);
  if (requested.length > pathLengthMax) throw invalidArgument(`${field} is longer than ${pathLengthMax} characters`);
  if (requested.includes('\0')) throw invalidArgument(`${field} contains a NUL byte`);
  if (!path.isAbsolute(requested)) throw invalidArgument(`${field} ${requested} is not absolute`);
}

function existingAncestor(from: string): string {
  let existing = from;
  while (!fs.existsSync(existing)) existing = path.dirname(existing);
  return existing;
}

export function isInside(root: string, candidate: string): boolean {
  const relative = path.relative(root, candidate);
  return relative !== '' && !relative.startsWith('..') && !path.isAbsolute(relative);
}


/** The temporary file beside `target` that a file is written to before it is renamed into place. */
export function besideTemporary(target: string, purpose: 'materialise' | 'seed'): string {
  const name = `.${path.basename(target)}.drplane-${purpose}`;
  if (Buffer.byteLength(name) > fileNameBytesMax) throw invalidArgument(`${target}: the file name is too long for the temporary file ${name} beside it (at most ${fileNameBytesMax} bytes)`);
  return path.join(path.dirname(target), name);
}

export function existsError(filePath: string): DrplaneError {
  return new DrplaneError(ErrorCode.AlreadyExists, `${filePath} already exists: choose another path (drplane never overwrites a file it did not create)`);
}
