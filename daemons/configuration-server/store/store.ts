// The configuration server's database: one LMDB environment under the data
// directory with a sub-database per kind of record. It is the single source of
// truth: every state change is committed (and flushed) before anyone hears of it.
import path from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import { units } from '../../../shared/limits';
import type { GroupPointRecord, GroupRecord, HealthEventRecord, JobRecord, MachineRecord, PlanRecord, PolicyRecord, ServerRecord } from './records';

/** The most the database may grow to; the file is sparse, this only reserves address space. */
export const storeMapBytes = 1 * units.GiB;

export class Store {
  readonly root: RootDatabase;
  readonly servers: Database<ServerRecord, string>;
  readonly machines: Database<MachineRecord, string>;
  readonly jobs: Database<JobRecord, string>;
  /** Named counters for readable ids ("job-7"). */
  readonly counters: Database<number, string>;
  readonly policies: Database<PolicyRecord, string>;
  readonly groups: Database<GroupRecord, string>;
  /** Keyed "<group id>/<number, zero-padded>" so a group's points scan in the order they were taken. */
  readonly groupPoints: Database<GroupPointRecord, string>;
  /** Keyed by a zero-padded number, so the oldest come first. */
  readonly healthEvents: Database<HealthEventRecord, string>;
  /** Values set once (this configuration server's id). */
  readonly settings: Database<string, string>;
  /** Recovery plans, by plan id. */
  readonly plans: Database<PlanRecord, string>;

  constructor(dataDir: string) {
    this.root = open({
      path: path.join(dataDir, 'config.lmdb'),
      noSubdir: true,
      maxDbs: 16,
      mapSize: storeMapBytes,
      encoding: 'msgpack',
      // Sync durability: every commit is flushed to disk inside the commit, so
      // an epoch we issue is on disk before any peer hears of it. No noSync, no
      // noMetaSync; overlappingSync off because we want "committed" to mean
      // "durable" (our write rate is low: state changes and ~1 progress write/s per job).
      noSync: false,
      noMetaSync: false,
      overlappingSync: false,
      cache: false,
    });
    this.servers = this.root.openDB<ServerRecord, string>({ name: 'servers', encoding: 'msgpack' });
    this.machines = this.root.openDB<MachineRecord, string>({ name: 'machines', encoding: 'msgpack' });
    this.jobs = this.root.openDB<JobRecord, string>({ name: 'jobs', encoding: 'msgpack' });
    this.counters = this.root.openDB<number, string>({ name: 'counters', encoding: 'msgpack' });
    this.policies = this.root.openDB<PolicyRecord, string>({ name: 'policies', encoding: 'msgpack' });
    this.groups = this.root.openDB<GroupRecord, string>({ name: 'groups', encoding: 'msgpack' });
    this.groupPoints = this.root.openDB<GroupPointRecord, string>({ name: 'group-points', encoding: 'msgpack' });
    this.healthEvents = this.root.openDB<HealthEventRecord, string>({ name: 'health-events', encoding: 'msgpack' });
    this.settings = this.root.openDB<string, string>({ name: 'settings', encoding: 'msgpack' });
    this.plans = this.root.openDB<PlanRecord, string>({ name: 'plans', encoding: 'msgpack' });
    for (const db of [this.servers, this.machines, this.jobs, this.counters, this.policies, this.groups, this.groupPoints, this.healthEvents, this.settings, this.plans]) notFoundPastKeySize(db);
  }

  /**
   * Runs `action` in one synchronous write transaction, committed and flushed
   * when it returns; a throw aborts it and nothing is written.
   */
  write<T>(action: () => T): T {
    return this.root.transactionSync(action);
  }

  /** The next value of a named counter (1, 2, ...); call inside write(). */
  next(counter: string): number {
    const value = (this.counters.get(counter) ?? 0) + 1;
    this.counters.putSync(counter, value);
    return value;
  }

  async close(): Promise<void> {
    await this.root.close();
  }
}

/**
 * A name or id longer than LMDB's largest key cannot have been stored, so a
 * lookup by it finds nothing (NOT_FOUND for the caller); lmdb itself throws on
 * a key of a few KiB ("String does not fit in target buffer"), which a request
 * naming a machine, job or plan by a hostile string turned into INTERNAL.
 */
function notFoundPastKeySize(db: Database<unknown, string>): void {
  const get = db.get.bind(db);
  const keyBytesMax = (db as { maxKeySize?: number }).maxKeySize ?? 1978;
  db.get = ((key: string) => (typeof key === 'string' && Buffer.byteLength(key) > keyBytesMax ? undefined : get(key))) as typeof db.get;
}
