// The gRPC face of the configuration server: requests in, domain calls, and
// errors turned into statuses by the one table in shared/errors.ts.
import * as grpc from '@grpc/grpc-js';
import { DrplaneError, ErrorCode, invalidArgument, toServiceError } from '../../shared/errors';
import { unaryHandler, type ServiceRegistration } from '../../shared/grpc';
import { configurationServerRoles } from './roles';
import { peerIdentity } from '../../shared/roles';
import { peerAddress } from './entities/registration-attempts';
import { backupIdleMsMax, backupStreamsPerPeerMax, healthEventsStoredMax } from '../../shared/limits';
import { StreamGuard } from '../../shared/stream-guard';
import type { Logger } from '../../shared/log';
import { v1 } from '../../shared/proto';
import type { GetJobRequest__Output } from '../../generated/drplane/v1/GetJobRequest';
import type { Job } from '../../generated/drplane/v1/Job';
import type { ConfigurationServerHandlers } from '../../generated/drplane/v1/ConfigurationServer';
import type { AppConsistentPoints } from './workflows/app-points';
import type { BackupFile, Backups } from './store/backup';
import type { Failbacks } from './workflows/failback';
import type { Commits } from './workflows/commit';
import type { Failovers } from './workflows/failover';
import type { TestFailovers } from './workflows/test-failover';
import type { Groups } from './entities/groups';
import type { GroupPoints } from './workflows/group-points';
import type { HealthEvents } from './entities/health-events';
import type { HealthMonitor } from './health';
import type { Jobs } from './jobs/jobs';
import type { Machines } from './entities/machines';
import type { Plans } from './workflows/plans';
import type { Policies } from './entities/policies';
import type { RecoveryPoints } from './entities/recovery-points';
import type { Replication } from './workflows/replication';
import type { Reprotects } from './workflows/reprotect';
import type { Servers } from './entities/servers';
import type { JobRecord } from './store/records';
import { jobEnded } from './jobs/running-job';
import { errorMessage } from './jobs/peer-calls';

export interface ConfigurationParts {
  plans: Plans;
  backups: Backups;
  failovers: Failovers;
  commits: Commits;
  testFailovers: TestFailovers;
  reprotects: Reprotects;
  failbacks: Failbacks;
  servers: Servers;
  machines: Machines;
  jobs: Jobs;
  replication: Replication;
  recoveryPoints: RecoveryPoints;
  policies: Policies;
  groups: Groups;
  groupPoints: GroupPoints;
  appPoints: AppConsistentPoints;
  events: HealthEvents;
  health: HealthMonitor;
  log: Logger;
}

export interface ConfigurationService {
  registration: ServiceRegistration;
  /** Ends the open WatchJob streams (the daemon is stopping; clients watch again when it is back). */
  closeStreams(): void;
}

