// Who may call each method of the agent (shared/roles.ts enforces it,
// docs/security.md explains it). Only process servers read the disks and take
// their changes; only the configuration server drives hooks, barriers and
// source shutdown; no other agent may call this one. Writes come from the
// protected machine's own workload, which holds this agent's certificate.
import type { MethodRoles } from '../../shared/roles';

/** Reads of state (never disk contents or hashes): the status listener serves these too. */
const readers = ['configuration-server', 'process-server', 'operator', 'viewer'] as const;

export const agentRoles: MethodRoles = {
  GetStatus: readers,
  DescribeDisks: readers,
  ListCaptures: readers,
  OpenHashTree: ['configuration-server', 'process-server'],
  GetHashes: ['configuration-server', 'process-server'],
  CloseHashTree: ['configuration-server', 'process-server'],
  ReadDisk: ['process-server'],
  StartCapture: ['process-server'],
  StopCapture: ['process-server'],
  PutScanBaseline: ['process-server'],
  StreamChanges: ['process-server'],
  Write: ['self'],
  WriteStream: ['self'],
  TakeAppConsistentPoint: ['configuration-server'],
  PrepareBarrier: ['configuration-server'],
  ReleaseBarrier: ['configuration-server'],
  ShutdownSource: ['configuration-server'],
  ReleaseSource: ['configuration-server'],
};
