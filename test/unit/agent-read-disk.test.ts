// The agent's side of ReadDisk without a server: which paths it may read,
// disk sizes, range validation, and how ranges are cut into reads and pieces.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { SourceDisks } from '../../daemons/agent/disks';
import { pieceRanges, validateRanges } from '../../daemons/agent/read-disk';
import { ErrorCode } from '../../shared/errors';
import { blockBytes, extentBytesMax, readRangesPerRequestMax } from '../../shared/limits';
import { tempDir } from '../helpers/daemons';

const MiB = extentBytesMax;
const code = (code: ErrorCode) => ({ name: 'DrplaneError', code });

t.test('only configured disks may be read', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const good = path.join(dir, 'good.img');
  const odd = path.join(dir, 'odd.img');
  fs.writeFileSync(good, Buffer.alloc(3 * blockBytes));
  fs.writeFileSync(odd, Buffer.alloc(blockBytes + 1));
  const disks = new SourceDisks([good, odd, path.join(dir, 'missing.img')]);
  t.same(await disks.describe(path.join(dir, '.', 'good.img')), { path: good, diskBytes: 3 * blockBytes, blockDevice: false }, 'paths compare after resolve');
  await t.rejects(disks.describe('/etc/passwd'), { ...code(ErrorCode.PermissionDenied), message: /\/etc\/passwd/ });
  await t.rejects(disks.describe(odd), { ...code(ErrorCode.InvalidArgument), message: /not a multiple of the 4096-byte block/ });
  await t.rejects(disks.describe(path.join(dir, 'missing.img')), code(ErrorCode.NotFound));
  await t.rejects(disks.describe(''), code(ErrorCode.InvalidArgument));
});

t.test('ranges must be aligned, inside the disk and few enough', async (t) => {
  const diskBytes = 16 * MiB;
  t.doesNotThrow(() => validateRanges([{ offset: 0, length: diskBytes }], diskBytes, 'd'));
  t.throws(() => validateRanges([{ offset: 512, length: blockBytes }], diskBytes, 'd'), code(ErrorCode.InvalidArgument));
  t.throws(() => validateRanges([{ offset: 0, length: 100 }], diskBytes, 'd'), code(ErrorCode.InvalidArgument));
  t.throws(() => validateRanges([{ offset: 0, length: 0 }], diskBytes, 'd'), code(ErrorCode.InvalidArgument));
  t.throws(() => validateRanges([{ offset: diskBytes - blockBytes, length: 2 * blockBytes }], diskBytes, 'd'), code(ErrorCode.OutOfRange));
  const many = Array.from({ length: readRangesPerRequestMax + 1 }, (_, index) => ({ offset: index * blockBytes, length: blockBytes }));
  t.throws(() => validateRanges(many, 1 << 30, 'd'), code(ErrorCode.LimitExceeded));
});

t.test('pieces stop at 1 MiB boundaries of the disk', async (t) => {
  t.same([...pieceRanges([{ offset: MiB / 2, length: 3.5 * MiB }])], [
    { offset: MiB / 2, length: MiB / 2 },
    { offset: MiB, length: MiB },
    { offset: 2 * MiB, length: MiB },
    { offset: 3 * MiB, length: MiB },
  ]);
  t.same([...pieceRanges([{ offset: blockBytes, length: blockBytes }, { offset: 5 * blockBytes, length: 2 * blockBytes }])], [
    { offset: blockBytes, length: blockBytes },
    { offset: 5 * blockBytes, length: 2 * blockBytes },
  ]);
});
