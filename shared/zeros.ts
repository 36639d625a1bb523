// One buffer of zeros for every run of zeros the daemons write or compare
// (TRIM and WRITE_ZEROES on the agent, zero extents on the master target):
// views of it, never copies, and nothing ever writes into it.
import assert from 'node:assert/strict';
import { extentBytesMax } from './limits';

const zeros = Buffer.alloc(extentBytesMax);

/** `length` zeros (at most extentBytesMax): a view of the shared buffer, to be read only. */
export function zeroBytes(length: number): Buffer {
  assert.ok(length <= zeros.length, `a run of zeros is written in pieces of at most ${zeros.length} bytes`);
  return zeros.subarray(0, length);
}

/** Whether every byte of `data` (at most extentBytesMax) is zero; memcmp, so data that is not stops at once. */
export function isAllZero(data: Uint8Array): boolean {
  if (data.length > zeros.length) return false;
  return zeros.compare(data, 0, data.length, 0, data.length) === 0;
}
