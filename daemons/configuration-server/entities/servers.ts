// Process servers, master targets and agents: registration with the
// passphrase, heartbeats, and health (a heartbeat within three intervals).
import crypto from 'node:crypto';
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument, notFound } from '../../../shared/errors';
import { listenAddress } from '../../../shared/config';
import { nameLengthMax } from '../../../shared/limits';
import type { Logger } from '../../../shared/log';
import type { Server } from '../../../generated/drplane/v1/Server';
import type { ServerKind__Output } from '../../../generated/drplane/v1/ServerKind';
import { secretsEqual, type Passphrase } from './passphrase';
import { RegistrationAttempts } from './registration-attempts';
import type { PeerIdentity, Role } from '../../../shared/roles';
import type { Store } from '../store/store';
import type { RegisteredKind, ServerRecord } from '../store/records';

/** Missed heartbeats after which a server counts as unhealthy. */
export const heartbeatsMissedMax = 3;
/** Longest version string a server may report. */
export const versionLengthMax = 64;
/** Random bytes of a heartbeat token. */
const tokenBytes = 24;

/** The certificate role each kind registers with. */
export const roleByKind: Record<RegisteredKind, Role> = { PROCESS_SERVER: 'process-server', MASTER_TARGET: 'master-target', AGENT: 'agent' };

const idPrefixByKind: Record<RegisteredKind, string> = { PROCESS_SERVER: 'ps', MASTER_TARGET: 'mt', AGENT: 'agent' };
/** How an operator names each kind (drctl servers --kind ps|mt|agent). */
export const kindLabel: Record<RegisteredKind, string> = { PROCESS_SERVER: 'process server', MASTER_TARGET: 'master target', AGENT: 'agent' };
export const namePattern = /^[A-Za-z0-9._-]+$/;

export interface RegisterRequest {
  kind: ServerKind__Output;
  name: string;
  address: string;
  passphrase: string;
  version: string;
}

/** Who asks to register. */
export interface Registrant {
  /** The peer's address (no port): failures are counted per address. */
  address: string;
  /** The peer's certificate under mTLS (the interceptor already refused one without a role); none in plaintext (loopback). */
  certificate?: PeerIdentity;
}

export class Servers {
  /** Heartbeat times newer than the stored ones (heartbeats are persisted lazily). */
  private readonly lastHeartbeatMs = new Map<string, number>();
  private readonly attempts = new RegistrationAttempts();

  constructor(
    private readonly store: Store,
    private readonly passphrase: Passphrase,
    readonly heartbeatIntervalMs: number,
    private readonly log: Logger,
  ) {}

  register(request: RegisterRequest, registrant: Registrant = { address: 'local' }): { serverId: string; token: string } {
    // The passphrase first: a caller without it learns nothing and changes nothing; one that keeps guessing is stopped.
    this.attempts.check(registrant.address);
    if (!secretsEqual(request.passphrase, this.passphrase.value)) {
      this.attempts.failed(registrant.address);
      this.log.warn({ kind: request.kind, name: request.name, address: request.address, peer: registrant.address, certificate: registrant.certificate?.commonName }, 'registration refused: wrong passphrase');
      throw new DrplaneError(ErrorCode.Unauthenticated, `wrong passphrase: use the passphrase of this configuration server (${this.passphrase.source})`);
    }
    if (request.kind === 'SERVER_KIND_UNSPECIFIED') throw invalidArgument('kind: must be PROCESS_SERVER, MASTER_TARGET or AGENT');
    checkName('name', request.name);
    const { certificate } = registrant;
    if (certificate) this.checkCertificate(request.kind, request.name, certificate);
    if (!listenAddress.safeParse(request.address).success) throw invalidArgument(`address: must be host:port, got ${JSON.stringify(request.address.slice(0, nameLengthMax))}`);
    if (request.version.length > versionLengthMax) throw invalidArgument(`version: at most ${versionLengthMax} characters`);
    const kind = request.kind;
    const token = crypto.randomBytes(tokenBytes).toString('base64url');
    const now = Date.now();
    const record = this.store.write(() => {
      const existing = this.findByName(kind, request.name);
      if (existing && certificate) this.checkBinding(existing, certificate);
      const serverId = existing?.serverId ?? `${idPrefixByKind[kind]}-${this.store.next(`server:${kind}`)}`;
      const next: ServerRecord = {
        serverId,
        kind,
        name: request.name,
        address: request.address,
        version: request.version,
        registeredTimeMs: existing?.registeredTimeMs ?? now,
        // Registering is a sign of life, like a heartbeat.
        lastHeartbeatTimeMs: now,
        tokenSha256: sha256(token),
        ...(certificate ? { certificateSha256: certificate.certificateSha256, certificateValidFromMs: certificate.validFromMs } : {}),
      };
      this.store.servers.putSync(serverId, next);
      return next;
    });
    this.lastHeartbeatMs.set(record.serverId, now);
    this.log.info({ serverId: record.serverId, kind, name: record.name, address: record.address, version: record.version }, 'server registered');
    return { serverId: record.serverId, token };
  }

