// The agent (mobility service) on a protected machine: reads the configured
// source disks for process servers. Wiring only; the domain is in agent.ts.
import os from 'node:os';
import { z } from 'zod';
import { runDaemon } from '../../shared/daemon';
import { commonConfig, configurationServerLink } from '../../shared/config';
import { HashPool } from '../../shared/hash-pool';
import { initHashing } from '../../shared/hashing';
import { pathLengthMax } from '../../shared/limits';
import { v1 } from '../../shared/proto';
import { Agent } from './agent';
import { SourceDisks } from './disks';

const schema = commonConfig.extend({
  /** The only paths this agent reads (image files or block devices). */
  disks: z.array(z.string().min(1).max(pathLengthMax)).min(1, 'at least one disk is required (--disk PATH)'),
  /** Worker threads that hash disks (default: min(cores, 4)). */
  hashThreads: z.coerce.number().int().min(1).max(64).optional(),
  configurationServer: configurationServerLink.optional(),
});

const usage = `Usage: agent --disk PATH [--disk PATH...] [options]
  --name NAME                 default: the host name
  --data-dir DIR              default ./data/agent
  --listen HOST:PORT          default 127.0.0.1:7103
  --advertise HOST:PORT       address peers use (default: listen)
  --disk PATH                 a source disk this agent may read (repeat for more)
  --hash-threads N            worker threads that hash disks (default min(cores, 4))
  --configuration-server HOST:PORT  register with it (needs --passphrase or --passphrase-file)
  --config FILE               JSON with the same keys (disks: [..], hashThreads, ...)
`;

void runDaemon({
  name: 'agent',
  registerAs: 'AGENT',
  schema,
  usage,
  flags: { disk: { type: 'string', multiple: true, key: 'disks' }, 'hash-threads': { type: 'string' } },
  // The agent stands for its protected machine: by default it is named after the host.
  defaults: { name: os.hostname().replace(/[^A-Za-z0-9._-]/g, '-').slice(0, 128) || 'agent', listen: '127.0.0.1:7103', dataDir: './data/agent', disks: [] },
  async create({ config, log }) {
    await initHashing();
    const pool = new HashPool(config.hashThreads);
    const agent = new Agent(config.name, new SourceDisks(config.disks), pool, log);
    return {
      services: [{ definition: v1.Agent.service, implementation: agent.handlers(), name: 'drplane.v1.Agent' }],
      started() {
        log.info({ disks: agent.disks.paths, hashThreads: pool.threads }, 'serving disks');
      },
      async stop() {
        await pool.close();
      },
    };
  },
});
