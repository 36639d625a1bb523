// Health events of the configuration server, without daemons: one active event
// per (code, subject) however often the condition is seen, cleared once, raised
// anew after that; newest first with filters; the stored number is bounded
// (cleared events go first), and the active ones are found again after the
// database is reopened.
import fs from 'node:fs';
import t from 'tap';
import { createLogger } from '../../shared/log';
import { HealthEvents } from '../../daemons/configuration-server/entities/health-events';
import { Store } from '../../daemons/configuration-server/store/store';
import { tempDir } from '../helpers/daemons';
import { HealthCode } from '../../daemons/configuration-server/store/records';

const log = createLogger('test', 'silent');

t.test('one active event per code and subject; clear; raise again', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = new Store(dir);
  t.teardown(() => store.close());
  const events = new HealthEvents(store, log);

  const first = events.raise({ code: HealthCode.RpoThresholdExceeded, subject: 'vm1-disk0', machineId: 'machine-1', severity: 'HEALTH_WARNING', message: 'rpo 20 s' });
  const again = events.raise({ code: HealthCode.RpoThresholdExceeded, subject: 'vm1-disk0', machineId: 'machine-1', severity: 'HEALTH_WARNING', message: 'rpo 21 s' });
  t.equal(again.eventId, first.eventId, 'a condition that lasts is one event');
  t.equal(again.message, 'rpo 20 s', 'with the message it was raised with');
  events.raise({ code: HealthCode.RpoThresholdExceeded, subject: 'vm1-disk1', machineId: 'machine-1', severity: 'HEALTH_WARNING', message: 'rpo 30 s' });
  events.raise({ code: HealthCode.HeartbeatMissed, subject: 'ps-1', severity: 'HEALTH_ERROR', message: 'no heartbeat' });
  t.equal(events.list({ activeOnly: true }).length, 3);
  t.same(events.list({ machineId: 'machine-1', activeOnly: true }).map((event) => event.subject), ['vm1-disk1', 'vm1-disk0'], 'newest first, of one machine');
  t.same(events.activeSubjects(HealthCode.RpoThresholdExceeded).sort(), ['vm1-disk0', 'vm1-disk1']);

  events.clear(HealthCode.RpoThresholdExceeded, 'vm1-disk0');
  events.clear(HealthCode.RpoThresholdExceeded, 'vm1-disk0');
  t.notOk(events.isActive(HealthCode.RpoThresholdExceeded, 'vm1-disk0'));
  const cleared = events.list().find((event) => event.eventId === first.eventId)!;
  t.ok(cleared.clearedTimeMs >= cleared.raisedTimeMs, 'the event records when it was cleared');
  const raisedAgain = events.raise({ code: HealthCode.RpoThresholdExceeded, subject: 'vm1-disk0', machineId: 'machine-1', severity: 'HEALTH_WARNING', message: 'rpo 40 s' });
  t.not(raisedAgain.eventId, first.eventId, 'after a clear, the condition is a new event');
  t.equal(events.list().length, 4, 'the list keeps the cleared event');
  t.equal(events.list({ limit: 2 }).length, 2, 'limit applies');
});

t.test('the number of stored events is bounded; cleared ones go first; active ones survive a reopen', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  let store = new Store(dir);
  const storedMax = 5;
  let events = new HealthEvents(store, log, storedMax);
  events.raise({ code: HealthCode.CacheFull, subject: 'keep-me', severity: 'HEALTH_WARNING', message: 'active and old' });
  for (let index = 0; index < 20; index++) {
    events.raise({ code: HealthCode.ReplicationFailed, subject: `disk${index}`, severity: 'HEALTH_ERROR', message: `failed ${index}` });
    events.clear(HealthCode.ReplicationFailed, `disk${index}`);
  }
  const all = events.list({ limit: 100 });
  t.equal(all.length, storedMax, `at most ${storedMax} events are kept`);
  t.ok(all.some((event) => event.subject === 'keep-me'), 'the old active event was kept; cleared ones went first');
  t.same(all.filter((event) => event.subject !== 'keep-me').map((event) => event.subject), ['disk19', 'disk18', 'disk17', 'disk16'], 'the newest cleared ones were kept');
  await store.close();

  store = new Store(dir);
  t.teardown(() => store.close());
  events = new HealthEvents(store, log, storedMax);
  t.ok(events.isActive(HealthCode.CacheFull, 'keep-me'), 'the active event is known after a reopen');
  const same = events.raise({ code: HealthCode.CacheFull, subject: 'keep-me', severity: 'HEALTH_WARNING', message: 'again' });
  t.equal(same.message, 'active and old', 'raising it again after the reopen does not duplicate it');
});
