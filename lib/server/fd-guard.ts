// Keeps the daemon responsive when it runs out of file descriptors. uWebSockets.js
// retries a failed accept() at once and forever (its accept loop has no back-off), so
// at the open-file limit the process spins a core and serves no one. This guard
// watches the descriptor count and stops listening near the limit (new clients are
// refused by the kernel instead), then listens again once connections have closed.
import { readdirSync, readFileSync } from 'node:fs';

export interface FdGuardHooks {
  /** Stop accepting connections. */
  pause(): void;
  /** Accept again; resolves false when the port could not be taken back (retried later). */
  resume(): Promise<boolean>;
  onEvent(event: 'listen_paused' | 'listen_resumed' | 'listen_resume_failed', detail: Record<string, unknown>): void;
}

/** The soft open-file limit of this process, or undefined where /proc does not tell. */
export function openFileLimit(): number | undefined {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Open descriptors of this process (the limit itself when even counting fails for want of one). */
export function openFileCount(limit: number): number {
  try {
    return readdirSync('/proc/self/fd').length;
  } catch {
    return limit;
  }
}

export class FdGuard {
  private readonly timer: NodeJS.Timeout | undefined;
  private paused = false;
  private resuming = false;
  private readonly high: number;
  private readonly low: number;

  constructor(
    private readonly hooks: FdGuardHooks,
    private readonly limit = openFileLimit(),
    intervalMs = 200,
  ) {
    const reserve = limit === undefined ? 0 : Math.max(8, Math.floor(limit * 0.05));
    this.high = (limit ?? 0) - reserve;
    this.low = (limit ?? 0) - 2 * reserve;
    if (limit === undefined || this.low <= 0) return; // no /proc, or a limit too small to manage
    this.timer = setInterval(() => this.check(), intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  private check(): void {
    const n = openFileCount(this.limit!);
    if (!this.paused && n >= this.high) {
      this.paused = true;
      this.timer!.ref(); // the closed listen socket no longer keeps the process alive: this does
      this.hooks.pause();
      this.hooks.onEvent('listen_paused', { open_files: n, limit: this.limit });
    } else if (this.paused && !this.resuming && n < this.low) {
      this.resuming = true;
      void this.hooks.resume().then((ok) => {
        this.resuming = false;
        if (ok) {
          this.paused = false;
          this.timer!.unref();
        }
        this.hooks.onEvent(ok ? 'listen_resumed' : 'listen_resume_failed', { open_files: openFileCount(this.limit!), limit: this.limit });
      });
    }
  }
}
