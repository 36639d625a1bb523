// The gRPC face of the configuration server: requests in, domain calls, and
// errors turned into statuses by the one table in shared/errors.ts.
import * as grpc from '@grpc/grpc-js';
import { toServiceError } from '../../shared/errors';
import { unaryHandler, unimplemented, type ServiceRegistration } from '../../shared/grpc';
import type { Logger } from '../../shared/log';
import { v1 } from '../../shared/proto';
import type { GetJobRequest__Output } from '../../generated/drplane/v1/GetJobRequest';
import type { Job } from '../../generated/drplane/v1/Job';
import type { ConfigurationServerHandlers } from '../../generated/drplane/v1/ConfigurationServer';
import { jobEnded, type JobRecord, type Jobs } from './jobs';
import type { Machines } from './machines';
import type { RecoveryPoints } from './recovery-points';
import type { Replication } from './replication';
import type { Servers } from './servers';

export interface ConfigurationService {
  registration: ServiceRegistration;
  /** Ends the open WatchJob streams (the daemon is stopping; clients watch again when it is back). */
  closeStreams(): void;
}

export function configurationService(parts: { servers: Servers; machines: Machines; jobs: Jobs; replication: Replication; recoveryPoints: RecoveryPoints; log: Logger }): ConfigurationService {
  const { servers, machines, jobs, replication, recoveryPoints, log } = parts;
  /** Open WatchJob streams, each with the function that unsubscribes it. */
  const watches = new Map<grpc.ServerWritableStream<GetJobRequest__Output, Job>, () => void>();

  const implementation: ConfigurationServerHandlers = {
    ...(unimplemented(['SelectRecoveryPoint', 'CreatePolicy', 'UpdatePolicy', 'GetPolicy', 'ListPolicies', 'DeletePolicy', 'CreateReplicationGroup', 'GetReplicationGroup', 'ListReplicationGroups', 'TakeGroupPoint', 'ListGroupPoints', 'TakeAppConsistentPoint', 'GetStatus', 'ListHealthEvents']) as unknown as Pick<ConfigurationServerHandlers, 'SelectRecoveryPoint' | 'CreatePolicy' | 'UpdatePolicy' | 'GetPolicy' | 'ListPolicies' | 'DeletePolicy' | 'CreateReplicationGroup' | 'GetReplicationGroup' | 'ListReplicationGroups' | 'TakeGroupPoint' | 'ListGroupPoints' | 'TakeAppConsistentPoint' | 'GetStatus' | 'ListHealthEvents'>),
    RegisterServer: unaryHandler(async (request) => {
      const { serverId, token } = servers.register(request);
      return { serverId, token, heartbeatIntervalMs: servers.heartbeatIntervalMs };
    }, log),
    Heartbeat: unaryHandler(async (request) => ({ serverTimeMs: servers.heartbeat(request.serverId, request.token) }), log),
    ListServers: unaryHandler(async (request) => {
      const now = Date.now();
      return { servers: servers.list(request.kind).map((record) => servers.toProto(record, now)) };
    }, log),

    AddMachine: unaryHandler(async (request) => machines.toProto(await machines.add(request)), log),
    GetMachine: unaryHandler(async (request) => machines.toProto(machines.get(request.machine)), log),
    ListMachines: unaryHandler(async () => ({ machines: machines.list().map((record) => machines.toProto(record)) }), log),

    EnableReplication: unaryHandler(async (request) => jobs.toProto(await replication.enable(request)), log),
    ResyncMachine: unaryHandler(async (request) => jobs.toProto(replication.resync(request)), log),

    GetJob: unaryHandler(async (request) => jobs.toProto(jobs.get(request.jobId)), log),
    ListJobs: unaryHandler(async (request) => {
      const machineId = request.machine ? machines.get(request.machine).machineId : undefined;
      return { jobs: jobs.list(machineId).map((record) => jobs.toProto(record)) };
    }, log),
    WatchJob: (call) => {
      let record: JobRecord;
      try {
        record = jobs.get(call.request.jobId);
      } catch (error) {
        call.emit('error', toServiceError(error));
        return;
      }
      // A slow reader gets the latest state when it catches up, not every intermediate one; the final state always goes out.
      let waitingForDrain = false;
      let latest: JobRecord | undefined;
      const finish = () => {
        unsubscribe();
        watches.delete(call);
      };
      const send = (job: JobRecord) => {
        if (!watches.has(call)) return;
        const ended = jobEnded(job.state);
        if (waitingForDrain && !ended) {
          latest = job;
          return;
        }
        latest = undefined;
        waitingForDrain = !call.write(jobs.toProto(job));
        if (ended) {
          finish();
          call.end();
        }
      };
      const unsubscribe = jobs.watch(record.jobId, send);
      watches.set(call, finish);
      call.on('drain', () => {
        waitingForDrain = false;
        if (latest) send(latest);
      });
      call.on('cancelled', finish);
      call.on('close', finish);
      send(record);
    },

    ListRecoveryPoints: unaryHandler(async (request) => ({ recoveryPoints: await recoveryPoints.list(request) }), log),
    MaterialiseRecoveryPoint: unaryHandler(async (request) => recoveryPoints.materialise(request), log),
  };

  return {
    registration: {
      definition: v1.ConfigurationServer.service,
      implementation: implementation as unknown as grpc.UntypedServiceImplementation,
      name: 'drplane.v1.ConfigurationServer',
    },
    closeStreams() {
      for (const [call, finish] of [...watches]) {
        finish();
        call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'the configuration server is stopping: watch the job again when it is back' });
      }
    },
  };
}
