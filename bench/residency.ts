// Part 4 of the suite: adapter residency under pressure. A working set of W adapters
// larger than --adapter-pool-bytes (room for about 2) against the same adapters all
// resident, two daemons (`expertweave serve` processes) alive side by side, rounds
// alternating between them. On each, while base-model streams run in the background:
//  - adapter requests one after another, cycling over the W adapters, so on the
//    pressured daemon every one is a miss (LRU evicts the next one needed): TTFT of a
//    miss vs the same request all-resident;
//  - with each adapter request, one base request sent at the same moment: its TTFT
//    shows whether base traffic waits for a loading adapter;
//  - the background streams' inter-token gaps (one per engine step) inside the
//    adapter requests' windows (send -> first token) vs outside: the step-time hit.
//
//   npm run bench:residency -- [--working-set 6] [--pool-adapters 2.5] [--cycles 3] [--rounds 2] [--quick]
//
// Check first: every adapter request gives the same greedy tokens on both daemons
// (a reloaded adapter must serve what it served before).
import { BENCH_CONFIG, benchAdapters, benchModel } from './lib/bench-model.js';
import { benchArgs } from './lib/args.js';
import { adapterSlotsNeeded, startDaemonProcess, type DaemonProcess } from './lib/daemon-process.js';
import { f, footnote, fr, header, mdTable, runInfo, writeResult } from './lib/report.js';
import { bootstrapMedianCI, pairedRatios, spread, summarize, type Summary } from './lib/stats.js';
import { Engine } from '../lib/engine/engine.js';
import { barChartSvg } from './lib/svg.js';
import { StreamClient, type Frame } from '../test/helpers/ws-client.js';
import { assertSameTokens, promptMix } from './lib/workload.js';

const args = benchArgs({ 'working-set': 6, 'pool-adapters': 2.5, cycles: 3, rounds: 3, 'base-streams': 3, 'max-tokens': 8, gap: 300, threads: 2 });
if (args.quick) Object.assign(args, { cycles: 1, rounds: 1 });
const info = runInfo();
const cfg = BENCH_CONFIG;
const model = benchModel();
const W = args['working-set'];
const adapters = benchAdapters(model, cfg, W);
const expertBytes = 3 * cfg.hidden_size * cfg.moe_intermediate_size * 2; // bf16 gate, up, down
const meanBytes = (adapters.reduce((s, a) => s + a.experts, 0) / W) * expertBytes;
const poolBytes = Math.floor(args['pool-adapters'] * meanBytes);
const prompts = promptMix(cfg.vocab_size, 8, { scale: 80, maxLen: 64 }).prompts;

interface Timed {
  sent: number;
  firstAt: number;
  tokens: number[];
}

/** Runs one request over `c` and resolves with its timings (throws on an error frame). */
function request(c: StreamClient, id: string, adapter: string | null, prompt: number[], maxTokens: number, onToken?: (at: number) => void): Promise<Timed> {
  return new Promise((resolve, reject) => {
    const r: Timed = { sent: performance.now(), firstAt: 0, tokens: [] };
    c.onFrame(id, (fr: Frame) => {
      const now = performance.now();
      if (fr.type === 'token') {
        if (r.tokens.length === 0) r.firstAt = now;
        r.tokens.push(fr.token as number);
        onToken?.(now);
      } else if (fr.type === 'error') reject(new Error(`${id}: ${String(fr.code)} ${String(fr.message)}`));
      else resolve(r);
    });
    c.send({ type: 'generate', id, adapter, prompt, max_tokens: maxTokens, temperature: 0 });
  });
}

interface RunResult {
  adapterTtft: number[];
  baseTtft: number[];
  gapsIn: number[];
  gapsOut: number[];
  loads: number;
  tokens: Map<number, number[]>;
}

