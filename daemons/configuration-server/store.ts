// The configuration server's database: one LMDB environment under the data
// directory with a sub-database per kind of record. It is the single source of
// truth: every state change is committed (and flushed) before anyone hears of it.
import path from 'node:path';
import { open, type Database, type RootDatabase } from 'lmdb';
import { units } from '../../shared/limits';
import type { ServerRecord } from './servers';
import type { MachineRecord } from './machines';
import type { JobRecord } from './jobs';

/** The most the database may grow to; the file is sparse, this only reserves address space. */
export const storeMapBytes = 1 * units.GiB;

export class Store {
  readonly root: RootDatabase;
  readonly servers: Database<ServerRecord, string>;
  readonly machines: Database<MachineRecord, string>;
  readonly jobs: Database<JobRecord, string>;
  /** Named counters for readable ids ("job-7"). */
  readonly counters: Database<number, string>;

  constructor(dataDir: string) {
    this.root = open({
      path: path.join(dataDir, 'config.lmdb'),
      noSubdir: true,
      maxDbs: 8,
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
