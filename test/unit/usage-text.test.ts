// Goal: each daemon's --help is made from its flag table: every flag has its
// help and shows once, every line fits 100 columns, and the common flags
// (identity, registration, TLS, logging) come with it.
import t from 'tap';
import * as agent from '../../daemons/agent/config';
import * as configurationServer from '../../daemons/configuration-server/config';
import * as masterTarget from '../../daemons/master-target/config';
import * as processServer from '../../daemons/process-server/config';

const daemons = { agent, 'configuration-server': configurationServer, 'master-target': masterTarget, 'process-server': processServer };

for (const [name, module] of Object.entries(daemons)) {
  t.test(name, async (t) => {
    for (const [flag, spec] of Object.entries(module.flags)) {
      t.ok(spec.help, `--${flag} has its help`);
      if (spec.type === 'string') t.ok(spec.value, `--${flag} names its value`);
      t.equal(module.usage.split('\n').filter((line) => line.startsWith(`  --${flag} `)).length, 1, `--${flag} shows once`);
    }
    for (const line of module.usage.split('\n')) t.ok(line.length <= 100, `fits 100 columns: ${line}`);
    for (const common of ['--config FILE', '--name NAME', '--listen HOST:PORT', '--tls-ca-file FILE', '--log-level LEVEL', '-h, --help']) t.ok(module.usage.includes(`  ${common} `), `lists ${common}`);
    t.equal(module.usage.includes('--configuration-server HOST:PORT'), name !== 'configuration-server', 'the link to a configuration server where the daemon registers');
    t.notOk(module.usage.includes('--passphrase '), 'never a passphrase flag');
  });
}
