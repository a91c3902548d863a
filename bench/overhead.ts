// Part 5 of the suite: control-plane overhead. C concurrent long greedy streams through
// the daemon (WebSocket, a client in its own process) against the engine alone
// stepping the same C sequences (typed arrays reused, no scheduler, no server), in the
// same process on the same engine, interleaved over rounds. Then where the daemon's
// time goes:
//  - timing probes on the daemon's engine (Engine.step and the native step wrapped in
//    this process; lib/ is untouched): per step, the JS packing before the native
//    call, the native step, and the gap until the next step starts;
//  - a CPU profile of the main thread over one more daemon run, its samples charged to
//    the innermost project module on the stack, split into between-steps (the critical
//    path: nothing else runs the next step) and during-steps (overlaps the engine, but
//    takes CPU from it on a small machine).
//
//   npm run bench:overhead -- [--streams 32,128] [--max-tokens 200] [--rounds 3] [--per-connection 1]
//                             [--intervals 1,4] [--v2 0|1] [--ws-client 0|1] [--client-nice 0..19] [--quick]
//
// Each round also runs the scheduler alone (Service.start with sinks that only collect
// the tokens: no server, no client), which tells the scheduler's cost from the
// transport's, and the daemon at each --intervals stream interval (the first is the one
// broken down). The load client reads frames with bench/lib/lean-ws.ts; --ws-client 1
// uses the `ws` package instead; --client-nice 19 runs it at the lowest priority (the
// stand-in for a client on another machine).
//
// Check first: every stream's greedy tokens through the daemon equal the engine-alone
// tokens of the same sequence.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';

import type { NativeEngine, StepOutput, StepRequest } from '../lib/engine/binding.js';
import type { ChunkSpec, Engine } from '../lib/engine/engine.js';
import { startDaemon } from '../lib/server/daemon.js';
import { TextTokenizer } from '../lib/tokenizer/tokenizer.js';
import { repoRoot } from '../test/helpers/paths.js';
import { BENCH_CONFIG, benchModel } from './lib/bench-model.js';
import { benchArgs } from './lib/args.js';
import { breakdown, profile, profileClock } from './lib/cpu-profile.js';
import { f, footnote, header, mdTable, runInfo, writeResult } from './lib/report.js';
import { median, pairedRatios, spread } from './lib/stats.js';
import type { StreamClientResult, StreamClientSpec } from './lib/stream-client.js';
import { barChartSvg } from './lib/svg.js';
import { threadCpu, threadCpuSince, type ThreadCpu } from './lib/thread-cpu.js';
import { assertSameTokens, evalPrompts } from './lib/workload.js';

const args = benchArgs({ streams: [32, 128], 'max-tokens': 200, rounds: 3, threads: 2, 'per-connection': 1, profile: 1, v2: 0, 'ws-client': 0, intervals: [1, 4], 'client-nice': 0 });
if (args.quick) Object.assign(args, { streams: [32], 'max-tokens': 64, rounds: 1 });
const info = runInfo();
const modelDir = args.v2 ? benchModel() : join(repoRoot(), 'models', 'default');
const modelName = args.v2 ? `the V2-shaped bench model (H=${BENCH_CONFIG.hidden_size}, bf16)` : 'the embedded model (models/default, 1.8M parameters)';
const tokenizer = await TextTokenizer.load(modelDir);
const maxC = Math.max(...args.streams);
const PROMPT_BYTES = 24;

const daemon = await startDaemon({
  modelDir,
  engine: { device: 'cpu', threads: args.threads, kvCacheTokens: maxC * 2 * (64 + args['max-tokens'] + 16) },
  server: { port: 0 },
});
const engine: Engine = daemon.engine;
const info0 = engine.info;
const eos = info0.eosTokenId;
// Prompts: the first bytes of the ESFT eval prompts (the embedded model's base continues them without EOS).
const all = evalPrompts();
const promptsFor = (c: number) =>
  Array.from({ length: c }, (_, i) => {
    const text = all[(i * 37) % all.length].bytes.subarray(0, PROMPT_BYTES).toString('utf8');
    return tokenizer ? tokenizer.encode(text) : [...Buffer.from(text)].map((b) => 2 + (b % (info0.vocabSize - 2)));
  });
