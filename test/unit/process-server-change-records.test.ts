// Goal: the process server checks every change record an agent sends before
// it journals it; a zero run (zero_length, no data) must be whole blocks, at
// most 1 MiB, inside the disk, and never carry data or be a marker; a bad one
// ends the stream with INVALID_ARGUMENT naming the record.
import t from 'tap';
import type { ChangeRecord__Output } from '../../generated/drplane/v1/ChangeRecord';
import { checkRecord } from '../../daemons/process-server/change-stream';
import { ErrorCode } from '../../shared/errors';

const MiB = 1024 * 1024;
const diskBytes = 16 * MiB;
const record = (fields: Partial<ChangeRecord__Output>): ChangeRecord__Output => ({ sequence: 7, timeMs: 1, offset: 0, data: Buffer.alloc(0), marker: 'MARKER_NONE', tag: '', zeroLength: 0, ...fields });

t.test('zero runs are checked like writes', async (t) => {
  t.doesNotThrow(() => checkRecord(record({ offset: 4096, zeroLength: MiB }), 7, diskBytes, 'agent1'), 'a zero run of 1 MiB inside the disk');
  t.doesNotThrow(() => checkRecord(record({ offset: diskBytes - 4096, zeroLength: 4096 }), 7, diskBytes, 'agent1'), 'one block at the end of the disk');
  const refused: [string, Partial<ChangeRecord__Output>, RegExp][] = [
    ['with data', { zeroLength: 4096, data: Buffer.alloc(4096) }, /a zero run with data/],
    ['not whole blocks', { zeroLength: 1000 }, /a zero run of 1000 bytes/],
    ['over 1 MiB', { zeroLength: 2 * MiB }, /a zero run of 2097152 bytes/],
    ['past the end of the disk', { offset: diskBytes - 4096, zeroLength: 8192 }, /outside the disk/],
    ['at an unaligned offset', { offset: 100, zeroLength: 4096 }, /outside the disk/],
    ['on a marker', { marker: 'MARKER_APP_CONSISTENT', zeroLength: 4096 }, /a marker with data or a zero run/],
    ['a write with neither data nor a zero run', {}, /a write of 0 bytes/],
  ];
  for (const [what, fields, message] of refused) {
    const error = (() => {
      try {
        checkRecord(record(fields), 7, diskBytes, 'agent1');
      } catch (caught) {
        return caught as { code: string; message: string };
      }
      return undefined;
    })();
    t.equal(error?.code, ErrorCode.InvalidArgument, `a zero run ${what} is refused`);
    t.match(error?.message ?? '', /agent1 sent change record 7/, `${what}: the message names the agent and the record`);
    t.match(error?.message ?? '', message, `${what}: and says why`);
  }
});
