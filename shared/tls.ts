// Mutual TLS between daemons and for operators: every party holds a
// certificate signed by the deployment CA (deploy/drplane-certs makes them with
// openssl). The files are checked at start-up so a wrong path, a key that does
// not match its certificate or a certificate from another CA stops the daemon
// with a line that names the config key, before it listens or touches data.
import crypto from 'node:crypto';
import fs from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { ConfigError } from './config';
import { roleOfSubjectAltName, type Role } from './roles';

export interface TlsFiles {
  caFile: string;
  certFile: string;
  keyFile: string;
}

export interface TlsMaterial {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
  /** The certificate's subject common name: how peers' logs name this party. */
  commonName: string;
  /** The certificate's drplane role (SAN URI drplane://role/ROLE): what peers allow this party to call. */
  role: Role;
  /** When the certificate expires (operators renew before). */
  validTo: Date;
}

/** The config key a file came from, for error lines ("tls.certFile"); drctl passes its flag names. */
export type TlsKeyNames = Record<keyof TlsFiles, string>;

const configKeys: TlsKeyNames = { caFile: 'config key tls.caFile', certFile: 'config key tls.certFile', keyFile: 'config key tls.keyFile' };

function readPem(file: string, key: string): Buffer {
  try {
    return fs.readFileSync(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new ConfigError(`${key}: cannot read ${file} (${code === 'ENOENT' ? 'not found' : code === 'EACCES' ? 'permission denied' : (error as Error).message})`);
  }
}

function parseCertificate(pem: Buffer, file: string, key: string): crypto.X509Certificate {
  try {
    return new crypto.X509Certificate(pem);
  } catch (error) {
    throw new ConfigError(`${key}: ${file} is not a PEM certificate (${(error as Error).message})`);
  }
}

/** Reads and checks the three files; throws ConfigError naming the key at fault. */
export function loadTls(files: TlsFiles, keys: TlsKeyNames = configKeys, now = new Date()): TlsMaterial {
  const ca = readPem(files.caFile, keys.caFile);
  const cert = readPem(files.certFile, keys.certFile);
  const key = readPem(files.keyFile, keys.keyFile);
  // caFile may hold several CAs (the old and the new one while certificates are reissued): each is checked.
  const pemBlocks = ca.toString('utf8').match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [ca.toString('utf8')];
  const authorities = pemBlocks.map((block) => parseCertificate(Buffer.from(block), files.caFile, keys.caFile));
  if (authorities.some((authority) => !authority.ca)) throw new ConfigError(`${keys.caFile}: ${files.caFile} holds a certificate that is not a CA (basicConstraints CA:TRUE is missing)`);
  const certificate = parseCertificate(cert, files.certFile, keys.certFile);
  let privateKey: crypto.KeyObject;
  try {
    privateKey = crypto.createPrivateKey(key);
  } catch (error) {
    throw new ConfigError(`${keys.keyFile}: ${files.keyFile} is not a PEM private key (${(error as Error).message})`);
  }
  if (!certificate.checkPrivateKey(privateKey)) throw new ConfigError(`${keys.keyFile}: ${files.keyFile} is not the key of ${files.certFile}`);
  if (!authorities.some((authority) => certificate.checkIssued(authority) && certificate.verify(authority.publicKey))) {
    throw new ConfigError(`${keys.certFile}: ${files.certFile} was not signed by the CA in ${files.caFile}`);
  }
  const validTo = new Date(certificate.validTo);
  if (validTo.getTime() <= now.getTime()) throw new ConfigError(`${keys.certFile}: ${files.certFile} expired on ${validTo.toISOString()}: issue a new one (deploy/drplane-certs issue)`);
  const validFrom = new Date(certificate.validFrom);
  if (validFrom.getTime() > now.getTime()) throw new ConfigError(`${keys.certFile}: ${files.certFile} is not valid before ${validFrom.toISOString()} (is the clock right?)`);
  const commonName = /(?:^|\n)CN=([^\n]*)/.exec(certificate.subject)?.[1] ?? '';
  // Every peer refuses a certificate without a role: say so here, before anything dials or listens.
  const found = roleOfSubjectAltName(certificate.subjectAltName);
  if ('problem' in found) throw new ConfigError(`${keys.certFile}: ${files.certFile} (CN=${commonName}) cannot be used: ${found.problem}`);
  return { ca, cert, key, commonName, role: found.role, validTo };
}

/** A server that asks every client for a certificate signed by the CA and refuses the handshake without one. */
export function serverCredentials(material: TlsMaterial | undefined): grpc.ServerCredentials {
  if (!material) return grpc.ServerCredentials.createInsecure();
  return grpc.ServerCredentials.createSsl(material.ca, [{ cert_chain: material.cert, private_key: material.key }], true);
}

/** A client that presents its certificate and accepts only servers the CA signed, for the host or address it dials. */
export function channelCredentials(material: TlsMaterial | undefined): grpc.ChannelCredentials {
  if (!material) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(material.ca, material.key, material.cert);
}