  /** A server registers only as its certificate says: its name is the certificate's CN, its kind the certificate's role. */
  private checkCertificate(kind: RegisteredKind, name: string, certificate: PeerIdentity): void {
    const refuse = (reason: string) => {
      this.log.warn({ kind, name, certificate: certificate.commonName, role: certificate.role }, `registration refused: ${reason}`);
      throw new DrplaneError(ErrorCode.PermissionDenied, `registration of ${kindLabel[kind]} ${JSON.stringify(name)} refused: ${reason}`);
    };
    if (certificate.role !== roleByKind[kind]) refuse(`the certificate (CN=${certificate.commonName}) has the role ${certificate.role}, and a ${kindLabel[kind]} registers with a certificate of role ${roleByKind[kind]}`);
    if (certificate.commonName !== name) refuse(`a server registers under the name in its certificate, CN=${certificate.commonName}: set its config key name to that, or issue it a certificate named ${name}`);
  }

  /**
   * A name, once registered under mTLS, stays bound to that certificate: another
   * certificate with the same CN is refused unless it was issued later than the
   * bound one (a renewal), which then takes its place.
   */
  private checkBinding(existing: ServerRecord, certificate: PeerIdentity): void {
    if (!existing.certificateSha256 || existing.certificateSha256 === certificate.certificateSha256) return;
    if (certificate.validFromMs > (existing.certificateValidFromMs ?? 0)) {
      this.log.warn({ serverId: existing.serverId, name: existing.name, certificateSha256: certificate.certificateSha256 }, 'a renewed certificate (issued after the bound one) takes over the server name');
      return;
    }
    this.log.warn({ serverId: existing.serverId, name: existing.name, boundSha256: existing.certificateSha256, certificateSha256: certificate.certificateSha256 }, 'registration refused: the name is bound to another certificate');
    throw new DrplaneError(
      ErrorCode.PermissionDenied,
      `registration of ${kindLabel[existing.kind]} ${JSON.stringify(existing.name)} refused: that name is bound to another certificate (sha256 ${existing.certificateSha256.slice(0, 16)}…), and this one (sha256 ${certificate.certificateSha256.slice(0, 16)}…) was not issued after it; a renewal must be a newer certificate`,
    );
  }

  heartbeat(serverId: string, token: string): number {
    const record = this.store.servers.get(serverId);
    if (!record) throw notFound(`server ${serverId} is not registered here: register again`);
    if (!secretsEqual(sha256(token), record.tokenSha256)) throw new DrplaneError(ErrorCode.Unauthenticated, `wrong token for server ${serverId}: register again`);
    const now = Date.now();
    this.lastHeartbeatMs.set(serverId, now);
    // Persisted lazily, in a transaction of its own so it cannot undo a re-registration.
    this.store.root
      .transaction(() => {
        const current = this.store.servers.get(serverId);
        if (current && current.lastHeartbeatTimeMs < now) this.store.servers.putSync(serverId, { ...current, lastHeartbeatTimeMs: now });
      })
      .catch((error: unknown) => this.log.warn({ err: error, serverId }, 'could not persist a heartbeat'));
    return now;
  }