const wsUrl = `ws://127.0.0.1:${daemon.server.port}/v1/stream`;

// ---- Probes on the daemon's engine (instance properties shadow the methods; lib/ unchanged) ----
interface StepTiming {
  t0: number;
  nativeStart: number;
  nativeEnd: number;
  t1: number;
}
let recording: StepTiming[] | undefined;
let current: StepTiming | undefined;
// The addon's object is sealed, so the Engine gets a proxy of it whose step() is timed.
const holder = engine as unknown as { native: NativeEngine };
const native = holder.native;
const nativeStep = native.step.bind(native);
const timedStep = (req: StepRequest): Promise<StepOutput> => {
  if (current) current.nativeStart = performance.now();
  return nativeStep(req).then((o) => {
    if (current) current.nativeEnd = performance.now();
    return o;
  });
};
holder.native = new Proxy(native, {
  get: (target, prop) => {
    if (prop === 'step') return timedStep;
    const v = Reflect.get(target, prop) as unknown;
    return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
  },
});
const engineStep = engine.step.bind(engine);
engine.step = (chunks: readonly ChunkSpec[], returnLogits?: boolean) => {
  if (!recording) return engineStep(chunks, returnLogits);
  const t: StepTiming = { t0: performance.now(), nativeStart: 0, nativeEnd: 0, t1: 0 };
  current = t;
  return engineStep(chunks, returnLogits).then((o) => {
    t.t1 = performance.now();
    current = undefined;
    recording?.push(t);
    return o;
  });
};

const execFileP = promisify(execFile);
async function daemonRun(prompts: number[][], interval = args.intervals[0]): Promise<{ client: StreamClientResult; steps: StepTiming[]; cpu?: ThreadCpu }> {
  // Read by Service.start for each request, so setting it between runs is enough.
  daemon.service.options.streamInterval = interval;
  const spec: StreamClientSpec = { url: wsUrl, prompts, adapters: [null], maxTokens: args['max-tokens'], perConnection: args['per-connection'], client: args['ws-client'] ? 'ws' : 'lean', nice: args['client-nice'] };
  recording = [];
  const cpu0 = threadCpu();
  const { stdout } = await execFileP(process.execPath, [join(repoRoot(), 'dist', 'bench', 'lib', 'stream-client.js'), JSON.stringify(spec)], { maxBuffer: 64 << 20 });
  const steps = recording;
  recording = undefined;
  const client = JSON.parse(stdout) as StreamClientResult;
  if (client.errors.length > 0) throw new Error(`overhead: ${client.errors.length} streams failed: ${client.errors[0]}`);
  await daemon.service.scheduler.idle();
  return { client, steps, cpu: threadCpuSince(cpu0) };
}

/** The scheduler alone: the same requests through Service.start, sinks that only keep the tokens. */
async function schedulerRun(prompts: number[][]): Promise<{ wallMs: number; tokens: number[][]; cpu?: ThreadCpu }> {
  const tokens: number[][] = prompts.map(() => []);
  daemon.service.options.streamInterval = 1;
  const cpu0 = threadCpu();
  const t0 = performance.now();
  await Promise.all(
    prompts.map(
      (prompt, i) =>
        new Promise<void>((resolve, reject) =>
          daemon.service.start(
            { prompt, adapter: null, client: `s${i}`, maxTokens: args['max-tokens'], temperature: 0, topP: 1, topK: 0, seed: 0, stop: [], logprobs: false },
            { onToken: (ev) => tokens[i].push(ev.token), onDone: () => resolve(), onError: reject },
          ),
        ),
    ),
  );
  const wallMs = performance.now() - t0;
  const cpu = threadCpuSince(cpu0);
  await daemon.service.scheduler.idle();
  return { wallMs, tokens, cpu };
}

