// App-consistent points: the freeze hook quiesces the applications, a marker
// goes into the stream of every listed disk while they are frozen, and the
// thaw hook lets them go on. A failed freeze makes no marker (thaw runs anyway).
import type { DiskMarker } from '../../generated/drplane/v1/DiskMarker';
import type { MarkersResponse } from '../../generated/drplane/v1/MarkersResponse';
import { failedPrecondition, invalidArgument } from '../../shared/errors';
import { nameLengthMax } from '../../shared/limits';
import type { Logger } from '../../shared/log';
import type { Captures } from './captures';
import { hookError, hookFailure, hookOutput, type HookResult, type Hooks } from './hooks';
import { OneAtATime } from './one-at-a-time';

/** Why an agent without a freeze hook takes no app-consistent point: nothing would be quiesced, and the point would claim what it is not. */
export const noFreezeHookMessage = 'no freeze hook is configured on this agent (hooks.freeze, --freeze-hook): an app-consistent point needs the applications frozen; configure the hook, or rely on crash-consistent points';

export class AppConsistentPoints {
  /** One point at a time: two freezes of the same applications must not interleave with a thaw. */
  private readonly points = new OneAtATime();

  constructor(
    private readonly captures: Captures,
    private readonly hooks: Hooks,
    private readonly log: Logger,
  ) {}

  take(paths: readonly string[], tag: string): Promise<MarkersResponse> {
    if (tag.length > nameLengthMax) throw invalidArgument(`tag is longer than ${nameLengthMax} characters`);
    const disks = this.captures.captured(paths);
    return this.points.run(() => this.takeNow(disks, tag));
  }

  private async takeNow(disks: string[], tag: string): Promise<MarkersResponse> {
    const output: string[] = [];
    let hookDurationMs = 0;
    const ran = (result: HookResult) => {
      hookDurationMs += result.durationMs;
      const text = hookOutput(result);
      output.push(`${result.name}: ${result.ok ? 'ok' : hookFailure(result, this.hooks.timeoutMs)}${text ? `\n${text}` : ''}`);
      return result;
    };
    if (!this.hooks.has('freeze')) throw failedPrecondition(noFreezeHookMessage);
    const freeze = ran(await this.hooks.run('freeze', { disks, tag }));
    if (!freeze.ok) {
      const message = hookError(freeze, this.hooks.timeoutMs);
      this.captures.setHookError(disks, message);
      const thaw = await this.thaw(disks, tag, ran);
      throw failedPrecondition(`${message}${thaw ? `; thaw hook ran (${thaw.ok ? 'ok' : hookFailure(thaw, this.hooks.timeoutMs)})` : ''}; no marker was made`);
    }
    let markers: DiskMarker[] = [];
    let failure: unknown;
    try {
      markers = await Promise.all(disks.map((diskPath) => this.captures.marker(diskPath, 'MARKER_APP_CONSISTENT', tag)));
    } catch (error) {
      failure = error;
    }
    // The marker stays even when thaw fails: the state at the marker was frozen.
    await this.thaw(disks, tag, ran);
    if (failure) throw failure;
    this.log.info({ tag, markers }, 'app-consistent markers taken');
    return { markers, hookOutput: output.join('\n'), hookDurationMs };
  }

  private async thaw(disks: string[], tag: string, ran: (result: HookResult) => HookResult): Promise<HookResult | undefined> {
    if (!this.hooks.has('thaw')) return undefined;
    const thaw = ran(await this.hooks.run('thaw', { disks, tag }));
    if (!thaw.ok) this.captures.setHookError(disks, hookError(thaw, this.hooks.timeoutMs));
    return thaw;
  }
}
