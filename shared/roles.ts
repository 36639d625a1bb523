// Who may call what. Every certificate the deployment CA signs carries one
// role, as the SAN URI drplane://role/ROLE (deploy/drplane-certs issue --role);
// each daemon allows each of its methods only to the roles its table names
// (daemons/<name>/roles.ts), and the one interceptor below enforces the table
// for every call before any handler runs (docs/security.md).
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { Counter, type Registry } from 'prom-client';
import { permissionDenied, toServiceError } from './errors';
import type { Logger } from './log';
import { metricPrefix } from './metrics';

export const roles = ['configuration-server', 'process-server', 'master-target', 'agent', 'operator', 'viewer'] as const;
export type Role = (typeof roles)[number];

/** The SAN URI that names a certificate's role: drplane://role/agent. */
export const roleUriPrefix = 'drplane://role/';

/**
 * Who a table row allows: a role, or `self`, a caller presenting this
 * daemon's own name and role (the protected machine's workload writing
 * through its own agent: another agent's certificate is not `self`).
 */
export type Grantee = Role | 'self';

/** One daemon's table: each method of a service (its name, as the .proto spells it) and who may call it. */
export type MethodRoles = Readonly<Record<string, readonly Grantee[]>>;

/** Everyone with a role: grpc.health.v1 and reflection, which every party may ask. */
export const everyRole: readonly Grantee[] = roles;

/** The role in a certificate's subjectAltName text ("URI:drplane://role/agent, IP Address:10.0.0.1"), or why there is none. */
export function roleOfSubjectAltName(subjectAltName: string | undefined): { role: Role } | { problem: string } {
  const named = [...(subjectAltName ?? '').matchAll(/(?:^|,\s*)URI:drplane:\/\/role\/([^,\s]*)/g)].map((match) => match[1]!);
  if (named.length === 0) return { problem: `it carries no drplane role (a SAN URI ${roleUriPrefix}ROLE): issue it again with deploy/drplane-certs issue DIR NAME --role ROLE` };
  if (named.length > 1) return { problem: `it carries ${named.length} drplane roles (${named.join(', ')}): a certificate has exactly one` };
  const [role] = named;
  if (!(roles as readonly string[]).includes(role!)) return { problem: `its role ${JSON.stringify(role)} is none of ${roles.join(', ')}` };
  return { role: role as Role };
}

/** What the configuration server and the logs know of a caller that presented a certificate. */
export interface PeerIdentity {
  commonName: string;
  role: Role;
  /** sha256 of the certificate (DER), hex: which certificate a server name is bound to. */
  certificateSha256: string;
  validFromMs: number;
}

/**
 * The caller's certificate as the TLS handshake checked it: undefined on a
 * plaintext connection (no certificate: the loopback rule of docs/security.md
 * applies), or { problem } when the certificate carries no usable role.
 */
export function peerIdentity(call: { getAuthContext(): { sslPeerCertificate?: PeerCertificate } | null }): PeerIdentity | { commonName: string; problem: string } | undefined {
  const certificate = call.getAuthContext()?.sslPeerCertificate;
  if (!certificate) return undefined;
  const commonName = String(certificate.subject?.CN ?? '');
  const found = roleOfSubjectAltName(certificate.subjectaltname);
  if ('problem' in found) return { commonName, problem: found.problem };
  return {
    commonName,
    role: found.role,
    certificateSha256: crypto.createHash('sha256').update(certificate.raw).digest('hex'),
    validFromMs: Date.parse(certificate.valid_from),
  };
}

const healthAndReflection: Record<string, readonly string[]> = {
  'grpc.health.v1.Health': ['Check', 'Watch'],
  'grpc.reflection.v1.ServerReflection': ['ServerReflectionInfo'],
  'grpc.reflection.v1alpha.ServerReflection': ['ServerReflectionInfo'],
};

/** A service the daemon serves, with its table. */
export interface GuardedService {
  name: string;
  definition: grpc.ServiceDefinition;
  roles: MethodRoles;
}

