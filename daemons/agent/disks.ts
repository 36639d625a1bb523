// The source disks an agent may read: the paths in its configuration
// (--disk), and any image file or block device under its disk roots
// (--disk-root: after a failover the recovered machine's disks live under the
// master target's datastore, e.g. <datastore>/recovered/<disk>.img, and may
// not exist until the failover writes them). Paths are compared after
// path.resolve; a path under a root must also stay under it once symlinks are
// resolved (realpath), so a peer cannot read or write anything else on the machine.
import fsSync from 'node:fs';
import fs, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { DrplaneError, ErrorCode, invalidArgument, limitExceeded, notFound, permissionDenied } from '../../shared/errors';
import { blockBytes, diskBytesMax, pathLengthMax } from '../../shared/limits';
import { openBeneath, openFlags } from '../../shared/open-beneath';

export interface SourceDisk {
  path: string;
  diskBytes: number;
  blockDevice: boolean;
}

export class SourceDisks {
  readonly paths: readonly string[];
  readonly roots: readonly string[];
  private readonly allowed: ReadonlySet<string>;

  constructor(configured: readonly string[], roots: readonly string[] = []) {
    this.paths = [...new Set(configured.map((disk) => path.resolve(disk)))];
    this.roots = [...new Set(roots.map((root) => path.resolve(root)))];
    this.allowed = new Set(this.paths);
  }

  /**
   * The resolved path, or PERMISSION_DENIED when it is neither a configured
   * disk nor under a disk root. Lexical only (no file system access): describe()
   * also checks where the symlinks of a path under a root lead.
   */
  authorize(requested: string): string {
    if (!requested) throw invalidArgument('path is required');
    if (requested.length > pathLengthMax) throw invalidArgument(`path is longer than ${pathLengthMax} characters`);
    const resolved = path.resolve(requested);
    if (this.allowed.has(resolved) || this.rootOf(resolved)) return resolved;
    throw permissionDenied(`${requested} is not a disk this agent may read (${this.describeConfiguration()})`);
  }

  /** The disk root a resolved path lies under (strictly below it), if any. */
  private rootOf(resolved: string): string | undefined {
    return this.roots.find((root) => resolved !== root && resolved.startsWith(root.endsWith(path.sep) ? root : root + path.sep));
  }

  private describeConfiguration(): string {
    const parts = [];
    if (this.paths.length) parts.push(`disks: ${this.paths.join(', ')}`);
    if (this.roots.length) parts.push(`any image file or block device under: ${this.roots.join(', ')}`);
    return parts.join('; ');
  }

  /**
   * authorize(), and for a path under a disk root: once its symlinks are
   * resolved it must still be under the root (resolved too). A path that does
   * not exist (yet) passes: nothing is read until describe() finds it.
   */
  async authorizeExisting(requested: string): Promise<string> {
    const resolved = this.authorize(requested);
    if (this.allowed.has(resolved)) return resolved;
    const root = this.rootOf(resolved)!;
    // The file itself, never a link in its last component: open() refuses one (O_NOFOLLOW), so describe does too.
    const entry = await fs.lstat(resolved).catch(() => undefined);
    if (entry?.isSymbolicLink()) throw permissionDenied(`${requested} is a symbolic link under disk root ${root}: a disk under a root is opened only as the file or device itself`);
    let real: string;
    try {
      real = await fs.realpath(resolved);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return resolved;
      throw new DrplaneError(ErrorCode.FailedPrecondition, `cannot resolve ${resolved}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
    }
    const realRoot = await fs.realpath(root).catch(() => root);
    if (real !== realRoot && real.startsWith(realRoot.endsWith(path.sep) ? realRoot : realRoot + path.sep)) return resolved;
    throw permissionDenied(`${requested} is under disk root ${root} but leads to ${real} outside it (a symlink): not a disk this agent may read`);
  }

  /**
   * Opens a disk this agent may use, by descriptor: a configured --disk as
   * configured (the operator named it, links included); a path under a disk
   * root through its parent directory's descriptor, never through a link in
   * its last component, and only if what it reaches is really under the root
   * (shared/open-beneath.ts), whatever changed in the path since it was checked.
   */
  async open(diskPath: string, flags: number): Promise<FileHandle> {
    const resolved = this.authorize(diskPath);
    if (this.allowed.has(resolved)) return fs.open(resolved, flags);
    const root = this.rootOf(resolved)!;
    const realRoot = await fs.realpath(root).catch(() => root);
    const inside = (real: string) => real.startsWith(realRoot.endsWith(path.sep) ? realRoot : realRoot + path.sep);
    return openBeneath(resolved, flags, undefined, {
      directoryAllowed: (real) => real === realRoot || inside(real),
      fileAllowed: inside,
      outside: (requested, real) => permissionDenied(`${requested} is under disk root ${root} but leads to ${real} outside it: not a disk this agent may read or write`),
    });
  }

  /**
   * Runs `use` with a path naming the opened disk itself (/proc/self/fd/N),
   * for readers that take a path (the hash workers, which share this process's
   * descriptors): they read the file open() checked, not whatever the path names later.
   */
  async withOpenPath<T>(diskPath: string, use: (openPath: string) => Promise<T>): Promise<T> {
    const handle = await this.open(diskPath, openFlags.read);
    try {
      return await use(`/proc/self/fd/${handle.fd}`);
    } finally {
      await handle.close();
    }
  }

  /** stat of a configured disk; fstat through open() for a path under a root. */
  private async stat(diskPath: string): Promise<fsSync.Stats> {
    if (this.allowed.has(diskPath)) return fs.stat(diskPath);
    const handle = await this.open(diskPath, openFlags.read);
    try {
      return await handle.stat();
    } finally {
      await handle.close();
    }
  }

  /** Size and kind of a disk this agent may read; a size that is not whole 4 KiB blocks is refused. */
  async describe(requested: string): Promise<SourceDisk> {
    const diskPath = await this.authorizeExisting(requested);
    let stats;
    try {
      stats = await this.stat(diskPath);
    } catch (error) {
      if (error instanceof DrplaneError) throw error;
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw notFound(`disk ${diskPath} does not exist`);
      throw new DrplaneError(ErrorCode.FailedPrecondition, `cannot stat disk ${diskPath}: ${code ?? (error as Error).message}`);
    }
    let diskBytes: number;
    if (stats.isBlockDevice()) diskBytes = await blockDeviceBytes(diskPath);
    else if (stats.isFile()) diskBytes = stats.size;
    else throw invalidArgument(`${diskPath} is neither an image file nor a block device`);
    if (diskBytes % blockBytes !== 0) throw invalidArgument(`disk ${diskPath} has ${diskBytes} bytes, not a multiple of the ${blockBytes}-byte block`);
    if (diskBytes > diskBytesMax) throw limitExceeded(`disk ${diskPath} has ${diskBytes} bytes, more than the ${diskBytesMax} drplane replicates`);
    return { path: diskPath, diskBytes, blockDevice: stats.isBlockDevice() };
  }
}

/** fstat gives 0 for a block device; sysfs gives its size in 512-byte sectors (no ioctl needed). */
async function blockDeviceBytes(devicePath: string): Promise<number> {
  const name = path.basename(await fs.realpath(devicePath));
  const sizeFile = `/sys/class/block/${name}/size`;
  let text: string;
  try {
    text = await fs.readFile(sizeFile, 'utf8');
  } catch (error) {
    throw new DrplaneError(ErrorCode.FailedPrecondition, `cannot read the size of block device ${devicePath} from ${sizeFile}: ${(error as Error).message}`);
  }
  return Number.parseInt(text.trim(), 10) * 512;
}
