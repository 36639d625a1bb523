// Replica writes that bypass the page cache (O_DIRECT). Every batch is
// fdatasynced before it is acknowledged anyway, so a buffered write only adds
// the kernel's copy into fresh page-cache pages and their write-back: on this
// kind of VM that cost about 2 CPU-seconds per GiB, against 0.06 s for the
// same bytes written directly (docs/performance.md). The replica's bytes are
// rarely read back (before-images, materialisation), and a DR target's page
// cache is better left to them.
//
// O_DIRECT wants the memory, the offset and the length aligned. Extents are
// whole 4 KiB blocks at block offsets; the memory is a few reused buffers,
// each the memory of a WebAssembly.Memory, which V8 maps at a page boundary
// (JavaScript cannot see or choose the address of a Buffer). Where the file
// system refuses O_DIRECT, or a write is refused for its alignment anyway,
// the buffered path does the write.
import fs from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { failpoint } from '../../shared/failpoints';
// One direct write gathers several extents that follow each other on the disk (directWriteBytesMax).
import { directWriteBytesMax, directWritesInFlightMax, units } from '../../shared/limits';

/** WebAssembly pages are 64 KiB. */
const wasmPageBytes = 64 * units.KiB;
/** The WebAssembly global (not in the TypeScript libraries this project compiles with). */
const { Memory } = (globalThis as unknown as { WebAssembly: { Memory: new (size: { initial: number; maximum: number }) => { buffer: ArrayBuffer } } }).WebAssembly;

interface AlignedBuffer {
  view: Buffer;
}

/** Aligned buffers for direct writes, shared by every replica of the daemon. */
export class DirectWriteBuffers {
  private readonly free: AlignedBuffer[] = [];
  private readonly waiting: ((buffer: AlignedBuffer) => void)[] = [];
  private made = 0;
  /** Why no more buffers can be made (V8 reserves about 10 GiB of address space per WebAssembly memory, which an address-space limit may not leave), once one could not. */
  unavailable: string | undefined;

  /**
   * A page-aligned buffer of directWriteBytesMax; waits while every one is
   * in use. Undefined when none can be made at all: the caller writes
   * through the page cache.
   */
  async acquire(): Promise<AlignedBuffer | undefined> {
    const free = this.free.pop();
    if (free) return free;
    if (this.made < directWritesInFlightMax && !this.unavailable) {
      const pages = directWriteBytesMax / wasmPageBytes;
      try {
        const view = Buffer.from(new Memory({ initial: pages, maximum: pages }).buffer);
        this.made++;
        return { view };
      } catch (error) {
        if (!(error instanceof RangeError)) throw error;
        this.unavailable = error.message;
      }
    }
    if (this.made === 0) return undefined;
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  release(buffer: AlignedBuffer): void {
    const waiter = this.waiting.shift();
    if (waiter) waiter(buffer);
    else this.free.push(buffer);
  }
}

/** Opens a replica for direct writes with `open` (the datastores' confined open), or returns undefined where the file system does not do O_DIRECT. */
export async function openDirect(open: (flags: number) => Promise<FileHandle>): Promise<FileHandle | undefined> {
  if (fs.constants.O_DIRECT === undefined) return undefined;
  try {
    await failpoint('direct-writes.open');
    return await open(fs.constants.O_RDWR | fs.constants.O_DIRECT);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EINVAL') return undefined;
    throw error;
  }
}
