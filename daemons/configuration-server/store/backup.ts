// Backup and restore of the configuration server's database.
// - Backup (while the server runs): LMDB copies the environment inside one read
//   transaction (mdb_env_copy2), so the copy is one consistent state even while
//   jobs write; it goes to a temporary file in the data directory, is streamed
//   in chunks, and the file is deleted after (also when the caller goes away).
// - Restore (offline, `drctl restore`): the server must be stopped, since an
//   LMDB file replaced under a running environment is not seen by it and would
//   be overwritten by its next commit. The file is checked to be a drplane
//   configuration database, the current one is kept beside it, and the new one
//   is put in place with one rename, so config.lmdb is always the old or the new.
import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { open } from 'lmdb';
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument, limitExceeded } from '../../../shared/errors';
import { backupChunkBytes, backupsRunningMax } from '../../../shared/limits';
import type { Logger } from '../../../shared/log';
import { storeMapBytes, type Store } from './store';

/** The database file in the data directory (store.ts), and LMDB's lock file beside it. */
export const databaseFileName = 'config.lmdb';
export const lockFileSuffix = '-lock';
/** Temporary copies made for Backup: removed after streaming, and at start-up if a crash left one. */
const backupFilePattern = /^config\.lmdb\.backup-\d+-[0-9a-f]+\.tmp$/;
/** Sub-databases every drplane configuration database has had since its first start. */
export const requiredDatabases = ['servers', 'machines', 'jobs', 'counters', 'policies', 'settings'] as const;
/** Written at the first start (policies.ts); a database without it is not a configuration server's. */
const configurationServerIdKey = 'configuration-server-id';

/** A consistent copy of the database, ready to stream. */
export interface BackupFile {
  totalBytes: number;
  /** When the copy was taken (unix ms): it holds every change committed before. */
  timeMs: number;
  /** The file's contents in chunks of at most backupChunkBytes. */
  chunks(): AsyncGenerator<Buffer>;
  /** Deletes the copy; safe to call more than once. */
  close(): Promise<void>;
}

export class Backups {
  /** Copies in progress or open for streaming: the environment must not close under them. */
  private readonly open = new Set<Promise<void>>();
  private running = 0;

  constructor(
    private readonly store: Store,
    private readonly dataDir: string,
    private readonly log: Logger,
  ) {
    for (const name of fs.readdirSync(dataDir)) {
      if (!backupFilePattern.test(name)) continue;
      fs.rmSync(path.join(dataDir, name), { force: true });
      log.info({ file: name }, 'removed a backup copy a previous run left behind');
    }
  }

  /** Copies the database into a temporary file in the data directory. */
  async take(): Promise<BackupFile> {
    if (this.running >= backupsRunningMax) throw limitExceeded(`${this.running} backups are being taken, the most at once: try again when one is done`);
    this.running++;
    let release!: () => void;
    const done = new Promise<void>((resolve) => (release = resolve));
    this.open.add(done);
    const file = path.join(this.dataDir, `${databaseFileName}.backup-${Date.now()}-${crypto.randomBytes(4).toString('hex')}.tmp`);
    let closed = false;
    const close = async () => {
      if (closed) return;
      closed = true;
      await fs.promises.rm(file, { force: true }).catch((error: unknown) => this.log.warn({ err: error, file }, 'could not delete a backup copy'));
      this.running--;
      this.open.delete(done);
      release();
    };
    try {
      const timeMs = Date.now();
      // Compacting leaves out free pages: the copy is the smallest to send, and as consistent (one read transaction).
      await this.store.root.backup(file, true);
      const totalBytes = (await fs.promises.stat(file)).size;
      this.log.info({ file, totalBytes, durationMs: Date.now() - timeMs }, 'database copied for a backup');
      return { totalBytes, timeMs, chunks: () => readChunks(file), close };
    } catch (error) {
      await close();
      throw new DrplaneError(ErrorCode.Internal, `could not copy the database for a backup: ${(error as Error).message}`, { cause: error });
    }
  }

  /** Waits until no copy is being made or streamed (the database may close then). */
  async stop(): Promise<void> {
    await Promise.all([...this.open]);
  }
}

async function* readChunks(file: string): AsyncGenerator<Buffer> {
  const handle = await fs.promises.open(file, 'r');
  try {
    for (;;) {
      const buffer = Buffer.allocUnsafe(backupChunkBytes);
      const { bytesRead } = await handle.read(buffer, 0, backupChunkBytes, null);
      if (bytesRead === 0) return;
      yield buffer.subarray(0, bytesRead);
    }
  } finally {
    await handle.close();
  }
}

/** What a configuration database holds, as checked before a restore. */
export interface DatabaseSummary {
  configurationServerId: string;
  machines: number;
  jobs: number;
  servers: number;
}

/** Open only sub-databases that exist (lmdb-js answers undefined for a missing one; its types leave `create` out). */
const openExistingOnly = { create: false };

