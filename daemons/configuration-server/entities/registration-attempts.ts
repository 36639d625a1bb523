// Wrong registration passphrases, counted per peer address, so that a
// process on a compromised machine cannot guess the passphrase at the speed
// of the network: past registrationFailuresPerPeerMax in a window, the peer's
// registrations are refused without looking at the passphrase.
import assert from 'node:assert/strict';
import { DrplaneError, ErrorCode } from '../../../shared/errors';
import { registrationFailureWindowMs, registrationFailuresPerPeerMax, registrationPeersTrackedMax } from '../../../shared/limits';

/** The address part of a grpc-js peer ("127.0.0.1:51234", "[::1]:51234"): connections from one host share it. */
export function peerAddress(peer: string): string {
  const separator = peer.lastIndexOf(':');
  return (separator > 0 ? peer.slice(0, separator) : peer).replace(/^\[|\]$/g, '');
}

export class RegistrationAttempts {
  /** Times of each peer's recent failures, oldest first (at most registrationFailuresPerPeerMax). In insertion order: the first key is the longest quiet. */
  private readonly failuresByPeer = new Map<string, number[]>();

  constructor(
    private readonly failuresMax = registrationFailuresPerPeerMax,
    private readonly windowMs = registrationFailureWindowMs,
    private readonly peersMax = registrationPeersTrackedMax,
  ) {
    assert.ok(failuresMax >= 1 && windowMs > 0 && peersMax >= 1);
  }

  /** Throws RESOURCE_EXHAUSTED when the peer used up its failures; before the passphrase is compared. */
  check(peer: string, now = Date.now()): void {
    const recent = this.recent(peer, now);
    if (recent.length < this.failuresMax) return;
    const waitS = Math.ceil((recent[0]! + this.windowMs - now) / 1000);
    throw new DrplaneError(
      ErrorCode.LimitExceeded,
      `too many wrong passphrases from ${peer} (${recent.length} in ${this.windowMs / 1000} s): registration from there is refused for ${waitS} s more; check the daemon's passphraseFile against the configuration server's passphrase`,
    );
  }

  failed(peer: string, now = Date.now()): void {
    const recent = [...this.recent(peer, now), now].slice(-this.failuresMax);
    this.failuresByPeer.delete(peer);
    this.failuresByPeer.set(peer, recent);
    if (this.failuresByPeer.size > this.peersMax) this.failuresByPeer.delete(this.failuresByPeer.keys().next().value!);
  }

  private recent(peer: string, now: number): number[] {
    const times = (this.failuresByPeer.get(peer) ?? []).filter((time) => now - time < this.windowMs);
    if (times.length === 0) this.failuresByPeer.delete(peer);
    return times;
  }
}
