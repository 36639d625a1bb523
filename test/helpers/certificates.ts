// Certificates for tests, made as operators make them: deploy/drplane-certs
// (openssl), one deployment CA, each certificate with its role. A certificate
// without a role can only be made by hand (the script always gives one).
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Role } from '../../shared/roles';
import { repoRoot } from './daemons';

const tool = path.join(repoRoot, 'deploy', 'drplane-certs');

export interface Authority {
  dir: string;
  caFile: string;
  /** Issues DIR/<file>.crt and .key with CN=name (file defaults to name): a second certificate of the same name needs another file. */
  issue(name: string, role: Role, options?: { file?: string; ip?: string[] }): void;
  /** A certificate the CA signed without a drplane role (CN=name). */
  issueWithoutRole(name: string): void;
  /** The daemon flags for a certificate of this CA. */
  flags(file: string): string[];
  credentials(file: string): grpc.ChannelCredentials;
}

export function makeAuthority(dir: string): Authority {
  execFileSync(tool, ['init', dir], { stdio: 'ignore' });
  const caFile = path.join(dir, 'ca.crt');
  const certFile = (file: string) => path.join(dir, `${file}.crt`);
  const keyFile = (file: string) => path.join(dir, `${file}.key`);
  return {
    dir,
    caFile,
    issue(name, role, options = {}) {
      const file = options.file ?? name;
      // drplane-certs names the files after the CN: issue in a folder of its own (with the same CA) and move them.
      const scratch = fs.mkdtempSync(path.join(dir, 'issue-'));
      fs.copyFileSync(caFile, path.join(scratch, 'ca.crt'));
      fs.copyFileSync(path.join(dir, 'ca.key'), path.join(scratch, 'ca.key'));
      execFileSync(tool, ['issue', scratch, name, '--role', role, ...(options.ip ?? ['127.0.0.1']).flatMap((ip) => ['--ip', ip])], { stdio: 'ignore' });
      fs.renameSync(path.join(scratch, `${name}.crt`), certFile(file));
      fs.renameSync(path.join(scratch, `${name}.key`), keyFile(file));
      fs.rmSync(scratch, { recursive: true, force: true });
    },
    issueWithoutRole(name) {
      const request = path.join(dir, `${name}.csr`);
      execFileSync('openssl', ['req', '-new', '-nodes', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-keyout', keyFile(name), '-out', request, '-subj', `/CN=${name}`], { stdio: 'ignore' });
      const extensions = path.join(dir, `${name}.ext`);
      fs.writeFileSync(extensions, 'basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1\n');
      execFileSync('openssl', ['x509', '-req', '-in', request, '-CA', caFile, '-CAkey', path.join(dir, 'ca.key'), '-CAcreateserial', '-out', certFile(name), '-days', '30', '-extfile', extensions], { stdio: 'ignore' });
    },
    flags: (file) => ['--tls-ca-file', caFile, '--tls-cert-file', certFile(file), '--tls-key-file', keyFile(file)],
    credentials: (file) => grpc.credentials.createSsl(fs.readFileSync(caFile), fs.readFileSync(keyFile(file)), fs.readFileSync(certFile(file))),
  };
}