/**
 * Opens an LMDB file read-only and checks that it is a drplane configuration
 * database: the sub-databases it has had since its first start, and this
 * configuration server's id. Throws INVALID_ARGUMENT saying what is wrong.
 * LMDB trusts its file: a damaged one can crash the process that opens it, so
 * restore runs this in a child process (inspect-database.ts).
 */
export async function inspectDatabase(file: string, label = file): Promise<DatabaseSummary> {
  const what = `${label} is not a drplane configuration database`;
  refuseWithoutMetaPage(file, what);
  let root;
  try {
    root = open({ path: file, noSubdir: true, readOnly: true, maxDbs: 64, mapSize: storeMapBytes, encoding: 'msgpack', cache: false });
  } catch (error) {
    throw invalidArgument(`${what} (LMDB cannot open it: ${(error as Error).message})`);
  }
  try {
    const databases = new Map<string, ReturnType<typeof root.openDB>>();
    const missing: string[] = [];
    for (const name of requiredDatabases) {
      let database;
      try {
        database = root.openDB({ name, encoding: 'msgpack', ...openExistingOnly });
      } catch {
        database = undefined;
      }
      if (database) databases.set(name, database);
      else missing.push(name);
    }
    if (missing.length) throw invalidArgument(`${what}: it has no ${missing.join(', ')} sub-database${missing.length === 1 ? '' : 's'}`);
    const configurationServerId = databases.get('settings')!.get(configurationServerIdKey) as unknown;
    if (typeof configurationServerId !== 'string' || !configurationServerId) throw invalidArgument(`${what}: it holds no configuration server id`);
    const count = (name: string) => databases.get(name)!.getKeysCount();
    return { configurationServerId, machines: count('machines'), jobs: count('jobs'), servers: count('servers') };
  } finally {
    await root.close();
  }
}

/**
 * LMDB's file starts with two meta pages; the first holds the magic number
 * right after its page header: at offset 16 in LMDB 0.9's format, 24 in the
 * 1.0 format lmdb-js writes (its page header also holds a transaction id).
 */
const lmdbMagic = 0xbeefc0de;
const lmdbMagicOffsets = [16, 24];

function refuseWithoutMetaPage(file: string, what: string): void {
  const header = Buffer.alloc(Math.max(...lmdbMagicOffsets) + 4);
  const fd = fs.openSync(file, 'r');
  try {
    const read = fs.readSync(fd, header, 0, header.length, 0);
    if (!lmdbMagicOffsets.some((offset) => offset + 4 <= read && header.readUInt32LE(offset) === lmdbMagic)) throw invalidArgument(`${what}: it is not an LMDB file (no LMDB meta page at its start)`);
  } finally {
    fs.closeSync(fd);
  }
}

/** How long the check of a backup file may take (it reads a few keys of a file of at most storeMapBytes). */
export const inspectTimeoutMs = 60_000;

/** Runs inspectDatabase in a child process: a file that crashes LMDB is reported, not fatal. */
export function inspectDatabaseApart(file: string, label = file): DatabaseSummary {
  const child = spawnSync(process.execPath, [path.join(__dirname, 'inspect-database.js'), file, label], { encoding: 'utf8', timeout: inspectTimeoutMs });
  const what = `${label} is not a drplane configuration database`;
  if (child.error) throw new DrplaneError(ErrorCode.Internal, `could not check ${file}: ${child.error.message}`);
  if (child.signal || child.status !== 0) {
    const detail = child.stderr.trim().split('\n')[0];
    throw invalidArgument(`${what} (LMDB could not read it: the check ${child.signal ? `was ended by ${child.signal}` : `exited with code ${child.status}`}${detail ? `: ${detail}` : ''})`);
  }
  const answer = JSON.parse(child.stdout) as { summary?: DatabaseSummary; error?: { code: ErrorCode; message: string } };
  if (answer.error) throw new DrplaneError(answer.error.code, answer.error.message);
  return answer.summary!;
}

/**
 * The processes that have the database open, from the POSIX locks LMDB holds
 * on its lock file (every process with the environment open holds one);
 * undefined when the system does not tell (no /proc/locks).
 */
export function databaseUsers(databaseFile: string): number[] | undefined {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(`${databaseFile}${lockFileSuffix}`);
  } catch {
    return []; // LMDB creates the lock file when it opens the environment: none, no user.
  }
  let locks: string;
  try {
    locks = fs.readFileSync('/proc/locks', 'utf8');
  } catch {
    return undefined;
  }
  const pids = new Set<number>();
  for (const line of locks.split('\n')) {
    // "1: POSIX  ADVISORY  READ 1234 fd:01:5678 0 0" (a blocked waiter has "->" before POSIX).
    const fields = line.replace('->', '').trim().split(/\s+/);
    const [majorMinorInode, pid] = [fields[5], Number(fields[4])];
    if (!majorMinorInode) continue;
    // The inode alone: overlay file systems report another device here than stat does. A lock on the same
    // inode number of another file system at this moment would only make us refuse, never restore under a user.
    if (Number(majorMinorInode.split(':')[2]) === stat.ino && pid !== process.pid) pids.add(pid);
  }
  return [...pids];
}

