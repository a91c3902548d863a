// CPU time of this process's threads, from /proc/self/task/*/schedstat (Linux; time on
// a CPU in ns, kernel work included): the main thread (the event loop) apart from the
// rest (the engine's threads, libuv's pool, V8's helpers). Elsewhere: undefined.
import { readFileSync, readdirSync } from 'node:fs';

export interface ThreadCpu {
  /** The main thread (its tid is the pid), ms. */
  mainMs: number;
  /** Every other thread, ms. */
  otherMs: number;
}

export function threadCpu(): ThreadCpu | undefined {
  try {
    let main = 0;
    let other = 0;
    for (const tid of readdirSync('/proc/self/task')) {
      let ns: number;
      try {
        ns = Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
      } catch {
        continue; // the thread ended meanwhile
      }
      if (Number(tid) === process.pid) main += ns;
      else other += ns;
    }
    return { mainMs: main / 1e6, otherMs: other / 1e6 };
  } catch {
    return undefined;
  }
}

/** CPU used since `from` (undefined where it cannot be read; a thread that ended meanwhile is not counted). */
export function threadCpuSince(from: ThreadCpu | undefined): ThreadCpu | undefined {
  const now = threadCpu();
  return from && now ? { mainMs: now.mainMs - from.mainMs, otherMs: now.otherMs - from.otherMs } : undefined;
}