let seq = 0;
async function run(d: DaemonProcess): Promise<RunResult> {
  const url = d.url.replace(/^http/, 'ws') + '/v1/stream';
  const bg = await Promise.all(Array.from({ length: args['base-streams'] }, () => StreamClient.open(url)));
  const fg = await StreamClient.open(url);
  const probe = await StreamClient.open(url);
  const loadsBefore = await totalLoads(d);
  // Background: each stream runs base requests back to back; token arrival times kept.
  const arrivals: number[][] = bg.map(() => []);
  let stop = false;
  const streams = bg.map(async (c, k) => {
    while (!stop) await request(c, `bg${seq++}`, null, prompts[k % prompts.length], 48, (at) => arrivals[k].push(at));
  });
  await new Promise((r) => setTimeout(r, 1000));
  const windows: [number, number][] = [];
  const out: RunResult = { adapterTtft: [], baseTtft: [], gapsIn: [], gapsOut: [], loads: 0, tokens: new Map() };
  for (let k = 0; k < W * args.cycles; k++) {
    const a = adapters[k % W];
    const [ad, base] = await Promise.all([
      request(fg, `a${seq++}`, a.name, prompts[k % prompts.length], args['max-tokens']),
      request(probe, `p${seq++}`, null, prompts[(k + 3) % prompts.length], 2),
    ]);
    windows.push([ad.sent, ad.firstAt]);
    out.adapterTtft.push(ad.firstAt - ad.sent);
    out.baseTtft.push(base.firstAt - base.sent);
    out.tokens.set(k, ad.tokens);
    await new Promise((r) => setTimeout(r, args.gap));
  }
  stop = true;
  await Promise.all(streams);
  for (const c of [...bg, fg, probe]) c.close();
  out.loads = (await totalLoads(d)) - loadsBefore;
  const inWindow = (t0: number, t1: number) => windows.some(([w0, w1]) => t0 < w1 && t1 > w0);
  for (const times of arrivals) {
    for (let i = 1; i < times.length; i++) {
      const gap = times[i] - times[i - 1];
      if (gap > 2000) continue; // between two requests of the stream, not between steps
      (inWindow(times[i - 1], times[i]) ? out.gapsIn : out.gapsOut).push(gap);
    }
  }
  return out;
}

async function totalLoads(d: DaemonProcess): Promise<number> {
  const list = (await (await fetch(`${d.url}/v1/adapters`)).json()) as { data: { loads: number }[] };
  return list.data.reduce((s, a) => s + a.loads, 0);
}

// What a miss has to do, measured on an engine of its own: register (load) and unregister
// each adapter, idle, and again while a decode loop steps three sequences (as a daemon
// under traffic would): the difference shows what the load waits for or competes with.
const loadTime = await (async () => {
  const e = await Engine.load(model, { device: 'cpu', threads: args.threads, kvCacheTokens: 4096, maxAdapters: 2, maxAdapterSlots: adapterSlotsNeeded(adapters.map((a) => a.dir)) });
  const cycle = async (reps: number) => {
    const ms: number[] = [];
    for (let rep = 0; rep < reps; rep++) {
      for (const a of adapters) {
        const t0 = performance.now();
        const { row } = await e.registerAdapter(a.dir);
        ms.push(performance.now() - t0);
        e.unregisterAdapter(row);
      }
    }
    return ms;
  };
  try {
    await cycle(1); // reads the files into the page cache
    const idle = summarize(await cycle(2));
    let stop = false;
    const seqs = [1, 2, 3];
    let last = (await e.step(seqs.map((seqId, i) => ({ seqId, tokens: prompts[i] })))).tokens;
    const loop = (async () => {
      for (let n = 0; !stop && n < 2000; n++) last = (await e.step(seqs.map((seqId, i) => ({ seqId, tokens: [last[i] === 1 ? 2 : last[i]] })))).tokens;
    })();
    const busy = summarize(await cycle(2));
    stop = true;
    await loop;
    return { idle, busy };
  } finally {
    e.close();
  }
})();

