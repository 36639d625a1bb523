// Policies: how far behind a machine may fall (RPO threshold), how long its
// recovery points are kept (retention) and how often crash-, app- and
// group-consistent points are made. Every forward policy comes with its
// failback policy, "<name>-failback", created and deleted with it and tied to
// this configuration server: a failback replicates with fixed values that no
// operator edit of the forward policy can weaken.
import crypto from 'node:crypto';
import { DrplaneError, ErrorCode, failedPrecondition, invalidArgument, notFound } from '../../../shared/errors';
import {
  nameLengthMax,
  policyScheduledPointIntervalMsMax,
  policyScheduledPointIntervalMsMin,
  policyCrashConsistentIntervalMsMax,
  policyCrashConsistentIntervalMsMin,
  policyRetentionMsMax,
  policyRetentionMsMin,
  policyRpoThresholdMsMax,
  policyRpoThresholdMsMin,
} from '../../../shared/limits';
import type { Logger } from '../../../shared/log';
import type { Policy } from '../../../generated/drplane/v1/Policy';
import { checkName } from './servers';
import type { Store } from '../store/store';
import type { PolicyRecord } from '../store/records';

export const defaultPolicyName = 'default';
export const failbackSuffix = '-failback';
/** A forward policy's name leaves room for its failback policy's "-failback". */
export const policyNameLengthMax = nameLengthMax - failbackSuffix.length;

// What CreatePolicy takes for a 0 (the proto's documented defaults).
export const defaultRpoThresholdMs = 15 * 60_000;
export const defaultRetentionMs = 24 * 60 * 60_000;
export const defaultCrashConsistentIntervalMs = 5_000;
export const defaultAppConsistentIntervalMs = 60 * 60_000;
export const defaultGroupConsistentIntervalMs = 5 * 60_000;

// The failback policy's fixed values (DESIGN.md: 15 min, 24 h, 60 min). Its
// crash- and group-consistent intervals are copied from the forward policy.
export const failbackRpoThresholdMs = 15 * 60_000;
export const failbackRetentionMs = 24 * 60 * 60_000;
export const failbackAppConsistentIntervalMs = 60 * 60_000;

const configurationServerIdKey = 'configuration-server-id';

type Interval = 'rpoThresholdMs' | 'retentionMs' | 'crashConsistentIntervalMs' | 'appConsistentIntervalMs' | 'groupConsistentIntervalMs';

/** Each interval's proto field name (for errors), bounds and whether 0 ("only on demand") is allowed. */
const bounds: Record<Interval, { field: string; minMs: number; maxMs: number; zeroMeansOff: boolean }> = {
  rpoThresholdMs: { field: 'rpo_threshold_ms', minMs: policyRpoThresholdMsMin, maxMs: policyRpoThresholdMsMax, zeroMeansOff: false },
  retentionMs: { field: 'retention_ms', minMs: policyRetentionMsMin, maxMs: policyRetentionMsMax, zeroMeansOff: false },
  crashConsistentIntervalMs: { field: 'crash_consistent_interval_ms', minMs: policyCrashConsistentIntervalMsMin, maxMs: policyCrashConsistentIntervalMsMax, zeroMeansOff: false },
  appConsistentIntervalMs: { field: 'app_consistent_interval_ms', minMs: policyScheduledPointIntervalMsMin, maxMs: policyScheduledPointIntervalMsMax, zeroMeansOff: true },
  groupConsistentIntervalMs: { field: 'group_consistent_interval_ms', minMs: policyScheduledPointIntervalMsMin, maxMs: policyScheduledPointIntervalMsMax, zeroMeansOff: true },
};

const intervals = Object.keys(bounds) as Interval[];

export interface PolicyValues {
  rpoThresholdMs: number;
  retentionMs: number;
  crashConsistentIntervalMs: number;
  appConsistentIntervalMs: number;
  groupConsistentIntervalMs: number;
}

export class Policies {
  /** Generated at the first start and kept: the failback policies are tied to it. */
  readonly configurationServerId: string;

  constructor(
    private readonly store: Store,
    private readonly log: Logger,
  ) {
    this.configurationServerId = this.store.write(() => {
      let id = this.store.settings.get(configurationServerIdKey);
      if (!id) {
        id = `cs-${crypto.randomBytes(8).toString('hex')}`;
        this.store.settings.putSync(configurationServerIdKey, id);
      }
      // The default policy exists from the first start: enabling without --policy uses it.
      if (!this.findByName(defaultPolicyName)) this.insertPair(defaultPolicyName, this.withDefaults({}), id);
      return id;
    });
  }