export function configurationService(parts: ConfigurationParts): ConfigurationService {
  const { servers, machines, jobs, replication, recoveryPoints, policies, groups, groupPoints, appPoints, events, health, log } = parts;
  /** Open WatchJob streams, each with the function that unsubscribes it. */
  const watches = new Map<grpc.ServerWritableStream<GetJobRequest__Output, Job>, () => void>();
  /** Open Backup streams, each stopped by aborting it (with serverStopping when the daemon stops). */
  const backupStreams = new Set<AbortController>();
  const backupGuard = new StreamGuard({ method: 'Backup', perPeerMax: backupStreamsPerPeerMax, idleMsMax: backupIdleMsMax, log });
  const serverStopping = new Error('the configuration server is stopping');

  const implementation: ConfigurationServerHandlers = {
    RegisterServer: unaryHandler(async (request, call) => {
      const caller = peerIdentity(call);
      // The interceptor refuses a certificate without a role before this handler runs; refused here too, whatever the path.
      if (caller && 'problem' in caller) throw new DrplaneError(ErrorCode.PermissionDenied, `certificate CN=${caller.commonName}: ${caller.problem}`);
      const certificate = caller;
      const { serverId, token } = servers.register(request, { address: peerAddress(call.getPeer()), certificate });
      return { serverId, token, heartbeatIntervalMs: servers.heartbeatIntervalMs };
    }, log),
    Heartbeat: unaryHandler(async (request) => ({ serverTimeMs: servers.heartbeat(request.serverId, request.token) }), log),
    ListServers: unaryHandler(async (request) => {
      const now = Date.now();
      return { servers: servers.list(request.kind).map((record) => servers.toProto(record, now)) };
    }, log),

    AddMachine: unaryHandler(async (request) => machines.toProto(await machines.add(request)), log),
    GetMachine: unaryHandler(async (request) => health.decorate(machines.toProto(machines.get(request.machine))), log),
    ListMachines: unaryHandler(async () => ({ machines: machines.list().map((record) => health.decorate(machines.toProto(record))) }), log),

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
    GetMaterialiseProgress: unaryHandler(async (request) => recoveryPoints.materialiseProgress(request), log),
    SelectRecoveryPoint: unaryHandler(async (request) => ({ recoveryPoints: await recoveryPoints.select(request) }), log),

    CreatePolicy: unaryHandler(async (request) => {
      const { policy, failback } = policies.create(request);
      return { policy: policies.toProto(policy), failbackPolicy: policies.toProto(failback) };
    }, log),
    UpdatePolicy: unaryHandler(async (request) => {
      const { policy, previous, failback } = policies.update(request);
      // The machines that use either get the change in the background; the health monitor pushes again what a peer missed.
      for (const changed of [{ policy, previous }, ...(failback ? [failback] : [])]) {
        void replication.pushPolicy(changed.policy, changed.previous).catch((error: unknown) => log.warn({ err: errorMessage(error), policy: changed.policy.name }, 'could not push a policy change'));
      }
      return policies.toProto(policy);
    }, log),
    GetPolicy: unaryHandler(async (request) => policies.toProto(policies.get(request.policy)), log),
    ListPolicies: unaryHandler(async () => ({ policies: policies.list().map((record) => policies.toProto(record)) }), log),
    DeletePolicy: unaryHandler(async (request) => {
      policies.delete(request.policy);
      return {};
    }, log),

    CreateReplicationGroup: unaryHandler(async (request) => groups.toProto(groups.create(request)), log),
    GetReplicationGroup: unaryHandler(async (request) => groups.toProto(groups.get(request.group)), log),
    ListReplicationGroups: unaryHandler(async () => ({ groups: groups.list().map((record) => groups.toProto(record)) }), log),
    TakeGroupPoint: unaryHandler(async (request) => groupPoints.pointToProto(await groupPoints.takePoint(request)), log),
    ListGroupPoints: unaryHandler(async (request) => ({ points: (await groupPoints.listPoints(request.group)).map((record) => groupPoints.pointToProto(record)) }), log),

    TakeAppConsistentPoint: unaryHandler(async (request) => ({ recoveryPoints: await appPoints.take(request) }), log),

    GetStatus: unaryHandler(async () => health.status(), log),
    ListHealthEvents: unaryHandler(async (request) => {
      if (request.limit > healthEventsStoredMax) throw invalidArgument(`limit: at most ${healthEventsStoredMax}`);
      const machineId = request.machine ? machines.get(request.machine).machineId : undefined;
      return { events: events.list({ machineId, activeOnly: request.activeOnly, limit: request.limit }).map((record) => events.toProto(record)) };
    }, log),
    Failover: unaryHandler(async (request) => jobs.toProto(await parts.failovers.failover(request)), log),
    ChangeRecoveryPoint: unaryHandler(async (request) => jobs.toProto(await parts.failovers.changeRecoveryPoint(request)), log),
    CommitFailover: unaryHandler(async (request) => jobs.toProto(await parts.commits.commit(request.machine)), log),
    TestFailover: unaryHandler(async (request) => jobs.toProto(await parts.testFailovers.testFailover(request)), log),
    CleanupTestFailover: unaryHandler(async (request) => jobs.toProto(await parts.testFailovers.cleanupTestFailover(request.machine)), log),
    Reprotect: unaryHandler(async (request) => jobs.toProto(await parts.reprotects.reprotect(request)), log),
    Failback: unaryHandler(async (request) => jobs.toProto(await parts.failbacks.failback(request)), log),
    StopJob: unaryHandler(async (request) => jobs.toProto(await jobs.stopJob(request.jobId)), log),
    RestartJob: unaryHandler(async (request) => jobs.toProto(jobs.restart(request.jobId)), log),
    CreateRecoveryPlan: unaryHandler(async (request) => parts.plans.toProto(parts.plans.create(request)), log),
    GetRecoveryPlan: unaryHandler(async (request) => parts.plans.toProto(parts.plans.get(request.plan)), log),
    ListRecoveryPlans: unaryHandler(async () => ({ plans: parts.plans.list().map((record) => parts.plans.toProto(record)) }), log),
    DeleteRecoveryPlan: unaryHandler(async (request) => {
      parts.plans.delete(request.plan);
      return {};
    }, log),
    FailoverRecoveryPlan: unaryHandler(async (request) => jobs.toProto(await parts.plans.failover(request)), log),
    CommitRecoveryPlan: unaryHandler(async (request) => jobs.toProto(await parts.plans.commit(request.plan)), log),
    // A copy taken now, in chunks as the reader takes them; the copy is deleted at the end, however the stream ends.
    Backup: (call) => {
      const stopped = new AbortController();
      try {
        // Idle: the reader took nothing; the stream ends with the status and its copy of the database is deleted.
        backupGuard.admit(call, (error) => {
          stopped.abort(error);
          call.emit('error', toServiceError(error));
        });
      } catch (error) {
        call.emit('error', toServiceError(error));
        return;
      }
      backupStreams.add(stopped);
      call.on('cancelled', () => stopped.abort(new Error('cancelled')));
      void (async () => {
        let file: BackupFile | undefined;
        try {
          file = await parts.backups.take();
          let first = true;
          for await (const data of file.chunks()) {
            if (stopped.signal.aborted) break;
            const chunk = first ? { totalBytes: file.totalBytes, timeMs: file.timeMs, data } : { data };
            first = false;
            if (!call.write(chunk)) await new Promise<void>((resolve) => (call.once('drain', resolve), stopped.signal.addEventListener('abort', () => resolve(), { once: true })));
          }
          if (stopped.signal.reason === serverStopping) call.emit('error', toServiceError(new DrplaneError(ErrorCode.Unavailable, 'the configuration server is stopping: take the backup again when it is back')));
          else if (!stopped.signal.aborted) call.end();
        } catch (error) {
          call.emit('error', toServiceError(error));
        } finally {
          // The stream's place is freed by the guard once the reader has taken every chunk ('finish') or the call
          // closed: chunks still queued for a reader that stopped are what the idle limit is for.
          backupStreams.delete(stopped);
          await file?.close();
        }
      })();
    },
  };

  return {
    registration: {
      definition: v1.ConfigurationServer.service,
      implementation: implementation as unknown as grpc.UntypedServiceImplementation,
      name: 'drplane.v1.ConfigurationServer',
      roles: configurationServerRoles,
    },
    closeStreams() {
      for (const stopped of backupStreams) stopped.abort(serverStopping);
      for (const [call, finish] of [...watches]) {
        finish();
        call.emit('error', toServiceError(new DrplaneError(ErrorCode.Unavailable, 'the configuration server is stopping: watch the job again when it is back')));
      }
    },
  };
}
