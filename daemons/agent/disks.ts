// The source disks an agent may read: only the paths in its configuration,
// compared after path.resolve, so a peer cannot read anything else on the machine.
import fs from 'node:fs/promises';
import path from 'node:path';
import { DrplaneError, ErrorCode, invalidArgument, limitExceeded, permissionDenied } from '../../shared/errors';
import { blockBytes, diskBytesMax, pathLengthMax } from '../../shared/limits';

export interface SourceDisk {
  path: string;
  diskBytes: number;
  blockDevice: boolean;
}

export class SourceDisks {
  readonly paths: readonly string[];
  private readonly allowed: ReadonlySet<string>;

  constructor(configured: readonly string[]) {
    this.paths = [...new Set(configured.map((disk) => path.resolve(disk)))];
    this.allowed = new Set(this.paths);
  }

  /** The resolved path, or PERMISSION_DENIED when it is not a configured disk. */
  authorize(requested: string): string {
    if (!requested) throw invalidArgument('path is required');
    if (requested.length > pathLengthMax) throw invalidArgument(`path is longer than ${pathLengthMax} characters`);
    const resolved = path.resolve(requested);
    if (!this.allowed.has(resolved)) throw permissionDenied(`${requested} is not a disk this agent may read (configured: ${this.paths.join(', ')})`);
    return resolved;
  }

  /** Size and kind of a configured disk; a size that is not whole 4 KiB blocks is refused. */
  async describe(requested: string): Promise<SourceDisk> {
    const diskPath = this.authorize(requested);
    let stats;
    try {
      stats = await fs.stat(diskPath);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'ENOENT') throw new DrplaneError(ErrorCode.NotFound, `disk ${diskPath} does not exist`);
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
