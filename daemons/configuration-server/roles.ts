// Who may call each method of the configuration server (shared/roles.ts
// enforces it, docs/security.md explains it): servers register and send
// heartbeats (under the name and role of their certificate, servers.ts);
// operators call the whole API; viewers only its reads.
import type { MethodRoles } from '../../shared/roles';

/** Reads of state: the status listener serves these too. */
const readers = ['operator', 'viewer'] as const;
const operators = ['operator'] as const;
const servers = ['process-server', 'master-target', 'agent'] as const;

export const configurationServerRoles: MethodRoles = {
  RegisterServer: servers,
  Heartbeat: servers,
  GetStatus: readers,
  ListServers: readers,
  GetMachine: readers,
  ListMachines: readers,
  GetJob: readers,
  ListJobs: readers,
  WatchJob: readers,
  ListRecoveryPoints: readers,
  GetMaterialiseProgress: readers,
  GetPolicy: readers,
  ListPolicies: readers,
  GetReplicationGroup: readers,
  ListReplicationGroups: readers,
  ListGroupPoints: readers,
  ListHealthEvents: readers,
  GetRecoveryPlan: readers,
  ListRecoveryPlans: readers,
  AddMachine: operators,
  EnableReplication: operators,
  ResyncMachine: operators,
  MaterialiseRecoveryPoint: operators,
  SelectRecoveryPoint: operators,
  CreatePolicy: operators,
  UpdatePolicy: operators,
  DeletePolicy: operators,
  CreateReplicationGroup: operators,
  TakeGroupPoint: operators,
  TakeAppConsistentPoint: operators,
  Failover: operators,
  ChangeRecoveryPoint: operators,
  CommitFailover: operators,
  TestFailover: operators,
  CleanupTestFailover: operators,
  Reprotect: operators,
  Failback: operators,
  StopJob: operators,
  RestartJob: operators,
  CreateRecoveryPlan: operators,
  DeleteRecoveryPlan: operators,
  FailoverRecoveryPlan: operators,
  CommitRecoveryPlan: operators,
  // The database copy: hashes of the heartbeat tokens and everything an operator configured.
  Backup: operators,
};
