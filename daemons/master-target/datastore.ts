// The master target writes only inside its configured datastore roots.
import fs from 'node:fs';
import path from 'node:path';
import { DrplaneError, ErrorCode, invalidArgument, permissionDenied } from '../../shared/errors';
import { pathLengthMax } from '../../shared/limits';

export class Datastores {
  readonly roots: string[];

  constructor(roots: string[]) {
    this.roots = roots.map((root) => {
      fs.mkdirSync(root, { recursive: true });
      return fs.realpathSync(root);
    });
  }

  /**
   * Resolves a path for a new file and proves it lies under a root, following
   * symlinks of the existing parent (so a link cannot lead outside). Creates
   * missing parent directories inside the root.
   */
  resolveNewFile(requested: string): string {
    if (!requested) throw invalidArgument('path is empty');
    if (requested.length > pathLengthMax) throw invalidArgument(`path is longer than ${pathLengthMax} characters`);
    if (requested.includes('\0')) throw invalidArgument('path contains a NUL byte');
    if (!path.isAbsolute(requested)) throw invalidArgument(`path ${requested} is not absolute`);
    const normal = path.resolve(requested);
    const lexicalRoot = this.roots.find((root) => isInside(root, normal));
    if (!lexicalRoot) throw this.outside(requested);
    // Follow links of the deepest existing ancestor before creating anything, so a
    // symlink inside a root cannot make us create directories outside it.
    let existing = path.dirname(normal);
    while (!fs.existsSync(existing)) existing = path.dirname(existing);
    const realAncestor = fs.realpathSync(existing);
    if (!this.roots.some((root) => root === realAncestor || isInside(root, realAncestor))) throw this.outside(requested);
    fs.mkdirSync(path.dirname(normal), { recursive: true });
    const parent = fs.realpathSync(path.dirname(normal));
    const resolved = path.join(parent, path.basename(normal));
    if (!this.roots.some((root) => isInside(root, resolved))) throw this.outside(requested);
    return resolved;
  }

  private outside(requested: string): DrplaneError {
    return permissionDenied(`path ${requested} is outside the datastore roots (${this.roots.join(', ')}): the master target writes only there`);
  }
}

function isInside(root: string, candidate: string): boolean {
  const relative = path.relative(root, candidate);
  return relative !== '' && !relative.startsWith('..') && !path.isAbsolute(relative);
}

export function existsError(filePath: string): DrplaneError {
  return new DrplaneError(ErrorCode.AlreadyExists, `${filePath} already exists: choose another path (drplane never overwrites a file it did not create)`);
}