export interface RestoreResult {
  /** The database now in place. */
  databaseFile: string;
  /** Where the database it replaced was kept ('' when there was none). */
  previousFile: string;
  totalBytes: number;
  summary: DatabaseSummary;
}

/**
 * Puts a backup in place as <dataDir>/config.lmdb, keeping the current one as
 * config.lmdb.before-restore-<time>. Refused while a process has the
 * database open. The copy is fsynced and checked before the one rename that
 * puts it in place; the directory is fsynced after.
 */
export function restoreDatabase(backupFile: string, dataDir: string, nowMs = Date.now(), onProgress: (step: RestoreStep, bytesDone: number, bytesTotal: number) => void = () => undefined): RestoreResult {
  const source = path.resolve(backupFile);
  const dir = path.resolve(dataDir);
  const databaseFile = path.join(dir, databaseFileName);
  let sourceStat: fs.Stats;
  try {
    sourceStat = fs.statSync(source);
  } catch (error) {
    throw invalidArgument(`cannot read ${source}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  if (!sourceStat.isFile()) throw invalidArgument(`${source} is not a file`);
  fs.mkdirSync(dir, { recursive: true });
  refuseInUse(databaseFile);

  const staging = path.join(dir, `${databaseFileName}.restoring-${nowMs}.tmp`);
  try {
    copyWithProgress(source, staging, sourceStat.size, (copied) => onProgress('copy', copied, sourceStat.size));
    fsyncFile(staging);
    onProgress('check', sourceStat.size, sourceStat.size);
    // The copy is checked, not the source: what goes in place is what was checked.
    const summary = inspectDatabaseApart(staging, source);
    fs.rmSync(`${staging}${lockFileSuffix}`, { force: true });
    // Checked again just before the switch: a server started meanwhile would keep the old file open.
    refuseInUse(databaseFile);
    let previousFile = '';
    if (fs.existsSync(databaseFile)) {
      previousFile = path.join(dir, `${databaseFileName}.before-restore-${nowMs}`);
      // A second name for the current file, so config.lmdb itself is replaced by one rename.
      try {
        fs.linkSync(databaseFile, previousFile);
      } catch {
        fs.copyFileSync(databaseFile, previousFile);
        fsyncFile(previousFile);
      }
    }
    fs.renameSync(staging, databaseFile);
    fsyncFile(dir);
    return { databaseFile, previousFile, totalBytes: sourceStat.size, summary };
  } finally {
    fs.rmSync(staging, { force: true });
    fs.rmSync(`${staging}${lockFileSuffix}`, { force: true });
  }
}

/** What restoreDatabase is doing, for a progress bar: copying the backup beside the database, then checking the copy. */
export type RestoreStep = 'copy' | 'check';

/** A copy read and written in restoreCopyChunkBytes pieces, reporting the bytes copied after each. */
function copyWithProgress(source: string, target: string, bytes: number, copied: (bytes: number) => void): void {
  const buffer = Buffer.allocUnsafe(restoreCopyChunkBytes);
  const from = fs.openSync(source, 'r');
  try {
    const to = fs.openSync(target, 'wx', 0o600);
    try {
      for (let offset = 0; offset < bytes; ) {
        const read = fs.readSync(from, buffer, 0, Math.min(buffer.length, bytes - offset), offset);
        if (read === 0) throw failedPrecondition(`${source} ended at ${offset} of ${bytes} bytes while it was copied: did it change? Restore again`);
        for (let written = 0; written < read; ) written += fs.writeSync(to, buffer, written, read - written, offset + written);
        offset += read;
        copied(offset);
      }
    } finally {
      fs.closeSync(to);
    }
  } finally {
    fs.closeSync(from);
  }
}

/** The piece of a restore's copy: progress moves at least this often, a gigabyte database takes 128 reads. */
const restoreCopyChunkBytes = 8 * 1024 * 1024;

function refuseInUse(databaseFile: string): void {
  const users = databaseUsers(databaseFile);
  if (users === undefined) {
    throw failedPrecondition(`cannot tell whether ${databaseFile} is in use (this system has no /proc/locks): stop the configuration server first and restore where /proc is mounted`);
  }
  if (users.length) {
    throw failedPrecondition(`${databaseFile} is in use by process ${users.join(', ')} (a configuration server?): stop the service first (systemctl stop drplane-configuration-server, or Ctrl-C npm start), then restore`);
  }
}

function fsyncFile(file: string): void {
  const fd = fs.openSync(file, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}