/**
 * The engine alone: the same sequences, whole prompts per step within the scheduler's
 * 512-token budget, then one decode token per live sequence per step, from reused typed
 * arrays. spinMs > 0 keeps the main thread busy that long after each step (the daemon's
 * gap without its work), to tell the gap's own cost from the rest.
 */
async function engineRun(prompts: number[][], spinMs = 0): Promise<{ wallMs: number; tokens: number[][]; stepMs: number[]; cpu?: ThreadCpu }> {
  const c = prompts.length;
  const cpu0 = threadCpu();
  const ids = prompts.map((_, i) => 1_000_000 + i);
  const tokens: number[][] = prompts.map(() => []);
  const req = (n: number): StepRequest => ({
    seqIds: new Int32Array(n),
    adapters: new Int32Array(n),
    nTokens: new Int32Array(n).fill(1),
    tokens: new Int32Array(n),
    sample: new Uint8Array(n).fill(1),
    logprobs: new Uint8Array(n),
    temperature: new Float32Array(n),
    topK: new Int32Array(n),
    topP: new Float32Array(n).fill(1),
    seeds: new Float64Array(n),
  });
  const stepMs: number[] = [];
  const timed = async (r: StepRequest) => {
    const s = performance.now();
    const o = await nativeStep(r);
    const e = performance.now();
    stepMs.push(e - s);
    while (performance.now() - e < spinMs);
    return o;
  };
  const t0 = performance.now();
  let live: number[] = [];
  const accept = (i: number, tok: number) => {
    if (tok === eos) return false;
    tokens[i].push(tok);
    return tokens[i].length < args['max-tokens'];
  };
  for (let i = 0; i < c; ) {
    const batch: number[] = [];
    let budget = 512;
    while (i < c && prompts[i].length <= budget) {
      budget -= prompts[i].length;
      batch.push(i++);
    }
    const r = req(batch.length);
    r.tokens = Int32Array.from(batch.flatMap((j) => prompts[j]));
    batch.forEach((j, k) => {
      r.seqIds[k] = ids[j];
      r.nTokens[k] = prompts[j].length;
    });
    const o = await timed(r);
    batch.forEach((j, k) => accept(j, o.tokens[k]) && live.push(j));
  }
  const full = req(c);
  while (live.length > 0) {
    const n = live.length;
    const r: StepRequest = {
      seqIds: full.seqIds.subarray(0, n),
      adapters: full.adapters.subarray(0, n),
      nTokens: full.nTokens.subarray(0, n),
      tokens: full.tokens.subarray(0, n),
      sample: full.sample.subarray(0, n),
      logprobs: full.logprobs.subarray(0, n),
      temperature: full.temperature.subarray(0, n),
      topK: full.topK.subarray(0, n),
      topP: full.topP.subarray(0, n),
      seeds: full.seeds.subarray(0, n),
    };
    live.forEach((j, k) => {
      r.seqIds[k] = ids[j];
      r.tokens[k] = tokens[j][tokens[j].length - 1];
    });
    const o = await timed(r);
    live = live.filter((j, k) => accept(j, o.tokens[k]));
  }
  const wallMs = performance.now() - t0;
  const cpu = threadCpuSince(cpu0);
  for (const id of ids) engine.freeSequence(id);
  return { wallMs, tokens, stepMs, cpu };
}

