// Goal (issue 5, must-show 4): every daemon serves Prometheus metrics at GET
// /metrics, in the text exposition format (checked line by line here), with
// names a Prometheus user expects (drplane_ prefix, _total counters, units in
// the name, low-cardinality labels), and the replication figures move: the
// initial full sync of an enable, continuous replication of writes made
// through the agent, and a delta resync each make the process server's bytes
// and batches, the master target's applied batches and apply latency, and the
// agent's figures go up, while the configuration server's job, machine and RPO
// gauges follow. Counters never go down between scrapes. Any other path is 404.
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import t from 'tap';
import { WriteThroughClient } from '../../daemons/agent/write-client';
import type { RunningDaemon } from '../helpers/daemons';
import { createImage, seededRandom } from '../helpers/disks';
import { eventually, startStack } from '../helpers/stack';
import { randomWrite } from '../helpers/write-log';

const seed = Number(process.env.DRPLANE_SEED ?? Date.now() % 100_000);
const MiB = 1024 * 1024;
const diskBytes = 32 * MiB;
const diskId = 'vm1-disk0';
/** Continuous-replication rounds: writes through the agent, then every figure must have moved. */
const rounds = 3;
const writesPerRound = 48;
/** How long a wait for a figure may take before the test gives up (not an assertion on speed). */
const waitMs = 120_000;

// --- The exposition format, strictly --------------------------------------------------------------

interface Exposition {
  /** Family name -> type, in the order declared. */
  types: Map<string, string>;
  helps: Map<string, string>;
  /** `name{label="value",...}` with labels sorted -> value. */
  samples: Map<string, number>;
}

const namePattern = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const labelNamePattern = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const samplePattern = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/;
const labelPairPattern = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(?:,|$)/y;
/** As Prometheus reads values (Go's ParseFloat): NaN and Inf in any case; prom-client writes "Nan". */
const valuePattern = /^(?:[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|[-+]?inf(?:inity)?|nan)$/i;
const toNumber = (value: string) => (/inf/i.test(value) ? (value.startsWith('-') ? -Infinity : Infinity) : Number(value));
const types = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

const seriesKey = (name: string, labels: Record<string, string>) =>
  `${name}{${Object.keys(labels)
    .sort()
    .map((label) => `${label}="${labels[label]}"`)
    .join(',')}}`;

/** Parses Prometheus text format 0.0.4; throws naming the line on anything malformed. */
function parseExposition(text: string): Exposition {
  const exposition: Exposition = { types: new Map(), helps: new Map(), samples: new Map() };
  if (!text.endsWith('\n')) throw new Error('the exposition must end with a newline');
  const lines = text.slice(0, -1).split('\n');
  let family = '';
  const fail = (index: number, why: string): never => {
    throw new Error(`line ${index + 1} ${JSON.stringify(lines[index])}: ${why}`);
  };
  lines.forEach((line, index) => {
    // The format ignores empty lines (prom-client puts one after each family).
    if (line === '') return;
    if (line.startsWith('#')) {
      const [hash, keyword, name, ...rest] = line.split(' ');
      if (hash !== '#' || (keyword !== 'HELP' && keyword !== 'TYPE') || !name || !namePattern.test(name)) fail(index, 'a comment must be "# HELP name text" or "# TYPE name type"');
      if (keyword === 'HELP') {
        if (exposition.helps.has(name!)) fail(index, 'a second HELP for the family');
        exposition.helps.set(name!, rest.join(' '));
        return;
      }
      if (rest.length !== 1 || !types.has(rest[0]!)) fail(index, `unknown type ${rest.join(' ')}`);
      if (exposition.types.has(name!)) fail(index, 'a second TYPE for the family');
      exposition.types.set(name!, rest[0]!);
      family = name!;
      return;
    }
    const match = samplePattern.exec(line);
    if (!match) return fail(index, 'not a sample line (name{labels} value)');
    const [, name, labelText, value] = match as unknown as [string, string, string | undefined, string];
    if (!valuePattern.test(value)) fail(index, `value ${value} is not a number`);
    const type = exposition.types.get(family);
    const suffixes = type === 'histogram' ? ['_bucket', '_sum', '_count'] : type === 'summary' ? ['', '_sum', '_count'] : [''];
    if (!family || !suffixes.some((suffix) => name === `${family}${suffix}`)) fail(index, `sample of ${name} outside its family's TYPE (current family: ${family || 'none'})`);
    const labels: Record<string, string> = {};
    if (labelText) {
      labelPairPattern.lastIndex = 0;
      while (labelPairPattern.lastIndex < labelText.length) {
        const pair = labelPairPattern.exec(labelText);
        if (!pair) return fail(index, `malformed labels {${labelText}}`);
        if (!labelNamePattern.test(pair[1]!) || pair[1]! in labels) fail(index, `bad or repeated label ${pair[1]}`);
        labels[pair[1]!] = pair[2]!;
      }
    }
    const key = seriesKey(name, labels);
    if (exposition.samples.has(key)) fail(index, 'the same series twice');
    exposition.samples.set(key, toNumber(value));
  });
  return exposition;
}

/** The value of one series (exact labels), or undefined. */
const valueOf = (exposition: Exposition, name: string, labels: Record<string, string> = {}) => exposition.samples.get(seriesKey(name, labels));

/** The sum of the series of `name` whose labels include `labels`. */
function sumOf(exposition: Exposition, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  const wanted = Object.entries(labels).map(([label, value]) => `${label}="${value}"`);
  for (const [key, value] of exposition.samples) {
    if (!key.startsWith(`${name}{`)) continue;
    const inside = key.slice(name.length + 1, -1).split(',');
    if (wanted.every((pair) => inside.includes(pair))) total += value;
  }
  return total;
}

// --- Scraping ---------------------------------------------------------------------------------

function request(address: string, urlPath: string, method = 'GET'): Promise<{ status: number; contentType: string; body: string }> {
  const separator = address.lastIndexOf(':');
  return new Promise((resolve, reject) => {
    // agent: false, so no kept-alive socket outlives the test.
    const call = http.request({ host: address.slice(0, separator), port: Number(address.slice(separator + 1)), path: urlPath, method, agent: false }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, contentType: String(response.headers['content-type'] ?? ''), body }));
      response.on('error', reject);
    });
    call.on('error', reject);
    call.end();
  });
}

