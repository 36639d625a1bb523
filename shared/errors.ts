// Domain code throws DrplaneError with a stable code; only the gRPC layer turns
// it into a status, through the one table below.
import { status as GrpcStatus, type ServiceError, Metadata } from '@grpc/grpc-js';

export const ErrorCode = {
  InvalidArgument: 'invalid-argument',
  NotFound: 'not-found',
  AlreadyExists: 'already-exists',
  /** The operation does not fit the current state: do something else first. */
  FailedPrecondition: 'failed-precondition',
  /** Refused because of an older (or unknown) epoch: another site owns the disk. */
  StaleEpoch: 'stale-epoch',
  OutOfRange: 'out-of-range',
  /** Data whose hash does not match: corrupt on the wire or on disk. */
  Corrupt: 'corrupt',
  /** A limit was reached (message size, disks per master target, space). */
  LimitExceeded: 'limit-exceeded',
  PermissionDenied: 'permission-denied',
  Unauthenticated: 'unauthenticated',
  /** A peer is away; the caller may retry. */
  Unavailable: 'unavailable',
  Aborted: 'aborted',
  /** A wait ran out of time while the work it waited for goes on: the caller may look again later. */
  DeadlineExceeded: 'deadline-exceeded',
  Internal: 'internal',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

const statusByCode: Record<ErrorCode, GrpcStatus> = {
  [ErrorCode.InvalidArgument]: GrpcStatus.INVALID_ARGUMENT,
  [ErrorCode.NotFound]: GrpcStatus.NOT_FOUND,
  [ErrorCode.AlreadyExists]: GrpcStatus.ALREADY_EXISTS,
  [ErrorCode.FailedPrecondition]: GrpcStatus.FAILED_PRECONDITION,
  [ErrorCode.StaleEpoch]: GrpcStatus.FAILED_PRECONDITION,
  [ErrorCode.OutOfRange]: GrpcStatus.OUT_OF_RANGE,
  [ErrorCode.Corrupt]: GrpcStatus.DATA_LOSS,
  [ErrorCode.LimitExceeded]: GrpcStatus.RESOURCE_EXHAUSTED,
  [ErrorCode.PermissionDenied]: GrpcStatus.PERMISSION_DENIED,
  [ErrorCode.Unauthenticated]: GrpcStatus.UNAUTHENTICATED,
  [ErrorCode.Unavailable]: GrpcStatus.UNAVAILABLE,
  [ErrorCode.Aborted]: GrpcStatus.ABORTED,
  [ErrorCode.DeadlineExceeded]: GrpcStatus.DEADLINE_EXCEEDED,
  [ErrorCode.Internal]: GrpcStatus.INTERNAL,
};

const codeByStatus = new Map<number, ErrorCode>(
  Object.entries(statusByCode)
    .filter(([code]) => code !== ErrorCode.StaleEpoch)
    .map(([code, status]) => [status, code as ErrorCode]),
);

export class DrplaneError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'DrplaneError';
    this.code = code;
  }
  /** Whether the caller may retry the same call later. */
  get retryable(): boolean {
    return this.code === ErrorCode.Unavailable || this.code === ErrorCode.Aborted;
  }
}

export const invalidArgument = (message: string) => new DrplaneError(ErrorCode.InvalidArgument, message);
export const notFound = (message: string) => new DrplaneError(ErrorCode.NotFound, message);
export const failedPrecondition = (message: string) => new DrplaneError(ErrorCode.FailedPrecondition, message);
export const outOfRange = (message: string) => new DrplaneError(ErrorCode.OutOfRange, message);
export const corrupt = (message: string) => new DrplaneError(ErrorCode.Corrupt, message);
export const limitExceeded = (message: string) => new DrplaneError(ErrorCode.LimitExceeded, message);
export const permissionDenied = (message: string) => new DrplaneError(ErrorCode.PermissionDenied, message);
export const deadlineExceeded = (message: string) => new DrplaneError(ErrorCode.DeadlineExceeded, message);

/** The gRPC status for an error thrown by domain code; unknown errors are INTERNAL. */
export function toServiceError(error: unknown): Partial<ServiceError> & { code: GrpcStatus; details: string } {
  if (error instanceof DrplaneError) {
    const metadata = new Metadata();
    metadata.set('drplane-error-code', error.code);
    return { code: statusByCode[error.code], details: error.message, metadata };
  }
  if (isServiceError(error)) return { code: error.code, details: error.details, metadata: error.metadata };
  const message = error instanceof Error ? error.message : String(error);
  return { code: GrpcStatus.INTERNAL, details: `internal error: ${message}` };
}

export function isServiceError(error: unknown): error is ServiceError {
  return error instanceof Error && typeof (error as ServiceError).code === 'number' && 'details' in error;
}

/** A DrplaneError for a failed call to a peer, keeping the peer's message. */
export function fromServiceError(error: unknown, peer: string): DrplaneError {
  if (error instanceof DrplaneError) return error;
  if (isServiceError(error)) {
    const code = (error.metadata?.get('drplane-error-code')?.[0] as ErrorCode | undefined) ?? codeByStatus.get(error.code) ?? ErrorCode.Unavailable;
    const known = Object.values(ErrorCode).includes(code) ? code : ErrorCode.Internal;
    const mapped = error.code === GrpcStatus.UNAVAILABLE || error.code === GrpcStatus.DEADLINE_EXCEEDED || error.code === GrpcStatus.CANCELLED ? ErrorCode.Unavailable : known;
    return new DrplaneError(mapped, `${peer}: ${error.details || error.message}`, { cause: error });
  }
  const message = error instanceof Error ? error.message : String(error);
  return new DrplaneError(ErrorCode.Internal, `${peer}: ${message}`, { cause: error });
}