interface Round {
  daemonTokS: number;
  /** Daemon tok/s and client CPU ms at each further stream interval (args.intervals[1..]). */
  more: { tokS: number; clientCpuMs: number; cpu?: ThreadCpu }[];
  schedTokS: number;
  /** This process's CPU (main thread, other threads) during each run. */
  cpu: { daemon?: ThreadCpu; sched?: ThreadCpu; engine?: ThreadCpu };
  engineTokS: number;
  gapTokS: number;
  gapStepMs: number;
  spinMs: number;
  tokens: number;
  daemonWallMs: number;
  engineWallMs: number;
  steps: number;
  engineSteps: number;
  nativeMs: number;
  packMs: number;
  hopMs: number;
  gapMs: number;
  outsideMs: number;
  engineStepMs: number;
  engineLoopMs: number;
  clientCpuMs: number;
}

type EngineRun = { wallMs: number; tokens: number[][]; stepMs: number[]; cpu?: ThreadCpu };
type DaemonRun = { client: StreamClientResult; steps: StepTiming[]; cpu?: ThreadCpu };
type Others = { more: DaemonRun[]; sched: { wallMs: number; tokens: number[][]; cpu?: ThreadCpu } };
function analyse(d: DaemonRun, e: EngineRun, g: EngineRun, spinMs: number, o: Others): Round {
  const s = d.steps;
  const sum = (fn: (t: StepTiming, i: number) => number) => s.reduce((acc, t, i) => acc + fn(t, i), 0);
  const tokens = d.client.tokens.reduce((a, t) => a + t.length, 0);
  const nativeMs = sum((t) => t.nativeEnd - t.nativeStart);
  const packMs = sum((t) => t.nativeStart - t.t0);
  const hopMs = sum((t) => t.t1 - t.nativeEnd);
  const gapMs = sum((t, i) => (i === 0 ? 0 : t.t0 - s[i - 1].t1));
  const engineStepMs = e.stepMs.reduce((a, x) => a + x, 0);
  return {
    daemonTokS: (tokens * 1000) / d.client.wallMs,
    more: o.more.map((m) => ({ tokS: (tokens * 1000) / m.client.wallMs, clientCpuMs: m.client.cpuMs, cpu: m.cpu })),
    schedTokS: (tokens * 1000) / o.sched.wallMs,
    cpu: { daemon: d.cpu, sched: o.sched.cpu, engine: e.cpu },
    engineTokS: (tokens * 1000) / e.wallMs,
    gapTokS: (tokens * 1000) / g.wallMs,
    gapStepMs: g.stepMs.reduce((a, x) => a + x, 0),
    spinMs,
    tokens,
    daemonWallMs: d.client.wallMs,
    engineWallMs: e.wallMs,
    steps: s.length,
    engineSteps: e.stepMs.length,
    nativeMs,
    packMs,
    hopMs,
    gapMs,
    outsideMs: d.client.wallMs - (s[s.length - 1].t1 - s[0].t0),
    engineStepMs,
    engineLoopMs: e.wallMs - engineStepMs,
    clientCpuMs: d.client.cpuMs,
  };
}

