// Point references the configuration server accepts where a point id goes
// (MaterialiseRecoveryPoint): "<disk>@<sequence>", "<disk>@latest" and the
// other selector words, and "<disk>@<=TIME" with an ISO time or unix ms.
import t from 'tap';
import * as grpc from '@grpc/grpc-js';
import { toServiceError } from '../../shared/errors';
import { parsePointReference } from '../../daemons/configuration-server/entities/recovery-points';

t.test('point references', async (t) => {
  t.same(parsePointReference('vm1-disk0@42'), { diskId: 'vm1-disk0', choice: { selector: 'BY_ID', pointId: 'vm1-disk0@42', timeMs: 0 } });
  t.same(parsePointReference('vm1-disk0@latest').choice.selector, 'LATEST');
  t.same(parsePointReference('vm1-disk0@latest-processed').choice.selector, 'LATEST_PROCESSED');
  t.same(parsePointReference('vm1-disk0@latest-app-consistent').choice.selector, 'LATEST_APP_CONSISTENT');
  t.same(parsePointReference('vm1-disk0@latest-crash-consistent').choice.selector, 'LATEST_CRASH_CONSISTENT');
  t.same(parsePointReference('vm1-disk0@<=1714567890123').choice, { selector: 'AT_OR_BEFORE', pointId: '', timeMs: 1714567890123 });
  t.same(parsePointReference('vm1-disk0@<=2024-05-01T13:45:00Z').choice, { selector: 'AT_OR_BEFORE', pointId: '', timeMs: Date.parse('2024-05-01T13:45:00Z') });
  for (const bad of ['vm1-disk0', '@42', 'vm1-disk0@', 'vm1-disk0@newest', 'vm1-disk0@<=yesterday', 'vm1-disk0@<=', 'vm1-disk0@-1']) {
    let status: number | undefined;
    try {
      parsePointReference(bad);
    } catch (error) {
      status = toServiceError(error).code;
    }
    t.equal(status, grpc.status.INVALID_ARGUMENT, `${JSON.stringify(bad)} is refused`);
  }
});
