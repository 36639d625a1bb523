// Who may call each method of the process server (shared/roles.ts enforces
// it, docs/security.md explains it): the configuration server starts, stops
// and steers syncs and replications; operators and viewers read their state.
import type { MethodRoles } from '../../shared/roles';

/** Reads of state: the status listener serves these too. */
const readers = ['configuration-server', 'operator', 'viewer'] as const;

export const processServerRoles: MethodRoles = {
  GetStatus: readers,
  GetSync: readers,
  ListSyncs: readers,
  GetReplication: readers,
  ListReplications: readers,
  StartSync: ['configuration-server'],
  StopSync: ['configuration-server'],
  StartReplication: ['configuration-server'],
  StopReplication: ['configuration-server'],
  FlushReplication: ['configuration-server'],
  ResyncReplication: ['configuration-server'],
};