  list(kind: ServerKind__Output = 'SERVER_KIND_UNSPECIFIED'): ServerRecord[] {
    const records: ServerRecord[] = [];
    for (const { value } of this.store.servers.getRange()) {
      if (kind === 'SERVER_KIND_UNSPECIFIED' || value.kind === kind) records.push(this.withHeartbeat(value));
    }
    return records.sort((a, b) => a.kind.localeCompare(b.kind) || a.name.localeCompare(b.name));
  }

  get(serverId: string): ServerRecord | undefined {
    const record = this.store.servers.get(serverId);
    return record && this.withHeartbeat(record);
  }

  /** A registered server of this kind, by id or name; throws NOT_FOUND saying what to do. */
  resolve(kind: RegisteredKind, idOrName: string, hint = 'start it with --configuration-server and --passphrase-file so it registers, then try again'): ServerRecord {
    const byId = this.store.servers.get(idOrName);
    const record = byId?.kind === kind ? byId : this.findByName(kind, idOrName);
    if (!record) {
      const known = this.list(kind).map((server) => server.name);
      throw notFound(`no ${kindLabel[kind]} named ${JSON.stringify(idOrName)} is registered${known.length ? ` (registered: ${known.join(', ')})` : ''}: ${hint}`);
    }
    return this.withHeartbeat(record);
  }

  /** The server chosen by id or name, or the only registered one of its kind. */
  choose(kind: RegisteredKind, idOrName: string, flag: string): ServerRecord {
    if (idOrName) return this.resolve(kind, idOrName);
    const all = this.list(kind);
    if (all.length === 1) return all[0]!;
    if (all.length === 0) throw failedPrecondition(`no ${kindLabel[kind]} is registered: start one with --configuration-server and --passphrase-file`);
    throw failedPrecondition(`${all.length} ${kindLabel[kind]}s are registered (${all.map((server) => server.name).join(', ')}): choose one with ${flag}`);
  }

  /** A server a machine refers to (its agent, process server or master target). */
  require(serverId: string, role: string): ServerRecord {
    const record = this.get(serverId);
    if (!record) throw failedPrecondition(`the ${role} ${serverId} is no longer registered: start it again with --configuration-server`);
    return record;
  }

  healthy(record: ServerRecord, now = Date.now()): boolean {
    return now - record.lastHeartbeatTimeMs <= heartbeatsMissedMax * this.heartbeatIntervalMs;
  }

  toProto(record: ServerRecord, now = Date.now()): Server {
    return {
      serverId: record.serverId,
      kind: record.kind,
      name: record.name,
      address: record.address,
      version: record.version,
      registeredTimeMs: record.registeredTimeMs,
      lastHeartbeatTimeMs: record.lastHeartbeatTimeMs,
      healthy: this.healthy(record, now),
    };
  }

  private findByName(kind: RegisteredKind, name: string): ServerRecord | undefined {
    for (const { value } of this.store.servers.getRange()) if (value.kind === kind && value.name === name) return value;
    return undefined;
  }

  private withHeartbeat(record: ServerRecord): ServerRecord {
    const memory = this.lastHeartbeatMs.get(record.serverId) ?? 0;
    return memory > record.lastHeartbeatTimeMs ? { ...record, lastHeartbeatTimeMs: memory } : record;
  }
}

export function checkName(field: string, name: string, lengthMax = nameLengthMax): void {
  if (!name) throw invalidArgument(`${field}: required`);
  if (name.length > lengthMax) throw invalidArgument(`${field}: at most ${lengthMax} characters`);
  if (!namePattern.test(name)) throw invalidArgument(`${field}: letters, digits, dot, dash and underscore only, got ${JSON.stringify(name)}`);
}

function sha256(text: string): string {
  return crypto.createHash('sha256').update(text).digest('hex');
}