/**
 * Checks that a table names exactly the service's methods (a new rpc without a
 * row, or a row for a method that does not exist, is our bug) and returns the
 * grantees by full path ("/drplane.v1.MasterTarget/SetEpoch").
 */
export function grantsByPath(services: GuardedService[]): Map<string, readonly Grantee[]> {
  const byPath = new Map<string, readonly Grantee[]>();
  for (const service of services) {
    const methods = Object.keys(service.definition);
    const rows = Object.keys(service.roles);
    assert.deepEqual([...rows].sort(), [...methods].sort(), `the roles table of ${service.name} must name each of its methods once`);
    for (const method of methods) byPath.set(`/${service.name}/${method}`, service.roles[method]!);
  }
  for (const [service, methods] of Object.entries(healthAndReflection)) for (const method of methods) byPath.set(`/${service}/${method}`, everyRole);
  return byPath;
}

export interface Authorization {
  /** Who this daemon is (from its own certificate): `self` rows match a caller with both. */
  self: { commonName: string; role: Role };
  services: GuardedService[];
  log: Logger;
  registry?: Registry;
}

/** The refusal of a call, or undefined when the table allows it. Exported for the unit test. */
export function refusal(caller: ReturnType<typeof peerIdentity>, grantees: readonly Grantee[], method: string, self: Authorization['self']): { role: string; details: string } | undefined {
  if (!caller) return { role: 'none', details: `${method} needs a client certificate with a drplane role` };
  if ('problem' in caller) return { role: 'none', details: `certificate CN=${caller.commonName} may not call ${method}: ${caller.problem}` };
  const allowed = grantees.some((grantee) => grantee === caller.role || (grantee === 'self' && caller.role === self.role && caller.commonName === self.commonName));
  if (allowed) return undefined;
  const who = grantees.length ? grantees.map((grantee) => (grantee === 'self' ? `this ${self.role} itself (${self.commonName})` : grantee)).join(', ') : 'nobody';
  return { role: caller.role, details: `the role ${caller.role} (certificate CN=${caller.commonName}) may not call ${method}: it is for ${who} (docs/security.md)` };
}

/**
 * The one place each daemon's table is enforced: a server interceptor that
 * looks at the caller's certificate when the call's metadata arrives, before
 * grpc-js hands the call to its handler. A refused call is answered
 * PERMISSION_DENIED naming the role and the method, logged, and counted in
 * drplane_calls_refused_total; its handler never runs, so it touches nothing.
 * Installed only with mTLS: a plaintext listener has no certificates (loopback
 * only, or --insecure-plaintext; docs/security.md).
 */
export function authorizationInterceptor(options: Authorization): grpc.ServerInterceptor {
  const grants = grantsByPath(options.services);
  const refused = options.registry
    ? new Counter({ name: `${metricPrefix}calls_refused_total`, help: 'Calls refused because the caller\'s role may not call the method (PERMISSION_DENIED), by role and method.', labelNames: ['role', 'method'], registers: [options.registry] })
    : undefined;
  return (descriptor, call) => {
    const grantees = grants.get(descriptor.path);
    // A path without a handler: grpc-js answers UNIMPLEMENTED, and nothing runs.
    if (!grantees) return new grpc.ServerInterceptingCall(call);
    return new grpc.ServerInterceptingCall(call, {
      start: (next) => {
        next({
          onReceiveMetadata: (metadata, forward) => {
            const method = descriptor.path.slice(1);
            const caller = peerIdentity(call);
            const refusedCall = refusal(caller, grantees, method, options.self);
            if (!refusedCall) {
              forward(metadata);
              return;
            }
            refused?.inc({ role: refusedCall.role, method });
            options.log.warn({ role: refusedCall.role, method, certificate: caller?.commonName, peer: call.getPeer() }, 'call refused: the caller\'s role may not call this method');
            // Through drplane's error table, as every other refusal: its code travels in the metadata too.
            const status = toServiceError(permissionDenied(refusedCall.details));
            call.sendStatus({ code: status.code, details: status.details, metadata: status.metadata ?? new grpc.Metadata() });
          },
        });
      },
    });
  };
}
