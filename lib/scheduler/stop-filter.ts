// Stop strings over streamed text: text that could still turn into a stop string
// is held back; when a stop string appears, the text before it is released and the
// stop string itself is never emitted.
export class StopFilter {
  private held = '';

  constructor(private readonly stops: readonly string[]) {}

  /** Whether there is any stop string to watch for. */
  get active(): boolean {
    return this.stops.length > 0;
  }

  /** Adds a piece; returns the releasable text and whether a stop string was hit. */
  push(piece: string): { text: string; stopped: boolean } {
    const buf = this.held + piece;
    let cut = -1;
    for (const s of this.stops) {
      const at = buf.indexOf(s);
      if (at !== -1 && (cut === -1 || at < cut)) cut = at;
    }
    if (cut !== -1) {
      this.held = '';
      return { text: buf.slice(0, cut), stopped: true };
    }
    // Hold the longest suffix that is a prefix of some stop string.
    let keep = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, buf.length); k > keep; k--) {
        if (buf.endsWith(s.slice(0, k))) {
          keep = k;
          break;
        }
      }
    }
    this.held = buf.slice(buf.length - keep);
    return { text: buf.slice(0, buf.length - keep), stopped: false };
  }

  /** The held-back text, at the end of generation. */
  flush(): string {
    const t = this.held;
    this.held = '';
    return t;
  }
}