/** The metrics address a daemon logged in its "listening" line. */
function metricsAddress(daemon: RunningDaemon): string {
  return String(daemon.logs.find((line) => line.msg === 'listening')?.metricsAddress ?? '');
}

type DaemonKey = 'cs' | 'ps' | 'mt' | 'agent';

/** Labels drplane's figures may carry: none of them grows with offsets, batches or time. */
const allowedLabels = new Set(['disk_id', 'disk_path', 'mode', 'state', 'kind', 'health', 'machine', 'code', 'severity', 'purpose', 'le']);

t.test('metrics: Prometheus text on every daemon; replication figures move during syncs and replication', async (t) => {
  t.comment(`seed ${seed}`);
  const random = seededRandom(seed);
  const dir = fs.mkdtempSync(path.join(process.env.TMPDIR ?? '/tmp', 'drplane-metrics-'));
  const source = path.join(dir, 'source.img');
  createImage(source, diskBytes, seed);
  const metricsArgs = ['--metrics-listen', '127.0.0.1:0'];
  const stack = await startStack(t, { dir, agents: [{ name: 'agent1', disks: [source], args: metricsArgs }], csArgs: metricsArgs, psArgs: metricsArgs, mtArgs: metricsArgs });
  const addresses: Record<DaemonKey, string> = { cs: metricsAddress(stack.cs), ps: metricsAddress(stack.ps), mt: metricsAddress(stack.mt), agent: metricsAddress(stack.agents.get('agent1')!) };
  for (const [daemon, address] of Object.entries(addresses)) t.match(address, /^127\.0\.0\.1:[1-9]\d*$/, `${daemon} logged the metrics address it bound (${address})`);

  // Every scrape is parsed strictly, and no counter (nor histogram series) of a daemon may go down between its scrapes.
  // The agent's capture counters are the capture's own: they start again with a new capture, which this test never makes.
  const previous = new Map<DaemonKey, Exposition>();
  let scrapes = 0;
  let decreases = 0;
  const scrape = async (daemon: DaemonKey): Promise<Exposition> => {
    const response = await request(addresses[daemon], '/metrics');
    if (response.status !== 200) throw new Error(`${daemon} answered ${response.status} to GET /metrics`);
    if (!response.contentType.startsWith('text/plain; version=0.0.4')) throw new Error(`${daemon}: content-type ${response.contentType}`);
    const exposition = parseExposition(response.body);
    const before = previous.get(daemon);
    if (before) {
      for (const [key, value] of before.samples) {
        const family = key.slice(0, key.indexOf('{')).replace(/_(bucket|sum|count)$/, '');
        const type = exposition.types.get(family) ?? exposition.types.get(key.slice(0, key.indexOf('{')));
        if (type !== 'counter' && type !== 'histogram') continue;
        const now = exposition.samples.get(key);
        if (now !== undefined && now < value) {
          decreases++;
          t.fail(`${daemon}: counter ${key} went down from ${value} to ${now}`);
        }
      }
    }
    previous.set(daemon, exposition);
    scrapes++;
    return exposition;
  };
  const scrapeAll = async () => {
    const [cs, ps, mt, agent] = await Promise.all((['cs', 'ps', 'mt', 'agent'] as const).map(scrape));
    return { cs: cs!, ps: ps!, mt: mt!, agent: agent! };
  };
  /** Scrapes every daemon until `check` answers a value; every scrape on the way is checked too. */
  const scrapeUntil = <T>(what: string, check: (figures: Awaited<ReturnType<typeof scrapeAll>>) => T | undefined) =>
    eventually(what, async () => check(await scrapeAll()), waitMs, 250);

  // --- Before anything is protected ---
  const idle = await scrapeAll();
  t.pass('each daemon answers GET /metrics with text that parses as Prometheus exposition format');
  for (const [daemon, exposition] of Object.entries(idle)) {
    t.ok(valueOf(exposition, 'process_cpu_seconds_total') !== undefined && valueOf(exposition, 'nodejs_heap_size_used_bytes') !== undefined, `${daemon} has the process and Node.js figures`);
  }
  t.ok(valueOf(idle.ps, 'drplane_cache_capacity_bytes')! > 0, `process server: cache capacity ${valueOf(idle.ps, 'drplane_cache_capacity_bytes')} bytes`);
  t.equal(valueOf(idle.ps, 'drplane_syncs_running'), 0, 'process server: no sync running yet');
  t.equal(valueOf(idle.mt, 'drplane_replicas'), 0, 'master target: no replica yet');
  t.ok(valueOf(idle.mt, 'drplane_replicas_max')! > 0, 'master target: replicas_max');
  t.ok(valueOf(idle.mt, 'drplane_retention_volume_capacity_bytes')! > 0, 'master target: retention volume capacity');
  t.equal(valueOf(idle.mt, 'drplane_batch_apply_duration_seconds_count'), 0, 'master target: no batch applied yet');
  t.equal(valueOf(idle.agent, 'drplane_captures_running', { mode: 'write_through' }), 0, 'agent: no capture yet');
  for (const kind of ['process_server', 'master_target', 'agent']) t.equal(valueOf(idle.cs, 'drplane_servers', { kind, health: 'healthy' }), 1, `configuration server: one healthy ${kind}`);
  t.equal(valueOf(idle.cs, 'drplane_machines', { state: 'protected' }), 0, 'configuration server: machines by state, 0 where none');

  for (const [daemon, address] of Object.entries(addresses)) {
    for (const [method, urlPath] of [['GET', '/'], ['GET', '/metricsx'], ['GET', '/metrics/extra'], ['GET', '/favicon.ico'], ['POST', '/metrics']] as const) {
      const response = await request(address, urlPath, method);
      t.equal(response.status, 404, `${daemon}: ${method} ${urlPath} is 404`);
    }
  }

  // --- Enable: the initial full sync under the capture, scraped while the job runs ---
  await stack.drctlJson('policy', 'create', 'fast', '--crash-interval', '1s', '--retention', '1h', '--rpo-threshold', '1m', '--app-interval', '0', '--group-interval', '0');
  await stack.drctlJson('machine', 'add', 'vm1', '--agent', 'agent1', '--disk', source);
  const enable = await stack.drctlJson<{ jobId: string }>('enable', 'vm1', '--datastore', path.join(stack.datastore, 'vm1'), '--policy', 'fast', '--capture', 'write-through', '--no-watch');
  const kind = 'enable-replication';
  const seenDuringJob = { scrapes: 0, jobStates: new Set<string>(), sentBytes: new Set<number>(), syncsRunning: new Set<number>(), replicationStates: new Set<string>() };
  let jobCountedOnce = true;
  const enabled = await scrapeUntil('the enable job to end', ({ cs, ps }) => {
    const jobs = sumOf(cs, 'drplane_jobs', { kind });
    if (jobs !== 1) jobCountedOnce = false;
    const ended = ['succeeded', 'failed', 'stopped'].find((state) => valueOf(cs, 'drplane_jobs', { kind, state }) === 1);
    if (ended) return ended;
    seenDuringJob.scrapes++;
    for (const state of ['queued', 'running']) if (valueOf(cs, 'drplane_jobs', { kind, state }) === 1) seenDuringJob.jobStates.add(state);
    seenDuringJob.sentBytes.add(valueOf(ps, 'drplane_replication_sent_bytes_total', { disk_id: diskId, mode: 'full' }) ?? 0);
    seenDuringJob.syncsRunning.add(valueOf(ps, 'drplane_syncs_running') ?? 0);
    for (const key of ps.samples.keys()) if (key.startsWith('drplane_replication_state{') && key.includes(`disk_id="${diskId}"`)) seenDuringJob.replicationStates.add(key.replace(/.*state="([^"]*)".*/, '$1'));
    return undefined;
  });
  t.equal(enabled, 'succeeded', `the enable job ${enable.jobId} succeeded, as drplane_jobs{kind="${kind}"} shows`);
  t.ok(jobCountedOnce, 'drplane_jobs counted the enable job exactly once at every scrape');
  t.comment(
    `while the job ran (${seenDuringJob.scrapes} scrapes): job states ${[...seenDuringJob.jobStates].join(', ') || '-'}; full-sync bytes sent ${[...seenDuringJob.sentBytes].join(' -> ')}; ` +
      `syncs running ${[...seenDuringJob.syncsRunning].join(', ')}; replication states ${[...seenDuringJob.replicationStates].join(', ') || '-'}`,
  );

  const synced = await scrapeAll();
  const fullSentBytes = valueOf(synced.ps, 'drplane_replication_sent_bytes_total', { disk_id: diskId, mode: 'full' }) ?? 0;
  const fullPlainBytes = valueOf(synced.ps, 'drplane_replication_sent_plain_bytes_total', { disk_id: diskId, mode: 'full' }) ?? 0;
  t.ok(fullSentBytes > 0, `process server: the full sync sent ${fullSentBytes} bytes of disk ${diskId}`);
  t.ok(fullPlainBytes > 0 && fullPlainBytes <= diskBytes, `process server: standing for ${fullPlainBytes} plain bytes (zero regions skipped; the disk has ${diskBytes})`);
  t.ok((valueOf(synced.ps, 'drplane_replication_batches_acknowledged_total', { disk_id: diskId, mode: 'full' }) ?? 0) >= 1, 'process server: the full sync had batches acknowledged');
  t.ok(valueOf(synced.ps, 'drplane_replication_backlog_bytes', { disk_id: diskId }) !== undefined, 'process server: backlog gauge for the disk');
  t.ok((valueOf(synced.ps, 'drplane_replication_rpo_seconds', { disk_id: diskId }) ?? -1) >= 0, 'process server: RPO gauge for the disk');
  t.ok(valueOf(synced.ps, 'drplane_replication_journal_bytes', { disk_id: diskId }) !== undefined, 'process server: journal bytes for the disk');
  t.ok((valueOf(synced.agent, 'drplane_agent_read_bytes_total', { disk_path: source, purpose: 'sync' }) ?? 0) > 0, 'agent: bytes read for the full sync');
  t.equal(valueOf(synced.agent, 'drplane_captures_running', { mode: 'write_through' }), 1, 'agent: one write-through capture running');
  t.equal(valueOf(synced.mt, 'drplane_replicas'), 1, 'master target: one replica');
  t.ok((valueOf(synced.mt, 'drplane_batches_applied_total', { disk_id: diskId }) ?? 0) >= 1, 'master target: batches applied to the replica');
  t.ok((valueOf(synced.mt, 'drplane_applied_bytes_total', { disk_id: diskId }) ?? 0) >= fullPlainBytes, 'master target: at least the plain bytes of the full sync applied');
  t.ok((valueOf(synced.mt, 'drplane_replica_recovery_points', { disk_id: diskId }) ?? 0) >= 1, 'master target: the replica has a recovery point');
  t.ok((valueOf(synced.mt, 'drplane_replica_latest_recovery_point_timestamp_seconds', { disk_id: diskId }) ?? 0) > 1e9, 'master target: time of the newest point, in Unix seconds');
  const applyCount = valueOf(synced.mt, 'drplane_batch_apply_duration_seconds_count') ?? 0;
  t.ok(applyCount >= 1, `master target: the apply latency histogram counted ${applyCount} batches`);
  t.equal(valueOf(synced.mt, 'drplane_batch_apply_duration_seconds_bucket', { le: '+Inf' }), applyCount, 'master target: its +Inf bucket holds every batch');
  t.ok((valueOf(synced.mt, 'drplane_batch_apply_duration_seconds_sum') ?? 0) > 0, 'master target: apply seconds summed');
  const health = await scrapeUntil('the configuration server to poll the disk and mark the machine protected', ({ cs }) =>
    valueOf(cs, 'drplane_machines', { state: 'protected' }) === 1 && valueOf(cs, 'drplane_disk_rpo_seconds', { machine: 'vm1', disk_id: diskId }) !== undefined ? cs : undefined,
  );
  t.pass('configuration server: drplane_machines{state="protected"} is 1 and the disk has an RPO');
  t.equal(valueOf(health, 'drplane_disk_rpo_threshold_seconds', { machine: 'vm1', disk_id: diskId }), 60, 'configuration server: the policy RPO threshold, in seconds');
  t.ok(valueOf(health, 'drplane_disk_backlog_bytes', { machine: 'vm1', disk_id: diskId }) !== undefined, 'configuration server: the backlog it polled');
  const replicating = await scrapeUntil('the session to replicate and the agent to stream', ({ ps, agent }) =>
    valueOf(ps, 'drplane_replication_state', { disk_id: diskId, state: 'replicating' }) === 1 && valueOf(agent, 'drplane_capture_streaming', { disk_path: source }) === 1 ? ps : undefined,
  );
  t.equal(sumOf(replicating, 'drplane_replication_state', { disk_id: diskId }), 1, 'process server: the disk is in exactly one state, replicating');

  // --- Continuous replication: writes through the agent move every figure ---
  const writer = new WriteThroughClient(stack.agents.get('agent1')!.address);
  t.teardown(() => writer.close());
  let last = await scrapeAll();
  const figure = {
    psSent: (e: Exposition) => valueOf(e, 'drplane_replication_sent_bytes_total', { disk_id: diskId, mode: 'continuous' }) ?? 0,
    psPlain: (e: Exposition) => valueOf(e, 'drplane_replication_sent_plain_bytes_total', { disk_id: diskId, mode: 'continuous' }) ?? 0,
    psBatches: (e: Exposition) => valueOf(e, 'drplane_replication_batches_acknowledged_total', { disk_id: diskId, mode: 'continuous' }) ?? 0,
    psReceived: (e: Exposition) => valueOf(e, 'drplane_replication_received_bytes_total', { disk_id: diskId }) ?? 0,
    mtBatches: (e: Exposition) => valueOf(e, 'drplane_batches_applied_total', { disk_id: diskId }) ?? 0,
    mtApplyCount: (e: Exposition) => valueOf(e, 'drplane_batch_apply_duration_seconds_count') ?? 0,
    mtPoints: (e: Exposition) => valueOf(e, 'drplane_replica_recovery_points', { disk_id: diskId }) ?? 0,
    agentWritten: (e: Exposition) => valueOf(e, 'drplane_capture_written_bytes_total', { disk_path: source }) ?? 0,
    agentRecords: (e: Exposition) => valueOf(e, 'drplane_capture_records_total', { disk_path: source }) ?? 0,
  };
  for (let round = 1; round <= rounds; round++) {
    let bytes = 0;
    const writes: Promise<unknown>[] = [];
    for (let index = 0; index < writesPerRound; index++) {
      const { offset, data } = randomWrite(random, diskBytes);
      bytes += data.length;
      writes.push(writer.write(source, offset, data));
    }
    await Promise.all(writes);
    const before = last;
    // Until every figure has moved: the three daemons are scraped one after the other, and a master target's point
    // is committed (and counted) a moment before its batch counters and the process server's acknowledgement move.
    const moved = ({ ps, mt }: { ps: Exposition; mt: Exposition }) =>
      figure.psPlain(ps) >= figure.psPlain(before.ps) + bytes &&
      figure.mtPoints(mt) > figure.mtPoints(before.mt) &&
      figure.psSent(ps) > figure.psSent(before.ps) &&
      figure.psBatches(ps) > figure.psBatches(before.ps) &&
      figure.mtBatches(mt) > figure.mtBatches(before.mt) &&
      figure.mtApplyCount(mt) > figure.mtApplyCount(before.mt);
    const after = await scrapeUntil(`round ${round}: the writes to be applied as a recovery point`, ({ ps, mt, agent }) => (moved({ ps, mt }) ? { ps, mt, agent } : undefined));
    t.ok(figure.psSent(after.ps) > figure.psSent(before.ps), `round ${round}: process server sent bytes ${figure.psSent(before.ps)} -> ${figure.psSent(after.ps)}`);
    t.ok(figure.psPlain(after.ps) >= figure.psPlain(before.ps) + bytes, `round ${round}: standing for at least the ${bytes} bytes written (${figure.psPlain(before.ps)} -> ${figure.psPlain(after.ps)})`);
    t.ok(figure.psReceived(after.ps) >= figure.psReceived(before.ps) + bytes, `round ${round}: change records received from the agent ${figure.psReceived(before.ps)} -> ${figure.psReceived(after.ps)}`);
    t.ok(figure.psBatches(after.ps) > figure.psBatches(before.ps), `round ${round}: batches acknowledged ${figure.psBatches(before.ps)} -> ${figure.psBatches(after.ps)}`);
    t.ok(figure.mtBatches(after.mt) > figure.mtBatches(before.mt), `round ${round}: master target batches applied ${figure.mtBatches(before.mt)} -> ${figure.mtBatches(after.mt)}`);
    t.ok(figure.mtApplyCount(after.mt) > figure.mtApplyCount(before.mt), `round ${round}: apply latency histogram count ${figure.mtApplyCount(before.mt)} -> ${figure.mtApplyCount(after.mt)}`);
    t.ok(figure.mtPoints(after.mt) > figure.mtPoints(before.mt), `round ${round}: recovery points ${figure.mtPoints(before.mt)} -> ${figure.mtPoints(after.mt)}`);
    t.ok(figure.agentWritten(after.agent) >= figure.agentWritten(before.agent) + bytes, `round ${round}: agent captured bytes ${figure.agentWritten(before.agent)} -> ${figure.agentWritten(after.agent)}`);
    t.ok(figure.agentRecords(after.agent) >= figure.agentRecords(before.agent) + writesPerRound, `round ${round}: agent change records ${figure.agentRecords(before.agent)} -> ${figure.agentRecords(after.agent)}`);
    last = after as typeof last;
  }
  const drained = await scrapeUntil('the backlog to drain', ({ ps }) => (valueOf(ps, 'drplane_replication_backlog_bytes', { disk_id: diskId }) === 0 ? ps : undefined));
  t.equal(valueOf(drained, 'drplane_replication_backlog_bytes', { disk_id: diskId }), 0, 'process server: backlog 0 once every write is applied');

  // --- A delta resync under the capture ---
  const hashedBefore = valueOf((await scrapeAll()).agent, 'drplane_agent_read_bytes_total', { disk_path: source, purpose: 'hash_tree' }) ?? 0;
  const resync = await stack.drctlJson<{ jobId: string }>('resync', 'vm1', '--no-watch');
  const resynced = await scrapeUntil('the resync job to end', ({ cs, ps, agent }) => (['succeeded', 'failed', 'stopped'].some((state) => valueOf(cs, 'drplane_jobs', { kind: 'resync', state }) === 1) ? { cs, ps, agent } : undefined));
  t.equal(valueOf(resynced.cs, 'drplane_jobs', { kind: 'resync', state: 'succeeded' }), 1, `the resync job ${resync.jobId} succeeded, as drplane_jobs{kind="resync"} shows`);
  t.equal(valueOf(resynced.cs, 'drplane_jobs', { kind, state: 'succeeded' }), 1, 'the enable job is still counted, succeeded');
  t.ok((valueOf(resynced.ps, 'drplane_replication_batches_acknowledged_total', { disk_id: diskId, mode: 'delta' }) ?? 0) >= 1, 'process server: the delta sync had batches acknowledged (mode="delta")');
  t.ok((valueOf(resynced.agent, 'drplane_agent_read_bytes_total', { disk_path: source, purpose: 'hash_tree' }) ?? 0) >= hashedBefore + diskBytes, 'agent: the delta sync hashed the whole disk (purpose="hash_tree")');

  // --- Names and labels a Prometheus user expects ---
  const final = await scrapeAll();
  const families = new Map<string, { daemon: string; type: string; labels: Set<string> }>();
  for (const [daemon, exposition] of Object.entries(final)) {
    for (const [name, type] of exposition.types) {
      if (!name.startsWith('drplane_')) continue;
      t.ok(families.get(name)?.daemon === undefined, `${name} is served by one daemon only (${daemon})`);
      families.set(name, { daemon, type, labels: new Set() });
      t.ok(exposition.helps.get(name), `${daemon}: ${name} has a HELP text`);
    }
    for (const key of exposition.samples.keys()) {
      if (!key.startsWith('drplane_')) continue;
      const sampleName = key.slice(0, key.indexOf('{'));
      const name = exposition.types.has(sampleName) ? sampleName : sampleName.replace(/_(bucket|sum|count)$/, '');
      for (const pair of key.slice(key.indexOf('{') + 1, -1).split(',').filter(Boolean)) families.get(name)?.labels.add(pair.slice(0, pair.indexOf('=')));
    }
  }
  t.ok(families.size >= 40, `${families.size} drplane_ families over the four daemons`);
  for (const [name, { daemon, type, labels }] of families) {
    t.match(name, /^drplane_[a-z0-9]+(_[a-z0-9]+)*$/, `${daemon}: ${name} is snake case with the drplane_ prefix`);
    if (type === 'counter') t.match(name, /_total$/, `${daemon}: counter ${name} ends in _total`);
    else t.notMatch(name, /_total$/, `${daemon}: ${type} ${name} does not end in _total`);
    const unexpected = [...labels].filter((label) => !allowedLabels.has(label));
    t.same(unexpected, [], `${daemon}: ${name} has only low-cardinality labels (${[...labels].join(', ') || 'none'})`);
  }
  t.equal(families.get('drplane_batch_apply_duration_seconds')?.type, 'histogram', 'the apply latency is a histogram in seconds');
  t.equal(decreases, 0, `no counter went down over ${scrapes} scrapes`);
});
