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
//                             [--intervals 1,4] [--v2 0|1] [--ws-client 0|1] [--sse 0|1] [--client-nice 0..19] [--quick]
//
// Each round also runs the scheduler alone (Service.start with sinks that only collect
// the tokens: no server, no client), which tells the scheduler's cost from the
// transport's, and the daemon at each --intervals stream interval (the first is the one
// broken down). The load client reads frames with bench/lib/lean-ws.ts; --ws-client 1
// uses the `ws` package instead; --sse 1 streams every request as an OpenAI client does
// (POST /v1/completions, stream: true, one connection each, bench/lib/lean-sse.ts);
// --client-nice 19 runs it at the lowest priority (the stand-in for a client on another
// machine). Last, the scheduler over an instant engine
// (bench/lib/instant-engine.ts): its CPU per token with and without the detokenizer,
// free of the engine's share of the cores.
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
import { f, footnote, runInfo, writeResult } from './lib/report.js';
import { median } from './lib/stats.js';
import type { StreamClientResult, StreamClientSpec } from './lib/stream-client.js';
import { schedulerCpuPerToken } from './lib/instant-engine.js';
import { overheadReport, type Round, type StreamsResult } from './lib/overhead-report.js';
import { barChartSvg } from './lib/svg.js';
import { threadCpu, threadCpuSince, type ThreadCpu } from './lib/thread-cpu.js';
import { assertSameTokens, evalPrompts } from './lib/workload.js';

const args = benchArgs({ streams: [32, 128], 'max-tokens': 200, rounds: 3, threads: 2, 'per-connection': 1, profile: 1, v2: 0, 'ws-client': 0, sse: 0, intervals: [1, 4], 'client-nice': 0 });
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
const httpUrl = `http://127.0.0.1:${daemon.server.port}`;

/** An SSE stream against the engine-alone ids: as many tokens, and their text (ids when the model has no tokenizer). */
function assertSameText(what: string, text: string, count: number, ids: readonly number[]): void {
  const want = tokenizer ? tokenizer.streamText(ids) : text;
  if (count !== ids.length || text !== want) {
    throw new Error(`${what}: the two sides generate different tokens for the same greedy request; comparison aborted\n  ${count} tokens: ${JSON.stringify(text)}\n  ${ids.length} tokens: ${JSON.stringify(want)}`);
  }
}

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
  const spec: StreamClientSpec = { url: args.sse ? httpUrl : wsUrl, transport: args.sse ? 'sse' : 'ws', prompts, adapters: [null], maxTokens: args['max-tokens'], perConnection: args['per-connection'], client: args['ws-client'] ? 'ws' : 'lean', nice: args['client-nice'] };
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


type EngineRun = { wallMs: number; tokens: number[][]; stepMs: number[]; cpu?: ThreadCpu };
type DaemonRun = { client: StreamClientResult; steps: StepTiming[]; cpu?: ThreadCpu };
type Others = { more: DaemonRun[]; sched: { wallMs: number; tokens: number[][]; cpu?: ThreadCpu } };
function analyse(d: DaemonRun, e: EngineRun, g: EngineRun, spinMs: number, o: Others): Round {
  const s = d.steps;
  const sum = (fn: (t: StepTiming, i: number) => number) => s.reduce((acc, t, i) => acc + fn(t, i), 0);
  const tokens = d.client.counts.reduce((a, n) => a + n, 0);
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

const results: StreamsResult[] = [];
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
      // SSE chunks carry text, not ids: the same count and the engine-alone tokens' text.
      const checkClient = (what: string, r: StreamClientResult) =>
        r.texts ? r.texts.forEach((t, i) => assertSameText(`overhead: stream ${i} (${c} streams), ${what} vs engine alone`, t, r.counts[i], e.tokens[i])) : check(what, r.tokens);
      checkClient('daemon', d.client);
      more.forEach((m, k) => checkClient(`daemon at stream interval ${args.intervals[k + 1]}`, m.client));
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

// The scheduler's own CPU per token with no engine work (steady where the timed runs are not).
const instant = [];
for (const c of args.streams) {
  const prompts = promptsFor(c);
  instant.push({ c, withText: await schedulerCpuPerToken(prompts, args['max-tokens'], tokenizer), withoutText: await schedulerCpuPerToken(prompts, args['max-tokens'], null) });
}

// ---- Report ----
// A variant run (other threads or streams per connection) writes beside the default one.
const variant =
  `${args['per-connection'] !== 1 ? `-${args['per-connection']}-per-connection` : ''}${args.threads !== 2 ? `-${args.threads}-threads` : ''}` +
  `${args['ws-client'] ? '-ws-client' : ''}${args.sse ? '-sse' : ''}${args['client-nice'] ? `-client-nice-${args['client-nice']}` : ''}`;
const lines = overheadReport({ info, args, modelName, promptBytes: PROMPT_BYTES, results, jsonUs, instant });
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
