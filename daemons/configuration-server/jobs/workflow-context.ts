// What every workflow works with, handed to it as one object (main.ts makes
// it once): the database, the entities, the peers, the jobs and the log.
import type { Logger } from '../../../shared/log';
import type { Machines } from '../entities/machines';
import type { Peers } from '../entities/peers';
import type { Policies } from '../entities/policies';
import type { Servers } from '../entities/servers';
import type { Store } from '../store/store';
import type { Jobs } from './jobs';

export interface WorkflowContext {
  readonly store: Store;
  readonly machines: Machines;
  readonly servers: Servers;
  readonly peers: Peers;
  readonly policies: Policies;
  readonly jobs: Jobs;
  readonly log: Logger;
}
