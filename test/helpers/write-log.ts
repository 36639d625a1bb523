// The test's own record of what a workload wrote through the agent, so that the
// source's state at any change record (a recovery point's change_sequence) can
// be rebuilt and compared with what the master target materialises.
import crypto from 'node:crypto';
import fs from 'node:fs';
import { randomBytes } from './disks';

export interface LoggedWrite {
  captureId: string;
  sequence: number;
  offset: number;
  data: Buffer;
}

export class WriteLog {
  private readonly writes: LoggedWrite[] = [];
  /** Sequences only order writes within one capture: the test's workload must stay in one. */
  captureId = '';

  /** `base` is the source image as it was when the capture started (every logged write comes after it). */
  constructor(private readonly base: Buffer) {}

  add(write: LoggedWrite): void {
    if (write.sequence === 0) throw new Error(`write at ${write.offset} was not captured (sequence 0)`);
    this.captureId ||= write.captureId;
    if (write.captureId !== this.captureId) throw new Error(`the capture restarted (${this.captureId} -> ${write.captureId}): sequences of two captures cannot be ordered`);
    this.writes.push(write);
  }

  /** The highest sequence logged. */
  get lastSequence(): number {
    return this.writes.reduce((highest, write) => Math.max(highest, write.sequence), 0);
  }

  get length(): number {
    return this.writes.length;
  }

  /** The source after every write with a sequence at or below `sequence`, in sequence order. */
  imageAt(sequence: number): Buffer {
    const image = Buffer.from(this.base);
    for (const write of [...this.writes].sort((a, b) => a.sequence - b.sequence)) {
      if (write.sequence > sequence) break;
      write.data.copy(image, write.offset);
    }
    return image;
  }

  hashAt(sequence: number): string {
    return sha256(this.imageAt(sequence));
  }
}

export const sha256 = (data: Buffer) => crypto.createHash('sha256').update(data).digest('hex');

export const sha256OfFile = (file: string) => sha256(fs.readFileSync(file));

/** A random block-aligned write of 4-64 KiB inside a disk of `diskBytes`. */
export function randomWrite(random: () => number, diskBytes: number): { offset: number; data: Buffer } {
  const blocks = 1 + Math.floor(random() * 16);
  const length = blocks * 4096;
  const offset = Math.floor(random() * ((diskBytes - length) / 4096 + 1)) * 4096;
  return { offset, data: randomBytes(length, random) };
}