const results: { c: number; rounds: Round[]; profile?: { between: Map<string, number>; during: Map<string, number>; gapMs: number; steps: number } }[] = [];
try {
  // Warm-up: a short daemon run and engine run.
  await daemonRun(promptsFor(8).map((p) => p.slice(0, 8)));
  for (const c of args.streams) {
    const prompts = promptsFor(c);
    const rounds: Round[] = [];
    console.log(`part 5, control-plane overhead: ${c} streams x ${args['max-tokens']} tokens on ${modelName}`);
    let spin = 0;
    const gapOf = (d: { steps: StepTiming[] }) => median(d.steps.slice(1).map((t, i) => t.t0 - d.steps[i].t1));
    for (let r = 0; r < args.rounds; r++) {
      // Even rounds: daemon, engine, engine + the daemon's gap; odd rounds the reverse
      // (the gap then from the previous round's daemon run).
      let d;
      let e;
      let g;
      const more: DaemonRun[] = [];
      let sched;
      if (r % 2 === 0) {
        d = await daemonRun(prompts);
        spin = gapOf(d);
        for (const iv of args.intervals.slice(1)) more.push(await daemonRun(prompts, iv));
        sched = await schedulerRun(prompts);
        e = await engineRun(prompts);
        g = await engineRun(prompts, spin);
      } else {
        g = await engineRun(prompts, spin);
        e = await engineRun(prompts);
        sched = await schedulerRun(prompts);
        for (const iv of args.intervals.slice(1).reverse()) more.unshift(await daemonRun(prompts, iv));
        d = await daemonRun(prompts);
      }
      const check = (what: string, got: number[][]) => got.forEach((t, i) => assertSameTokens(`overhead: stream ${i} (${c} streams), ${what} vs engine alone`, t, e.tokens[i]));
      check('daemon', d.client.tokens);
      more.forEach((m, k) => check(`daemon at stream interval ${args.intervals[k + 1]}`, m.client.tokens));
      check('scheduler alone', sched.tokens);
      const a = analyse(d, e, g, spin, { more, sched });
      rounds.push(a);
      console.log(
        `  round ${r + 1}: daemon ${f(a.daemonTokS, 0)} tok/s, engine alone ${f(a.engineTokS, 0)} tok/s (${f(a.daemonTokS / a.engineTokS, 3)}), ` +
          `scheduler alone ${f(a.schedTokS, 0)} (${f(a.schedTokS / a.engineTokS, 3)}), ` +
          a.more.map((m, k) => `interval ${args.intervals[k + 1]} ${f(m.tokS, 0)} (${f(m.tokS / a.engineTokS, 3)}), `).join('') +
          `engine + ${f(spin, 2)} ms gap ${f(a.gapTokS, 0)} tok/s; ${a.steps} steps, gap ${f(a.gapMs / a.steps, 2)} ms/step`,
      );
    }
    let prof;
    if (args.profile) {
      const { result, profile: p } = await profile(() => daemonRun(prompts));
      const steps = result.steps;
      const intervals = steps.map((t) => [profileClock(t.t0), profileClock(t.t1)] as [number, number]);
      // Between steps: from a step's end to the next one's start.
      const gaps = steps.slice(1).map((t, i) => [profileClock(steps[i].t1), profileClock(t.t0)] as [number, number]);
      const b = breakdown(p, gaps);
      const duringB = breakdown(p, intervals);
      prof = { between: b.inside, during: duringB.inside, gapMs: gaps.reduce((a, [x, y]) => a + (y - x) / 1000, 0), steps: steps.length };
    }
    results.push({ c, rounds, profile: prof });
  }
} finally {
  await daemon.close();
}

// What building one token frame's JSON costs (the frame lib/server/ws-stream.ts sends), microbenchmarked here.
const jsonUs = (() => {
  const n = 200_000;
  let bytes = 0;
  const t0 = performance.now();
  for (let i = 0; i < n; i++) bytes += JSON.stringify({ type: 'token', id: `s${i & 127}`, index: i % 200, token: 40 + (i % 50), text: 'e' }).length;
  return { us: ((performance.now() - t0) * 1000) / n, bytes: bytes / n };
})();

