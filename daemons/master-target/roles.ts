// Who may call each method of the master target (shared/roles.ts enforces it,
// docs/security.md explains it). Replicas change only at the configuration
// server's word (epochs, creation, retirement, failover) or through a process
// server's batches; operators and viewers read status here and act through the
// configuration server.
import type { MethodRoles } from '../../shared/roles';

/** Reads of state (never disk contents or hashes): the status listener serves these too. */
const readers = ['configuration-server', 'operator', 'viewer'] as const;

export const masterTargetRoles: MethodRoles = {
  GetStatus: readers,
  GetReplica: [...readers, 'process-server'],
  ListReplicas: readers,
  ListRecoveryPoints: readers,
  GetMaterialiseProgress: readers,
  CreateReplica: ['configuration-server'],
  ConfigureReplica: ['configuration-server'],
  SetEpoch: ['configuration-server'],
  RetireReplica: ['configuration-server'],
  DeleteDisk: ['configuration-server'],
  StartMachine: ['configuration-server'],
  MaterialiseRecoveryPoint: ['configuration-server'],
  // The process server resumes from the replica's newest point; the configuration server picks failover points.
  SelectRecoveryPoint: ['configuration-server', 'process-server'],
  ApplyBatches: ['process-server'],
  // Hash trees: delta syncs (process server) and the planned failover's proof that replica and source match (configuration server).
  OpenHashTree: ['configuration-server', 'process-server'],
  GetHashes: ['configuration-server', 'process-server'],
  CloseHashTree: ['configuration-server', 'process-server'],
};
