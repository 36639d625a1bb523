// Goal: an LZ4 extent whose size prefix declares far more than the extent's
// length (a few hostile bytes declaring 4 GiB) is refused as corrupt before
// anything is allocated for it; honest frames still decode.
import t from 'tap';
import { decode, encode } from '../../shared/codec';
import { DrplaneError, ErrorCode, toServiceError } from '../../shared/errors';
import { status } from '@grpc/grpc-js';

const KiB = 1024;

/** lz4-napi's block format: the plain size (u32, little-endian), then the block. */
function hostile(declaredBytes: number): Buffer {
  const frame = Buffer.from([0, 0, 0, 0, 0x1f, 0x01, 0x01, 0x00]);
  frame.writeUInt32LE(declaredBytes, 0);
  return frame;
}

t.test('a size prefix declaring 4 GiB is refused as corrupt, with no big allocation', async (t) => {
  const rssBeforeKiB = process.resourceUsage().maxRSS;
  let error: unknown;
  try {
    decode('CODEC_LZ4', hostile(0xffff_ffff), 64 * KiB);
  } catch (caught) {
    error = caught;
  }
  t.ok(error instanceof DrplaneError, 'a DrplaneError');
  t.equal((error as DrplaneError).code, ErrorCode.Corrupt, 'code corrupt');
  t.equal(toServiceError(error).code, status.DATA_LOSS, 'DATA_LOSS through the error table');
  t.match((error as Error).message, /declares 4294967295 plain bytes.*65536/, 'the message names the declared size and the extent length');
  const grewKiB = process.resourceUsage().maxRSS - rssBeforeKiB;
  t.ok(grewKiB < 64 * KiB, `the peak resident size grew by ${grewKiB} KiB (less than 64 MiB): the 4 GiB was never allocated`);
});

t.test('a prefix that does not match the extent, or no prefix at all, is refused', async (t) => {
  for (const [name, data] of [
    ['one byte more than the extent', hostile(64 * KiB + 1)],
    ['one byte less', hostile(64 * KiB - 1)],
    ['three bytes: no whole prefix', Buffer.from([1, 2, 3])],
    ['empty', Buffer.alloc(0)],
  ] as const) {
    t.throws(() => decode('CODEC_LZ4', data, 64 * KiB), { code: ErrorCode.Corrupt }, name);
  }
});

t.test('honest lz4 extents still decode', async (t) => {
  const plain = Buffer.alloc(64 * KiB, 7);
  const { codec, data } = encode(plain, true);
  t.equal(codec, 'CODEC_LZ4');
  t.ok(decode(codec, data, plain.length).equals(plain));
});
