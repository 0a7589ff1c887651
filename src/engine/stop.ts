/**
 * Stop strings over streamed text: holds back text that might be the start of a stop string, and
 * reports where one completes (the text before it is emitted, the stop string and what follows
 * are not).
 */
export class StopMatcher {
  private pending = '';
  private readonly longest: number;

  constructor(private readonly stops: readonly string[]) {
    this.longest = Math.max(0, ...stops.map((s) => s.length));
  }

  /** Text safe to emit now, and whether a stop string was reached (the text before it is emitted). */
  push(text: string): { emit: string; stopped: boolean } {
    this.pending += text;
    let cut = -1;
    for (const s of this.stops) {
      const i = this.pending.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      const emit = this.pending.slice(0, cut);
      this.pending = '';
      return { emit, stopped: true };
    }
    const keep = Math.min(this.pending.length, this.longest - 1);
    const emit = this.pending.slice(0, this.pending.length - keep);
    this.pending = this.pending.slice(this.pending.length - keep);
    return { emit, stopped: false };
  }

  /** What is still held back, at the end. */
  flush(): string {
    const rest = this.pending;
    this.pending = '';
    return rest;
  }
}