// ---- Report ----
const lines: string[] = [
  '# Control-plane overhead (bench/overhead.ts, `npm run bench:overhead`)',
  '',
  ...header(info),
  `- model: ${modelName}, CPU, ${args.threads} engine threads; base model, greedy, ${args['max-tokens']} tokens per stream, prompts = the first ${PROMPT_BYTES} bytes of ESFT eval prompts (tokenized)`,
  `- daemon: startDaemon in this process, defaults (token budget 512); client: a separate Node process (bench/lib/stream-client.ts, ${args['ws-client'] ? 'the \`ws\` package' : 'frames read by bench/lib/lean-ws.ts'}${args['client-nice'] ? `, at nice ${args['client-nice']}` : ''}), ${args['per-connection']} stream(s) per WebSocket connection, all streams started at once; tok/s = tokens received / client wall time (first send to last done)`,
  '- engine alone: the same engine object (daemon idle), the same sequences, prompts prefilled whole within 512 tokens a step, then one token per live sequence per step from reused typed arrays',
  `- ${args.rounds} rounds, daemon, scheduler alone and engine alternating (odd rounds in reverse order); check: every stream's tokens through the daemon (at every stream interval) and the scheduler alone equal the engine-alone tokens`,
  '',
  'Goal (issue 14): daemon >= 90% of engine alone at 32 and 128 streams. Measured outside the project before this harness: 4,537 tok/s through the daemon against 10,109 engine-only at 32 streams on the embedded model.',
  '',
];
const ratio = (rounds: Round[], get: (x: Round) => number) => {
  const r = pairedRatios(rounds.map(get), rounds.map((x) => x.engineTokS));
  return `${f(spread(rounds.map(get)).value, 0)}: ${f(r.value, 3)} (${f(r.min, 3)}-${f(r.max, 3)})`;
};
const ratioRows = results.map(({ c, rounds }) => [
  c,
  f(spread(rounds.map((x) => x.engineTokS)).value, 0),
  ratio(rounds, (x) => x.schedTokS),
  ratio(rounds, (x) => x.daemonTokS),
  ...args.intervals.slice(1).map((_, k) => ratio(rounds, (x) => x.more[k].tokS)),
  ratio(rounds, (x) => x.gapTokS),
]);
lines.push(
  mdTable(
    [
      'streams',
      'engine alone tok/s',
      'scheduler alone tok/s: / engine',
      `daemon, stream interval ${args.intervals[0]}: / engine`,
      ...args.intervals.slice(1).map((iv) => `daemon, stream interval ${iv}: / engine`),
      "engine alone + the daemon's gap: / engine",
    ],
    ratioRows,
  ),
  '',
  'Each cell: median tok/s, then the median of the per-round ratios to the engine alone (range). "Scheduler alone": the same requests through the service and the scheduler in this process, ' +
    'sinks that only keep the tokens (no server, no sockets, no client): the scheduler\'s own cost. "Stream interval N": tokens reach the socket first at once, then N at a time (`--stream-interval`). ' +
    "\"Engine alone + the daemon's gap\": after every step the main thread spins for the daemon's median between-steps time (no work, no I/O): what the gap costs by itself, " +
    'including its effect on the next step (worker threads going to sleep, caches), apart from what the daemon does in it and from the client sharing the cores.',
  '',
);
// CPU per token of every side, this process's threads apart (kernel work included) and the client's.
if (results.every(({ rounds }) => rounds.every((r) => r.cpu.engine))) {
  const us = (rounds: Round[], get: (r: Round) => number | undefined, digits = 1) => {
    const v = rounds.map(get).filter((x): x is number => x !== undefined);
    return v.length ? f(median(v), digits) : '';
  };
  const rowsCpu = results.flatMap(({ c, rounds }) => {
    const per = (ms: number | undefined, r: Round) => (ms === undefined ? undefined : (ms * 1000) / r.tokens);
    const total = (t: ThreadCpu | undefined, clientMs = 0) => (t ? t.mainMs + t.otherMs + clientMs : undefined);
    // The engine alone's CPU over a side's (all its threads, and its client's when given): the
    // throughput ratio to expect when every side keeps both cores busy.
    const share = (get: (r: Round) => number | undefined) => us(rounds, (r) => {
      const e = total(r.cpu.engine);
      const x = get(r);
      return e !== undefined && x !== undefined ? e / x : undefined;
    }, 3);
    const side = (name: string, cpu: (r: Round) => ThreadCpu | undefined, client?: (r: Round) => number) => [
      c,
      name,
      us(rounds, (r) => per(cpu(r)?.mainMs, r)),
      us(rounds, (r) => per(cpu(r)?.otherMs, r)),
      client ? us(rounds, (r) => per(client(r), r)) : '',
      client ? share((r) => total(cpu(r), client(r))) : share((r) => total(cpu(r))),
      client ? share((r) => total(cpu(r))) : '',
    ];
    return [
      side('engine alone', (r) => r.cpu.engine),
      side('scheduler alone', (r) => r.cpu.sched),
      side(`daemon, interval ${args.intervals[0]}`, (r) => r.cpu.daemon, (r) => r.clientCpuMs),
      ...args.intervals.slice(1).map((iv, k) => side(`daemon, interval ${iv}`, (r) => r.more[k].cpu, (r) => r.more[k].clientCpuMs)),
    ];
  });
  lines.push(
    '### CPU per token (us, medians over rounds; /proc schedstat, kernel work included)',
    '',
    mdTable(
      ['streams', 'side', 'main thread (event loop)', 'engine and other threads', 'client process', 'engine alone CPU / this side\'s (with its client)', 'without the client'],
      rowsCpu,
    ),
    '',
    'The main thread\'s column is the daemon\'s own cost (scheduler, detokenizing, frames, socket writes with the kernel\'s loopback work); ' +
      'the engine threads\' column grows over the engine alone\'s by the time they spend waiting (spinning) for a thread that lost its core to the main thread or the client. ' +
      'With every side keeping the cores busy, tok/s goes as 1 / CPU per token: "engine alone CPU / this side\'s" is then the throughput ratio to expect, ' +
      'and "without the client" what it would be with the client on another machine.',
    '',
  );
}

