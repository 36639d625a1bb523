// Loads the .proto files under proto/ at run time. The TypeScript types in
// generated/ come from the same files (npm run proto:types) and are never edited.
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { markUndecodableRequests, usePreEncoded } from './wire';
import type { ProtoGrpcType as AgentProto } from '../generated/agent';
import type { ProtoGrpcType as MasterTargetProto } from '../generated/master_target';
import type { ProtoGrpcType as ProcessServerProto } from '../generated/process_server';
import type { ProtoGrpcType as ConfigurationServerProto } from '../generated/configuration_server';

/** The repository's proto/ folder (this file is compiled to dist/shared/). */
export const protoRoot = path.resolve(__dirname, '..', '..', 'proto');

export const protoFiles = [
  'drplane/v1/common.proto',
  'drplane/v1/agent.proto',
  'drplane/v1/master_target.proto',
  'drplane/v1/process_server.proto',
  'drplane/v1/configuration_server.proto',
];

/** These options must match the flags of proto:types in package.json. */
export const loaderOptions: protoLoader.Options = {
  keepCase: false,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
  includeDirs: [protoRoot, path.dirname(healthProtoPath)],
};

/** Every drplane service plus grpc.health.v1, for server reflection. */
export const packageDefinition = protoLoader.loadSync([...protoFiles, path.basename(healthProtoPath)], loaderOptions);
// Before any client or server is made from it: the data path sends bulk messages it encoded itself (shared/wire.ts).
usePreEncoded(packageDefinition);
// A request that does not decode is INVALID_ARGUMENT, never grpc-js's INTERNAL (shared/grpc.ts, undecodableRequests).
markUndecodableRequests(packageDefinition);

let reflectionDefinition: protoLoader.PackageDefinition | undefined;

/**
 * The same protos for server reflection, loaded with the field names as the
 * .proto writes them (disk_id, not diskId): grpcurl's describe then shows the
 * .proto as written, and requests in either spelling work (protobuf JSON takes
 * the field's name and its JSON name). The daemons themselves use camelCase.
 * Loaded on the first reflection call.
 */
export function reflectionPackageDefinition(): protoLoader.PackageDefinition {
  reflectionDefinition ??= protoLoader.loadSync([...protoFiles, path.basename(healthProtoPath)], { ...loaderOptions, keepCase: true });
  return reflectionDefinition;
}

type Proto = AgentProto & MasterTargetProto & ProcessServerProto & ConfigurationServerProto;
export const proto = grpc.loadPackageDefinition(packageDefinition) as unknown as Proto;
export const v1 = proto.drplane.v1;

export type { AgentClient } from '../generated/drplane/v1/Agent';
export type { MasterTargetClient } from '../generated/drplane/v1/MasterTarget';
export type { ProcessServerClient } from '../generated/drplane/v1/ProcessServer';
export type { ConfigurationServerClient } from '../generated/drplane/v1/ConfigurationServer';
