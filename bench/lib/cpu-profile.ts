// Main-thread CPU profiles (V8's sampling profiler through node:inspector, in this
// process) and where their time went: each sample is charged to the innermost
// project module on its stack (lib/scheduler, lib/server/ws-stream, lib/tokenizer,
// ...), or to idle / GC / native code when none is, and split into samples taken
// while an engine step ran and samples between steps.
import { Session } from 'node:inspector';

interface CallFrame {
  functionName: string;
  url: string;
}
interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}
export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

function post<T>(s: Session, method: string, params?: object): Promise<T> {
  return new Promise((resolve, reject) => s.post(method, params ?? {}, (err, res) => (err ? reject(err) : resolve(res as T))));
}

/** Profiles the main thread while `fn` runs. */
export async function profile<T>(fn: () => Promise<T>, intervalUs = 200): Promise<{ result: T; profile: CpuProfile }> {
  const s = new Session();
  s.connect();
  try {
    await post(s, 'Profiler.enable');
    await post(s, 'Profiler.setSamplingInterval', { interval: intervalUs });
    await post(s, 'Profiler.start');
    const result = await fn();
    const { profile: p } = await post<{ profile: CpuProfile }>(s, 'Profiler.stop');
    return { result, profile: p };
  } finally {
    s.disconnect();
  }
}

/** Microseconds on the profile's clock (the monotonic clock) for a performance.now() time. */
export function profileClock(perfNowMs: number): number {
  const offsetUs = Number(process.hrtime.bigint() / 1000n) - performance.now() * 1000;
  return perfNowMs * 1000 + offsetUs;
}

/** The category a sample is charged to, from its stack (leaf first). */
export function categorize(stack: readonly CallFrame[]): string {
  const leaf = stack[0];
  if (leaf.functionName === '(idle)') return 'idle (waiting for the engine or I/O)';
  if (leaf.functionName === '(garbage collector)') return 'garbage collection';
  if (leaf.url === '' && leaf.functionName === 'stringify') return 'JSON.stringify';
  for (const f of stack) {
    const u = f.url;
    if (u.includes('/lib/tokenizer/') || u.includes('@huggingface/tokenizers')) return 'detokenization';
    if (u.includes('/lib/server/ws-stream')) return 'WebSocket frames (build + send)';
    if (u.includes('/lib/server/')) return 'service, metrics, HTTP';
    if (u.includes('/lib/scheduler/stop-filter')) return 'stop filter';
    if (u.includes('/lib/scheduler/')) return 'scheduler (accept tokens, build batches)';
    if (u.includes('/lib/engine/')) return 'step request packing';
    if (u.includes('uWebSockets.js')) return 'uWebSockets.js';
    if (u.includes('/lib/') || u.includes('/bench/')) return 'other project code (bench probes)';
  }
  if (leaf.functionName === '(program)') return 'native / VM (incl. socket writes, N-API)';
  return 'Node internals (timers, event loop)';
}

export interface Breakdown {
  /** Category -> ms, for samples inside the given intervals and outside them. */
  inside: Map<string, number>;
  outside: Map<string, number>;
  totalMs: number;
}

/**
 * Charges every sample's time (the delta to the next sample) to its category, split by
 * whether it fell inside one of `intervals` (profile-clock microseconds, sorted).
 */
export function breakdown(p: CpuProfile, intervals: readonly [number, number][]): Breakdown {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const parent = new Map<number, number>();
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
  const catOf = new Map<number, string>();
  const category = (id: number) => {
    let c = catOf.get(id);
    if (c === undefined) {
      const stack: CallFrame[] = [];
      for (let at: number | undefined = id; at !== undefined; at = parent.get(at)) stack.push(byId.get(at)!.callFrame);
      c = categorize(stack);
      catOf.set(id, c);
    }
    return c;
  };
  const inside = new Map<string, number>();
  const outside = new Map<string, number>();
  let t = p.startTime;
  let k = 0;
  for (let i = 0; i < p.samples.length; i++) {
    t += p.timeDeltas[i];
    const dt = (p.timeDeltas[i + 1] ?? 0) / 1000;
    while (k < intervals.length && intervals[k][1] < t) k++;
    const into = k < intervals.length && intervals[k][0] <= t ? inside : outside;
    const c = category(p.samples[i]);
    into.set(c, (into.get(c) ?? 0) + dt);
  }
  return { inside, outside, totalMs: (p.endTime - p.startTime) / 1000 };
}