  create(request: Partial<PolicyValues> & { name: string }): { policy: PolicyRecord; failback: PolicyRecord } {
    checkName('name', request.name, policyNameLengthMax);
    if (request.name.endsWith(failbackSuffix)) throw invalidArgument(`name: names ending in ${failbackSuffix} are kept for failback policies, which are created with their forward policy`);
    const values = this.withDefaults(request);
    for (const interval of intervals) checkInterval(interval, values[interval]);
    const created = this.store.write(() => {
      for (const name of [request.name, `${request.name}${failbackSuffix}`]) {
        const existing = this.findByName(name);
        if (existing) throw new DrplaneError(ErrorCode.AlreadyExists, `a policy named ${name} already exists (${existing.policyId}): choose another name, or drctl policy update ${existing.failback ? request.name : name}`);
      }
      return this.insertPair(request.name, values, this.configurationServerId);
    });
    this.log.info({ policyId: created.policy.policyId, name: created.policy.name, failbackPolicyId: created.failback.policyId, ...values }, 'policy created');
    return created;
  }

  /** Changes the fields given; answers the new policy and the one it replaced, and the same of its failback policy. */
  update(request: Partial<PolicyValues> & { policy: string }): { policy: PolicyRecord; previous: PolicyRecord; failback?: { policy: PolicyRecord; previous: PolicyRecord } } {
    const found = this.get(request.policy);
    refuseFailback(found, this.store, 'edited', 'edit');
    for (const interval of intervals) if (request[interval] !== undefined) checkInterval(interval, request[interval]);
    const result = this.store.write(() => {
      const previous = this.store.policies.get(found.policyId);
      if (!previous) throw notFound(`policy ${found.name} was deleted meanwhile`);
      const next: PolicyRecord = { ...previous };
      for (const interval of intervals) if (request[interval] !== undefined) next[interval] = request[interval];
      this.store.policies.putSync(next.policyId, next);
      // The failback policy's crash- and group-consistent intervals are the forward policy's; its fixed values stay.
      const failback = this.store.policies.get(next.pairedPolicyId);
      if (!failback) return { policy: next, previous };
      const nextFailback = { ...failback, crashConsistentIntervalMs: next.crashConsistentIntervalMs, groupConsistentIntervalMs: next.groupConsistentIntervalMs };
      this.store.policies.putSync(failback.policyId, nextFailback);
      return { policy: next, previous, failback: { policy: nextFailback, previous: failback } };
    });
    this.log.info({ policyId: result.policy.policyId, name: result.policy.name, ...pick(result.policy) }, 'policy updated');
    return result;
  }

  /** By id or name; NOT_FOUND otherwise. */
  get(idOrName: string): PolicyRecord {
    if (!idOrName) throw invalidArgument('policy: required (a name or id; drctl policies lists them)');
    const record = this.store.policies.get(idOrName) ?? this.findByName(idOrName);
    if (!record) throw notFound(`no policy named ${JSON.stringify(idOrName)}: drctl policies lists them, drctl policy create NAME makes one`);
    return record;
  }

  /** By id, or undefined (a machine's policy that was never set). */
  find(policyId: string | undefined): PolicyRecord | undefined {
    return policyId ? this.store.policies.get(policyId) : undefined;
  }

  /** Forward policies by name, each followed by its failback policy. */
  list(): PolicyRecord[] {
    const all = [...this.store.policies.getRange().map(({ value }) => value)];
    const byId = new Map(all.map((policy) => [policy.policyId, policy]));
    const ordered: PolicyRecord[] = [];
    for (const policy of all.filter((candidate) => !candidate.failback).sort((a, b) => a.name.localeCompare(b.name))) {
      ordered.push(policy);
      const failback = byId.get(policy.pairedPolicyId);
      if (failback) ordered.push(failback);
    }
    // A failback policy whose forward one is missing would be a bug; list it rather than hide it.
    for (const policy of all) if (!ordered.includes(policy)) ordered.push(policy);
    return ordered;
  }

  /** Deletes a forward policy and its failback policy, unless a machine uses either. */
  delete(idOrName: string): void {
    const found = this.get(idOrName);
    refuseFailback(found, this.store, 'deleted', 'delete');
    if (found.name === defaultPolicyName) throw failedPrecondition(`the ${defaultPolicyName} policy cannot be deleted: machines enabled without --policy use it (drctl policy update ${defaultPolicyName} changes it)`);
    this.store.write(() => {
      const pair = [found.policyId, found.pairedPolicyId].filter(Boolean);
      for (const { value: machine } of this.store.machines.getRange()) {
        if (machine.policyId && pair.includes(machine.policyId)) {
          const used = this.store.policies.get(machine.policyId);
          throw failedPrecondition(`policy ${used?.name ?? machine.policyId} is used by machine ${machine.name}: enable that machine with another policy first`);
        }
      }
      for (const policyId of pair) this.store.policies.removeSync(policyId);
    });
    this.log.info({ policyId: found.policyId, name: found.name, failbackPolicyId: found.pairedPolicyId }, 'policy deleted');
  }

