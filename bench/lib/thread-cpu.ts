// CPU time of this process's threads, from /proc/self/task/*/schedstat (Linux; time on
// a CPU in ns, kernel work included): the main thread (the event loop) apart from the
// rest (the engine's threads, libuv's pool, V8's helpers); and the main thread's time in
// the kernel (its stime in /proc/self/task/<pid>/stat, in clock ticks of 10 ms: read over
// runs of a second or more). Elsewhere: undefined.
import { readFileSync, readdirSync } from 'node:fs';

export interface ThreadCpu {
  /** The main thread (its tid is the pid), ms. */
  mainMs: number;
  /** Every other thread, ms. */
  otherMs: number;
  /** The main thread's part of mainMs in the kernel (system calls: socket writes and reads, epoll), ms. */
  mainKernelMs: number;
}

// USER_HZ: Linux reports utime/stime in 1/100 s on every architecture Node runs on.
const TICK_MS = 10;

/** The main thread's stime, ms: field 15 of its stat line (counted after the parenthesised name, which may hold spaces). */
function mainKernelMs(): number {
  const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[12]) * TICK_MS;
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
    return { mainMs: main / 1e6, otherMs: other / 1e6, mainKernelMs: mainKernelMs() };
  } catch {
    return undefined;
  }
}

/** CPU used since `from` (undefined where it cannot be read; a thread that ended meanwhile is not counted). */
export function threadCpuSince(from: ThreadCpu | undefined): ThreadCpu | undefined {
  const now = threadCpu();
  return from && now ? { mainMs: now.mainMs - from.mainMs, otherMs: now.otherMs - from.otherMs, mainKernelMs: now.mainKernelMs - from.mainKernelMs } : undefined;
}