console.log(`part 4, residency: ${W} adapters, pool budget ${f(poolBytes / 2 ** 20)} MiB (${args['pool-adapters']} mean adapters of ${f(meanBytes / 2 ** 20)} MiB)`);
const common = ['--kv-cache-tokens', '8192', '--max-adapters', String(W + 2), '--adapter-slots', String(adapterSlotsNeeded(adapters.map((a) => a.dir)))];
const pressured = await startDaemonProcess({ model, adapters, threads: args.threads, args: [...common, '--adapter-pool-bytes', String(poolBytes)] });
const resident = await startDaemonProcess({ model, adapters, threads: args.threads, args: common });
const sides = [
  { name: 'working set > pool (every adapter request a miss)', d: pressured, runs: [] as RunResult[] },
  { name: 'all resident', d: resident, runs: [] as RunResult[] },
];
try {
  for (let round = 0; round < args.rounds; round++) {
    for (const k of round % 2 === 0 ? [0, 1] : [1, 0]) {
      const r = await run(sides[k].d);
      sides[k].runs.push(r);
      console.log(`round ${round + 1} ${sides[k].name}: adapter TTFT p50 ${f(summarize(r.adapterTtft).p50)} ms, base TTFT p50 ${f(summarize(r.baseTtft).p50)} ms, step gaps in/out ${f(summarize(r.gapsIn).p50)}/${f(summarize(r.gapsOut).p50)} ms, loads ${r.loads}`);
    }
  }
} finally {
  await Promise.all([pressured.stop(), resident.stop()]);
}
for (let round = 0; round < args.rounds; round++) {
  const [p, r] = [sides[0].runs[round], sides[1].runs[round]];
  for (const [k, tokens] of p.tokens) assertSameTokens(`residency: request ${k} (${adapters[k % W].name}), reloaded vs resident`, tokens, r.tokens.get(k)!);
}

