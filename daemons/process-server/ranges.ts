// Byte ranges of a sync: differing blocks coalesced into ranges, and the check
// that what the agent streams back stays inside what was asked for.
import { DrplaneError, ErrorCode } from '../../shared/errors';
import { blockBytes, extentBytesMax } from '../../shared/limits';

export interface ByteRange {
  offset: number;
  length: number;
}

/** Ascending block indices to ranges of consecutive blocks. */
export function coalesceBlocks(blocks: readonly number[]): ByteRange[] {
  const ranges: ByteRange[] = [];
  for (let index = 0; index < blocks.length; ) {
    let end = index + 1;
    while (end < blocks.length && blocks[end] === blocks[end - 1] + 1) end++;
    ranges.push({ offset: blocks[index] * blockBytes, length: (end - index) * blockBytes });
    index = end;
  }
  return ranges;
}

/**
 * Follows an agent's ReadDisk stream through the requested ranges. Pieces must
 * come in order, inside the ranges, whole blocks of at most extentBytesMax;
 * with skipZero the agent may leave out all-zero pieces, which are the gaps.
 */
export class RangeCursor {
  private index = 0;
  private position: number;

  constructor(
    private readonly ranges: readonly ByteRange[],
    private readonly skipZero: boolean,
    private readonly peer: string,
  ) {
    this.position = ranges[0]?.offset ?? 0;
  }

  private end(index: number): number {
    return this.ranges[index].offset + this.ranges[index].length;
  }

  /** Moves to the next range; returns the bytes left out at the end of the current one. */
  private nextRange(): number {
    const skipped = this.end(this.index) - this.position;
    this.index++;
    this.position = this.ranges[this.index]?.offset ?? this.position;
    return skipped;
  }

  /** Accepts a piece; returns the bytes the agent left out before it (all zero). */
  accept(offset: number, length: number): number {
    if (length === 0 || length % blockBytes !== 0 || length > extentBytesMax) {
      throw this.violation(`a piece of ${length} bytes at ${offset} (pieces are whole ${blockBytes}-byte blocks, at most ${extentBytesMax})`);
    }
    let skipped = 0;
    while (this.index < this.ranges.length && offset >= this.end(this.index)) skipped += this.nextRange();
    if (this.index >= this.ranges.length) throw this.violation(`a piece at ${offset} past the requested ranges`);
    if (offset < this.position || offset + length > this.end(this.index)) {
      throw this.violation(`a piece at ${offset} of ${length} bytes where ${this.position}..${this.end(this.index)} was expected`);
    }
    skipped += offset - this.position;
    this.position = offset + length;
    if (skipped > 0 && !this.skipZero) throw this.violation(`no data for ${skipped} bytes before ${offset} though zero pieces were not to be skipped`);
    return skipped;
  }

  /** At the end of the stream: the bytes left out after the last piece. */
  finish(): number {
    let skipped = 0;
    while (this.index < this.ranges.length) skipped += this.nextRange();
    if (skipped > 0 && !this.skipZero) throw this.violation(`a stream that ended ${skipped} bytes short of the requested ranges`);
    return skipped;
  }

  private violation(what: string): DrplaneError {
    return new DrplaneError(ErrorCode.Internal, `${this.peer} sent ${what}`);
  }
}
