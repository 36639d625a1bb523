// Runs tasks one at a time, in the order they were queued: the writes of one
// disk (so the record order is the disk's write order), and the scan passes
// of one capture. hold() lets a barrier keep the queue closed while it stands.
export class OneAtATime {
  private tail: Promise<void> = Promise.resolve();

  /** Runs the task after every task queued before it has finished (failed ones too). */
  run<T>(task: () => Promise<T> | T): Promise<T> {
    const result = this.tail.then(task);
    this.tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  /**
   * Waits for every task queued so far, then keeps later ones waiting until
   * the returned release is called (once; more calls do nothing).
   */
  hold(): Promise<() => void> {
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const acquired = this.tail.then(() => release);
    this.tail = acquired.then(() => released);
    return acquired;
  }
}
