// Goal: loadTls checks a daemon's TLS files at start-up the way a handshake
// would judge them, and names the config key at fault: a CA bundle (the old
// and the new CA during a reissue) is accepted; a certificate another CA
// signed, a key of another certificate, or a leaf given as the CA is refused.
import t from 'tap';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ConfigError } from '../../shared/config';
import { loadTls } from '../../shared/tls';
import { repoRoot, tempDir } from '../helpers/daemons';
import { whyNoOpenssl } from '../helpers/netns';

t.test('loadTls', async (t) => {
  const noOpenssl = await whyNoOpenssl();
  // A plan of 0 marks the test skipped, with the reason.
  if (noOpenssl) return t.plan(0, noOpenssl);
  const dir = tempDir('drplane-tls-files-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const certs = path.join(repoRoot, 'deploy', 'drplane-certs');
  for (const ca of ['old', 'new']) {
    execFileSync(certs, ['init', path.join(dir, ca)], { stdio: 'ignore' });
    execFileSync(certs, ['issue', path.join(dir, ca), 'mt1', '--role', 'master-target', '--ip', '127.0.0.1'], { stdio: 'ignore' });
  }
  const file = (ca: string, name: string) => path.join(dir, ca, name);
  const bundle = path.join(dir, 'bundle.crt');
  fs.writeFileSync(bundle, Buffer.concat([fs.readFileSync(file('old', 'ca.crt')), fs.readFileSync(file('new', 'ca.crt'))]));

  for (const ca of ['old', 'new']) {
    const material = loadTls({ caFile: bundle, certFile: file(ca, 'mt1.crt'), keyFile: file(ca, 'mt1.key') });
    t.equal(material.commonName, 'mt1', `a certificate of the ${ca} CA is accepted with a bundle of both CAs`);
  }
  const refused = (files: { caFile: string; certFile: string; keyFile: string }) => {
    try {
      loadTls(files);
      return 'accepted';
    } catch (error) {
      t.type(error, ConfigError);
      return (error as Error).message;
    }
  };
  t.match(refused({ caFile: file('old', 'ca.crt'), certFile: file('new', 'mt1.crt'), keyFile: file('new', 'mt1.key') }), /^config key tls\.certFile: .* was not signed by the CA in /, 'another CA\'s certificate');
  t.match(refused({ caFile: bundle, certFile: file('old', 'mt1.crt'), keyFile: file('new', 'mt1.key') }), /^config key tls\.keyFile: .* is not the key of /, 'the key of another certificate');
  t.match(refused({ caFile: file('old', 'mt1.crt'), certFile: file('old', 'mt1.crt'), keyFile: file('old', 'mt1.key') }), /^config key tls\.caFile: .* not a CA/, 'a leaf certificate as the CA');
  t.match(refused({ caFile: file('old', 'missing.crt'), certFile: file('old', 'mt1.crt'), keyFile: file('old', 'mt1.key') }), /^config key tls\.caFile: cannot read .* \(not found\)/, 'a missing file');
});
