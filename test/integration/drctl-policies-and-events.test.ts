// Goal: drctl's policy, status and events commands as an operator sees them,
// against a real configuration server: durations in and out (500ms, 5s, 15m,
// 24h), "0"/"off" turning a schedule off at creation, tables and --json, the
// failback policy's refusal as one line and exit 1, and a server that stops
// sending heartbeats raising HEARTBEAT_MISSED in drctl status and drctl events,
// cleared when it heartbeats again.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startDaemon, tempDir } from '../helpers/daemons';
import { configurationServerClient, unary } from '../helpers/clients';
import { eventually, runDrctl } from '../helpers/stack';


const drctl = runDrctl;

async function json<T>(t: tap.Test, server: string, ...args: string[]): Promise<T> {
  const run = await drctl(server, '--json', ...args);
  t.equal(run.code, 0, `drctl ${args.join(' ')} exits 0 ${run.stderr}`);
  return JSON.parse(run.stdout) as T;
}

t.test('drctl policy, policies, status and events', async (t) => {
  const dir = tempDir();
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const heartbeatIntervalMs = 200;
  const cs = await startDaemon('configuration-server', { args: ['--listen', '127.0.0.1:0', '--data-dir', dir, '--heartbeat-interval-ms', String(heartbeatIntervalMs), '--status-poll-interval-ms', '200'] });
  t.teardown(() => cs.stop());
  const server = cs.address;

  const created = await json<{ policy: Record<string, unknown>; failbackPolicy: Record<string, unknown> }>(t, server, 'policy', 'create', 'fast', '--rpo-threshold', '1m', '--retention', '6s', '--crash-interval', '500ms', '--app-interval', '0', '--group-interval', 'off');
  t.match(created.policy, { name: 'fast', rpoThresholdMs: 60_000, retentionMs: 6_000, crashConsistentIntervalMs: 500, appConsistentIntervalMs: 0, groupConsistentIntervalMs: 0 }, 'durations parsed; 0 and off turn the schedules off');
  t.match(created.failbackPolicy, { name: 'fast-failback', rpoThresholdMs: 15 * 60_000, retentionMs: 24 * 3_600_000, appConsistentIntervalMs: 60 * 60_000, crashConsistentIntervalMs: 500, failback: true });

  const human = await drctl(server, 'policy', 'create', 'slow', '--crash-interval', '1.5s');
  t.equal(human.code, 0);
  t.match(human.stdout, /created policy slow and its failback policy slow-failback/);
  t.match(human.stdout, /crash-consistent: every 1500ms/);

  const list = await drctl(server, 'policies');
  const lines = list.stdout.trim().split('\n');
  t.match(lines[0], /^NAME\s+ID\s+RPO THRESHOLD\s+RETENTION\s+CRASH\s+APP\s+GROUP\s+KIND$/);
  t.match(lines.find((line) => line.startsWith('fast ')), /fast\s+policy-\d+\s+1m\s+6s\s+500ms\s+off\s+off\s+forward/);
  t.match(lines.find((line) => line.startsWith('fast-failback ')), /fast-failback\s+policy-\d+\s+15m\s+24h\s+500ms\s+1h\s+off\s+failback of fast \(fixed\)/);

  const show = await drctl(server, 'policy', 'show', 'fast-failback');
  t.match(show.stdout, /failback policy of fast, tied to configuration server cs-[0-9a-f]+ \(not editable\)/);

  const updated = await json<{ rpoThresholdMs: number; retentionMs: number }>(t, server, 'policy', 'update', 'fast', '--rpo-threshold', '2m');
  t.match(updated, { rpoThresholdMs: 120_000, retentionMs: 6_000 });
  const refused = await drctl(server, 'policy', 'update', 'fast-failback', '--rpo-threshold', '1m');
  t.equal(refused.code, 1);
  t.equal(refused.stderr.trim(), 'drctl: FAILED_PRECONDITION: policy fast-failback is the failback policy of fast, tied to this configuration server: it cannot be edited; edit fast instead (its failback policy keeps the fixed values)');
  const nothing = await drctl(server, 'policy', 'update', 'fast');
  t.equal(nothing.code, 1, 'an update with nothing to change is refused by drctl');
  const badDuration = await drctl(server, 'policy', 'create', 'x', '--retention', 'forever');
  t.equal(badDuration.code, 1);
  t.match(badDuration.stderr, /not a duration: "forever"/);
  const tooShort = await drctl(server, 'policy', 'create', 'x', '--rpo-threshold', '10ms');
  t.match(tooShort.stderr, /^drctl: INVALID_ARGUMENT: rpo_threshold_ms: must be from 1 s to 24 h, got 10 ms/);

  const deleted = await json<{ deleted: string[] }>(t, server, 'policy', 'delete', 'slow');
  t.equal(deleted.deleted.length, 2, 'delete removes the policy and its failback policy');
  const gone = await drctl(server, 'policy', 'show', 'slow-failback');
  t.match(gone.stderr, /^drctl: NOT_FOUND/);

  const empty = await drctl(server, 'status');
  t.equal(empty.code, 0);
  t.match(empty.stdout, /SERVERS: none registered/);
  t.match(empty.stdout, /ACTIVE EVENTS: none/);
  t.match((await drctl(server, 'events')).stdout, /no active health events/);

  // A process server that registers, then goes quiet.
  const passphrase = fs.readFileSync(path.join(dir, 'passphrase'), 'utf8').trim();
  const client = configurationServerClient(server);
  t.teardown(() => client.close());
  const registered = await unary(client, client.registerServer, { kind: 'PROCESS_SERVER', name: 'quiet-ps', address: '127.0.0.1:1', passphrase, version: 'test' });
  const raised = await eventually('a HEARTBEAT_MISSED event', async () => {
    const status = await json<{ activeEvents: { code: string; subject: string; message: string }[] }>(t, server, 'status');
    return status.activeEvents.find((event) => event.code === 'HEARTBEAT_MISSED');
  }, 20_000);
  t.equal(raised.subject, registered.serverId, 'the event is about the quiet server');
  t.match(raised.message, /process server quiet-ps \(127\.0\.0\.1:1\) sent no heartbeat/);
  const humanStatus = await drctl(server, 'status');
  t.match(humanStatus.stdout, /ps\s+quiet-ps\s+127\.0\.0\.1:1\s+NO/);
  t.match(humanStatus.stdout, /ACTIVE EVENTS\n.*\n.*HEARTBEAT_MISSED\s+error\s+ps-1\s+active/);

  await unary(client, client.heartbeat, { serverId: registered.serverId, token: registered.token });
  // Keep it alive while the monitor looks again.
  const beat = setInterval(() => void unary(client, client.heartbeat, { serverId: registered.serverId, token: registered.token }).catch(() => {}), heartbeatIntervalMs / 2);
  t.teardown(() => clearInterval(beat));
  await eventually('the event to clear', async () => {
    const events = await json<{ events: { code: string }[] }>(t, server, 'events');
    return events.events.length === 0 ? true : undefined;
  }, 20_000);
  const all = await drctl(server, 'events', '--all');
  t.match(all.stdout, /HEARTBEAT_MISSED\s+error\s+ps-1\s+cleared .* ago/, 'drctl events --all shows it cleared');
  clearInterval(beat);
});