for (const { c, rounds, profile: prof } of results) {
  const m = (fn: (r: Round) => number) => median(rounds.map(fn));
  const tokens = m((r) => r.tokens);
  const perTok = (ms: number) => f((ms * 1000) / tokens, 1);
  const share = (ms: number, wall: number) => `${f((100 * ms) / wall, 1)}%`;
  const dWall = m((r) => r.daemonWallMs);
  const eWall = m((r) => r.engineWallMs);
  const rows: (string | number)[][] = [
    ['wall time', f(dWall, 0), perTok(dWall), '100%', f(eWall, 0), perTok(eWall)],
    ['engine steps (count)', f(m((r) => r.steps), 0), '', '', f(m((r) => r.engineSteps), 0), ''],
    ['native engine step', f(m((r) => r.nativeMs), 0), perTok(m((r) => r.nativeMs)), share(m((r) => r.nativeMs), dWall), f(m((r) => r.engineStepMs), 0), perTok(m((r) => r.engineStepMs))],
    ['step request packing (Engine.step before the native call)', f(m((r) => r.packMs), 1), perTok(m((r) => r.packMs)), share(m((r) => r.packMs), dWall), '', ''],
    ['native step resolved -> Engine.step resolved', f(m((r) => r.hopMs), 1), perTok(m((r) => r.hopMs)), share(m((r) => r.hopMs), dWall), '', ''],
    ['between steps (step end -> next step start)', f(m((r) => r.gapMs), 0), perTok(m((r) => r.gapMs)), share(m((r) => r.gapMs), dWall), f(m((r) => r.engineLoopMs), 1), perTok(m((r) => r.engineLoopMs))],
    ['outside the steps (admission before the first, done frames after the last)', f(m((r) => r.outsideMs), 0), perTok(m((r) => r.outsideMs)), share(m((r) => r.outsideMs), dWall), '', ''],
    ['client process CPU (another process on the same cores)', f(m((r) => r.clientCpuMs), 0), perTok(m((r) => r.clientCpuMs)), share(m((r) => r.clientCpuMs), dWall), '', ''],
  ];
  lines.push(
    `## ${c} streams: where the time goes (medians over rounds; ${f(tokens, 0)} tokens)`,
    '',
    mdTable(['component', 'daemon ms', 'daemon us/token', 'share of daemon wall', 'engine alone ms', 'engine alone us/token'], rows),
    '',
    `Engine steps inside the daemon take ${f(m((r) => r.nativeMs) / m((r) => r.engineStepMs), 2)}x the engine-alone step time in total ` +
      `(${f(m((r) => r.nativeMs / r.steps), 2)} vs ${f(m((r) => r.engineStepMs / r.engineSteps), 2)} ms per step); with only an idle ${f(m((r) => r.spinMs), 2)} ms gap after each step the engine's steps take ` +
      `${f(m((r) => r.gapStepMs / r.engineSteps), 2)} ms. The rest of the slowdown comes from what shares the cores during a step: the client process, the kernel's socket work, the main thread.`,
    '',
  );
  if (prof) {
    const cats = [...new Set([...prof.between.keys(), ...prof.during.keys()])];
    const totB = [...prof.between.values()].reduce((a, x) => a + x, 0);
    const totD = [...prof.during.values()].reduce((a, x) => a + x, 0);
    const gapPerStep = m((r) => r.gapMs / r.steps);
    const rowsP = cats
      .map((k) => [k, prof.between.get(k) ?? 0, prof.during.get(k) ?? 0] as const)
      .sort((a, b) => b[1] - a[1])
      .map(([k, b, d]) => [k, f(b, 1), `${f((100 * b) / totB, 1)}%`, f((gapPerStep * 1000 * b) / totB / Math.max(1, tokens / m((r) => r.steps)), 2), f(d, 1), `${f((100 * d) / totD, 1)}%`]);
    lines.push(
      `### ${c} streams: main-thread CPU profile (one more daemon run, sampled every 200 us; ${prof.steps} steps)`,
      '',
      mdTable(['category (innermost project module on the stack)', 'between steps ms', 'share of between', 'us per token (scaled to the timed runs\' gap)', 'during steps ms', 'share of during'], rowsP),
      '',
      `Within "WebSocket frames": JSON.stringify of one ${f(jsonUs.bytes, 0)}-byte token frame takes ${f(jsonUs.us, 2)} us (microbenchmark, this process); the rest is uWebSockets.js's send(), ` +
        'corked once per connection per tick by lib/server/ws-stream.ts (one write per connection per step; before, one sendto per token frame under strace).',
      '',
    );
  }
}
// A variant run (other threads or streams per connection) writes beside the default one.
const variant =
  `${args['per-connection'] !== 1 ? `-${args['per-connection']}-per-connection` : ''}${args.threads !== 2 ? `-${args.threads}-threads` : ''}` +
  `${args['ws-client'] ? '-ws-client' : ''}${args['client-nice'] ? `-client-nice-${args['client-nice']}` : ''}`;