// ---- Report ----
const per = (k: number, pick: (r: RunResult) => number) => sides[k].runs.map(pick);
const p50 = (xs: number[]) => summarize(xs).p50;
const p99 = (xs: number[]) => summarize(xs).p99;
const all = (k: number, pick: (r: RunResult) => number[]) => sides[k].runs.flatMap(pick);
const row = (k: number) => {
  const s = (xs: number[]): Summary => summarize(xs);
  return [
    sides[k].name,
    f(spread(per(k, (r) => r.loads)).value, 0),
    f(s(all(k, (r) => r.adapterTtft)).p50),
    f(s(all(k, (r) => r.adapterTtft)).p99),
    f(s(all(k, (r) => r.baseTtft)).p50),
    f(s(all(k, (r) => r.baseTtft)).p99),
    f(s(all(k, (r) => r.gapsIn)).p50),
    f(s(all(k, (r) => r.gapsIn)).p99),
    f(s(all(k, (r) => r.gapsIn)).max),
    f(s(all(k, (r) => r.gapsOut)).p50),
    f(s(all(k, (r) => r.gapsOut)).p99),
  ];
};
const ratio = (pick: (r: RunResult) => number[], q: (xs: number[]) => number) => pairedRatios(per(0, (r) => q(pick(r))), per(1, (r) => q(pick(r))));
const missTtft = ratio((r) => r.adapterTtft, p50);
const baseTtft = ratio((r) => r.baseTtft, p50);
const stepIn = ratio((r) => r.gapsIn, p50);
const stepIn99 = ratio((r) => r.gapsIn, p99);
// Paired by request: request k of round i on the pressured daemon minus the same request all-resident.
const pairedDiff = (pick: (r: RunResult) => number[]) => bootstrapMedianCI(sides[0].runs.flatMap((r, i) => pick(r).map((x, k) => x - pick(sides[1].runs[i])[k])));
const missCost = pairedDiff((r) => r.adapterTtft);
const baseCost = pairedDiff((r) => r.baseTtft);
const md = [
  '# Residency under pressure (bench/residency.ts, `npm run bench:residency`)',
  '',
  ...header(info),
  `- model: the V2-shaped bench model (H=${cfg.hidden_size}, ${cfg.num_hidden_layers} layers, 64 experts top-6, bf16), CPU, ${args.threads} threads per daemon; two daemons alive side by side, rounds alternating`,
  `- working set: ${W} adapters (ESFT selections fitted, ${adapters.map((a) => a.experts).join('/')} experts, ${f(meanBytes / 2 ** 20)} MiB mean); --adapter-pool-bytes ${poolBytes} (${args['pool-adapters']} mean adapters) on the pressured daemon, no limit on the other`,
  `- per round and daemon: ${W * args.cycles} adapter requests in turn (cycling, max_tokens ${args['max-tokens']}, ${args.gap} ms apart), each with a base request (max_tokens 2) sent at the same moment, over ${args['base-streams']} background base streams (max_tokens 48, back to back); ${args.rounds} rounds`,
  '- step gaps: inter-token gaps of the background streams (one per engine step), "in" when they overlap an adapter request\'s window (sent -> first token)',
  '- check: every adapter request gave the same greedy tokens on both daemons (reloaded adapters serve what resident ones do)',
  '',
  mdTable(['daemon', 'adapter loads per round', 'adapter TTFT p50 ms', 'p99', 'base TTFT p50 ms', 'p99', 'step gap in window p50 ms', 'p99', 'max', 'step gap outside p50 ms', 'p99'], [row(0), row(1)]),
  '',
  mdTable(
    ['pressured / all resident (per round: median (min-max))', 'ratio'],
    [
      ['adapter TTFT p50 (a miss vs a hit)', fr(missTtft)],
      ['base TTFT p50 (base request sent with it)', fr(baseTtft)],
      ['step gap p50 in the windows', fr(stepIn)],
      ['step gap p99 in the windows', fr(stepIn99)],
    ],
  ),
  '',
  `Paired by request (the same request on both daemons, all rounds): a miss adds ${f(missCost.estimate)} ms to the adapter's TTFT (median, 95% CI ${f(missCost.lo)} to ${f(missCost.hi)}); ` +
    `the base request sent with it gets ${f(baseCost.estimate)} ms (95% CI ${f(baseCost.lo)} to ${f(baseCost.hi)}). ` +
    `Loading one adapter into an engine (registerAdapter: its safetensors into the pool, reroute rows written; in this process, page cache warm) takes ${f(loadTime.idle.p50)} ms median ` +
    `(${f(loadTime.idle.min)}-${f(loadTime.idle.max)}, ${loadTime.idle.n} loads) on an idle engine and ${f(loadTime.busy.p50)} ms (${f(loadTime.busy.min)}-${f(loadTime.busy.max)}) while it steps three sequences back to back. ` +
    'Base traffic is not held up when the base TTFT and the step gaps inside the windows stay near 1x the all-resident ones: the load runs on a worker thread while steps go on; on this 2-core machine the loading thread still takes CPU time from the engine threads.',
  '',
  '![residency](residency.svg)',
  '',
].join('\n');
console.log(md);
writeResult('residency.md', md);
writeResult(
  'residency.svg',
  barChartSvg({
    title: 'Working set > pool vs all resident (p50)',
    yLabel: 'ms',
    groups: ['adapter TTFT', 'base TTFT', 'step gap in window', 'step gap outside'],
    series: sides.map((s, k) => ({
      name: k === 0 ? 'working set > pool' : 'all resident',
      values: [all(k, (r) => r.adapterTtft), all(k, (r) => r.baseTtft), all(k, (r) => r.gapsIn), all(k, (r) => r.gapsOut)].map(p50),
    })),
    note: footnote(info),
  }),
);
process.exit(0);