  toProto(record: PolicyRecord): Policy {
    return { ...record };
  }

  private withDefaults(request: Partial<PolicyValues>): PolicyValues {
    return {
      rpoThresholdMs: request.rpoThresholdMs || defaultRpoThresholdMs,
      retentionMs: request.retentionMs || defaultRetentionMs,
      crashConsistentIntervalMs: request.crashConsistentIntervalMs || defaultCrashConsistentIntervalMs,
      appConsistentIntervalMs: request.appConsistentIntervalMs || defaultAppConsistentIntervalMs,
      groupConsistentIntervalMs: request.groupConsistentIntervalMs || defaultGroupConsistentIntervalMs,
    };
  }

  /** Writes a forward policy and its failback policy, each naming the other; call inside store.write(). */
  private insertPair(name: string, values: PolicyValues, configurationServerId: string): { policy: PolicyRecord; failback: PolicyRecord } {
    const now = Date.now();
    const policyId = `policy-${this.store.next('policy')}`;
    const failbackId = `policy-${this.store.next('policy')}`;
    const policy: PolicyRecord = { policyId, name, ...values, failback: false, pairedPolicyId: failbackId, configurationServerId: '', createdTimeMs: now };
    const failback: PolicyRecord = {
      policyId: failbackId,
      name: `${name}${failbackSuffix}`,
      rpoThresholdMs: failbackRpoThresholdMs,
      retentionMs: failbackRetentionMs,
      crashConsistentIntervalMs: values.crashConsistentIntervalMs,
      appConsistentIntervalMs: failbackAppConsistentIntervalMs,
      groupConsistentIntervalMs: values.groupConsistentIntervalMs,
      failback: true,
      pairedPolicyId: policyId,
      configurationServerId,
      createdTimeMs: now,
    };
    this.store.policies.putSync(policyId, policy);
    this.store.policies.putSync(failbackId, failback);
    return { policy, failback };
  }

  private findByName(name: string): PolicyRecord | undefined {
    for (const { value } of this.store.policies.getRange()) if (value.name === name) return value;
    return undefined;
  }
}

function refuseFailback(policy: PolicyRecord, store: Store, done: string, verb: string): void {
  if (!policy.failback) return;
  const forward = store.policies.get(policy.pairedPolicyId)?.name ?? policy.name.slice(0, -failbackSuffix.length);
  const rest = verb === 'edit' ? `${verb} ${forward} instead (its failback policy keeps the fixed values)` : `${verb} ${forward}, which deletes both`;
  throw failedPrecondition(`policy ${policy.name} is the failback policy of ${forward}, tied to this configuration server: it cannot be ${done}; ${rest}`);
}

function checkInterval(interval: Interval, value: number): void {
  const { field, minMs, maxMs, zeroMeansOff } = bounds[interval];
  if (zeroMeansOff && value === 0) return;
  if (!Number.isSafeInteger(value) || value < minMs || value > maxMs) {
    throw invalidArgument(`${field}: must be from ${formatMs(minMs)} to ${formatMs(maxMs)}${zeroMeansOff ? ', or 0 (only on demand)' : ''}, got ${value} ms`);
  }
}

function pick(policy: PolicyRecord): PolicyValues {
  const { rpoThresholdMs, retentionMs, crashConsistentIntervalMs, appConsistentIntervalMs, groupConsistentIntervalMs } = policy;
  return { rpoThresholdMs, retentionMs, crashConsistentIntervalMs, appConsistentIntervalMs, groupConsistentIntervalMs };
}

/** "100 ms", "1 s", "24 h", "30 d": how bounds read in errors. */
export function formatMs(ms: number): string {
  const units: [number, string][] = [
    [24 * 60 * 60_000, 'd'],
    [60 * 60_000, 'h'],
    [60_000, 'min'],
    [1_000, 's'],
  ];
  // "24 h" reads better than "1 d"; days from two on.
  for (const [size, unit] of units) if (ms >= size && ms % size === 0 && (unit !== 'd' || ms >= 2 * size)) return `${ms / size} ${unit}`;
  return `${ms} ms`;
}