lines.push(`![overhead](overhead${variant}.svg)`, '');
const md = lines.join('\n');
console.log(md);
writeResult(`overhead${variant}.md`, md);
writeResult(`overhead${variant}.json`, JSON.stringify({ info, args, results: results.map((r) => ({ ...r, profile: r.profile && { ...r.profile, between: Object.fromEntries(r.profile.between), during: Object.fromEntries(r.profile.during) } })) }, null, 2));
writeResult(
  `overhead${variant}.svg`,
  barChartSvg({
    title: `Streaming tokens/s: daemon vs engine alone (${args.v2 ? 'V2-shaped bench model' : 'embedded model'})`,
    yLabel: 'tokens/s',
    groups: results.map((r) => `${r.c} streams`),
    series: [
      { name: `daemon (WebSocket, interval ${args.intervals[0]})`, values: results.map((r) => median(r.rounds.map((x) => x.daemonTokS))) },
      ...args.intervals.slice(1).map((iv, k) => ({ name: `daemon (interval ${iv})`, values: results.map((r) => median(r.rounds.map((x) => x.more[k].tokS))) })),
      { name: 'scheduler alone', values: results.map((r) => median(r.rounds.map((x) => x.schedTokS))) },
      { name: 'engine alone', values: results.map((r) => median(r.rounds.map((x) => x.engineTokS))) },
    ],
    note: footnote(info),
  }),
);
process.exit(0);
