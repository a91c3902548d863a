// Part 2 of the suite: N adapters served by one daemon against N daemons each serving
// a merged checkpoint (base + one adapter written as one model directory, the way
// people serve ESFT models today), on the same machine with the same total threads,
// the same total KV-cache tokens and the same offered load. Every daemon is a separate
// `expertweave serve` process; the load generator (this process) sends adapter i's
// requests to our daemon with "adapter": i, or to merged daemon i.
//
// Per N, the sides alternate over rounds, each round running three loads on both:
//  - poisson: Poisson arrivals at --rate with the ESFT prompt mix: tokens/s, TTFT, TPOT;
//  - prefill burst: every prompt of the mix at once, max_tokens 1: prompt tokens/s;
//  - decode burst: --burst short prompts at once, max_tokens --decode-tokens: output tokens/s.
// Then resident memory (RSS) of each side, and memory against the adapter count: our
// daemon registering adapters one by one vs one merged daemon per adapter.
//
//   npm run bench:merged -- [--counts 2,4] [--rounds 2] [--rate 2] [--budget-gib 8] [--quick]
//
// Before any timing, the same greedy request for each adapter must give the same
// tokens on both sides (served adapter == merged model); otherwise it aborts.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

import { BENCH_CONFIG, benchAdapters, benchModel, mergedModel, type BenchAdapter } from './lib/bench-model.js';
import { benchArgs } from './lib/args.js';
import { adapterSlotsNeeded, startDaemonProcess, type DaemonProcess } from './lib/daemon-process.js';
import { f, footnote, fr, header, mdTable, resultsDir, runInfo, writeResult } from './lib/report.js';
import { pairedRatios, spread } from './lib/stats.js';
import { barChartSvg, lineChartSvg } from './lib/svg.js';
import { assertSameTokens, greedyTokens, poissonArrivals, promptMix, runLoad, summarizeLoad, type LoadRequest, type LoadSummary } from './lib/workload.js';

const args = benchArgs({
  counts: [2, 4],
  rounds: 2,
  rate: 2,
  requests: 20,
  'max-tokens': 32,
  burst: 16,
  'decode-tokens': 48,
  threads: 2,
  'kv-tokens': 16384,
  scale: 80,
  'max-prompt': 256,
  'budget-gib': 8,
  'memory-counts': [0, 1, 2, 4, 8, 16, 20],
});
if (args.quick) Object.assign(args, { counts: [2], rounds: 1, requests: 8, burst: 4, 'decode-tokens': 16, 'memory-counts': [0, 1, 4] });

const info = runInfo();
const cfg = BENCH_CONFIG;
const model = benchModel();
const maxN = Math.max(...args.counts, ...args['memory-counts']);
const adapters = benchAdapters(model, cfg, maxN);
const mix = promptMix(cfg.vocab_size, args.requests, { scale: args.scale, maxLen: args['max-prompt'] });
const arrivals = poissonArrivals(args.rate, args.requests);
const shortPrompts = Array.from({ length: args.burst }, (_, i) => mix.prompts[i % mix.prompts.length].slice(0, 16));
const GiB = 2 ** 30;

type Load = 'poisson' | 'prefill' | 'decode';
interface Side {
  name: string;
  threadsEach: number;
  /** URL and adapter name for adapter i's requests. */
  target(i: number): { url: string; adapter: string | null };
  memory(): { rss: number; peak: number };
  stop(): Promise<void>;
}

function requests(side: Side, load: Load, n: number): LoadRequest[] {
  if (load === 'poisson') return mix.prompts.map((prompt, j) => ({ ...side.target(j % n), prompt, maxTokens: args['max-tokens'], at: arrivals[j] }));
  if (load === 'prefill') return mix.prompts.map((prompt, j) => ({ ...side.target(j % n), prompt, maxTokens: 1, at: 0 }));
  return shortPrompts.map((prompt, j) => ({ ...side.target(j % n), prompt, maxTokens: args['decode-tokens'], at: 0 }));
}

// Threads: ours one per core (--threads); the merged daemons split them, at least one
// each, so past N = --threads they hold more threads than ours. Giving ours that many
// too would oversubscribe the cores under its spinning thread pool, which measures the
// pool rather than the design (a 4-thread daemon on 2 cores ran at ~1/3 the speed).
async function startSides(n: number, set: BenchAdapter[]): Promise<[Side, Side]> {
  const threadsEach = Math.max(1, Math.floor(args.threads / n));
  const kvEach = Math.floor(args['kv-tokens'] / n);
  const oursProc = await startDaemonProcess({
    model,
    adapters: set,
    threads: args.threads,
    args: ['--kv-cache-tokens', String(args['kv-tokens']), '--max-adapters', String(n + 1), '--adapter-slots', String(adapterSlotsNeeded(set.map((a) => a.dir)))],
  });
  const merged: DaemonProcess[] = [];
  try {
    for (const a of set) merged.push(await startDaemonProcess({ model: mergedModel(model, a), threads: threadsEach, args: ['--kv-cache-tokens', String(kvEach), '--max-adapters', '0', '--adapter-slots', '0'] }));
  } catch (e) {
    await Promise.all([oursProc, ...merged].map((d) => d.stop()));
    throw e;
  }
  const ours: Side = {
    name: `ExpertWeave: 1 daemon, ${n} adapters`,
    threadsEach: args.threads,
    target: (i) => ({ url: oursProc.url, adapter: set[i].name }),
    memory: () => oursProc.memory(),
    stop: () => oursProc.stop(),
  };
  const mergedSide: Side = {
    name: `${n} merged daemons`,
    threadsEach,
    target: (i) => ({ url: merged[i].url, adapter: null }),
    memory: () => merged.map((d) => d.memory()).reduce((s, m) => ({ rss: s.rss + m.rss, peak: s.peak + m.peak }), { rss: 0, peak: 0 }),
    stop: async () => {
      await Promise.all(merged.map((d) => d.stop()));
    },
  };
  return [ours, mergedSide];
}

interface NResult {
  n: number;
  threads: [number, number];
  runs: Record<Load, [LoadSummary[], LoadSummary[]]>;
  prefillTokens: number;
  memory: [{ rss: number; peak: number }, { rss: number; peak: number }];
  checked: number;
}

console.log(`part 2, against merged models: ${model}; ${mix.describe}`);
const results: NResult[] = [];
for (const n of args.counts) {
  const set = adapters.slice(0, n);
  for (const a of set) mergedModel(model, a);
  const sides = await startSides(n, set);
  try {
    // Same greedy tokens on both sides, for every adapter.
    for (let i = 0; i < n; i++) {
      const [a, b] = await Promise.all(sides.map((s) => greedyTokens(s.target(i).url, s.target(i).adapter, mix.prompts[i], args['max-tokens'])));
      assertSameTokens(`merged: adapter ${set[i].name}, one daemon vs its merged daemon`, a, b);
    }
    // Warm-up: every daemon serves a few requests (weights and pool pages faulted in).
    for (const s of sides) await runLoad(requests(s, 'decode', n).slice(0, 2 * n).map((r) => ({ ...r, maxTokens: 4 })));
    const runs = { poisson: [[], []], prefill: [[], []], decode: [[], []] } as unknown as NResult['runs'];
    for (let round = 0; round < args.rounds; round++) {
      for (const load of ['poisson', 'prefill', 'decode'] as Load[]) {
        const order = round % 2 === 0 ? [0, 1] : [1, 0];
        for (const k of order) {
          const rs = await runLoad(requests(sides[k], load, n));
          const s = summarizeLoad(rs);
          if (s.errors > 0) throw new Error(`merged: ${s.errors} requests failed on ${sides[k].name} (${load}): ${rs.find((r) => r.error)?.error}`);
          runs[load][k].push(s);
          console.log(`N=${n} round ${round + 1} ${load.padEnd(7)} ${sides[k].name.padEnd(32)} ${f(s.tokensPerS)} out tok/s, TTFT p50 ${f(s.ttftMs.p50)} ms, TPOT p50 ${f(s.tpotMs.p50)} ms, wall ${f(s.wallS, 2)} s`);
        }
      }
    }
    results.push({
      n,
      threads: [sides[0].threadsEach, sides[1].threadsEach],
      runs,
      prefillTokens: mix.prompts.reduce((s, p) => s + p.length, 0),
      memory: [sides[0].memory(), sides[1].memory()],
      checked: n,
    });
  } finally {
    await Promise.all(sides.map((s) => s.stop()));
  }
}

// ---- Memory against the adapter count ----
console.log('memory: our daemon registering adapters one by one; one merged daemon');
const MEM_KV = ['--kv-cache-tokens', '2048'];
const memCounts = [...new Set(args['memory-counts'])].sort((a, b) => a - b);
const oursMem: { n: number; rss: number; adapterBytes: number }[] = [];
{
  const d = await startDaemonProcess({
    model,
    threads: args.threads,
    args: [...MEM_KV, '--max-adapters', String(maxN + 1), '--adapter-slots', String(adapterSlotsNeeded(adapters.map((a) => a.dir)))],
  });
  try {
    let registered = 0;
    for (const n of memCounts) {
      for (; registered < n; registered++) {
        const r = await fetch(`${d.url}/v1/adapters`, { method: 'POST', body: JSON.stringify({ name: adapters[registered].name, path: adapters[registered].dir }) });
        if (r.status !== 201) throw new Error(`registering ${adapters[registered].name}: HTTP ${r.status} ${await r.text()}`);
      }
      // One request per adapter (and the base) so every weight page a request touches is resident.
      await runLoad([null, ...adapters.slice(0, n).map((a) => a.name)].map((adapter) => ({ url: d.url, adapter, prompt: mix.prompts[0], maxTokens: 2, at: 0 })));
      const list = (await (await fetch(`${d.url}/v1/adapters`)).json()) as { resident_bytes: number };
      oursMem.push({ n, rss: d.memory().rss, adapterBytes: list.resident_bytes });
    }
  } finally {
    await d.stop();
  }
}
let mergedOne: number;
{
  const d = await startDaemonProcess({ model: mergedModel(model, adapters[0]), threads: args.threads, args: [...MEM_KV, '--max-adapters', '0', '--adapter-slots', '0'] });
  try {
    await greedyTokens(d.url, null, mix.prompts[0], 2);
    mergedOne = d.memory().rss;
  } finally {
    await d.stop();
  }
}

// Least squares: RSS = base + n * perAdapter over our measured points.
const fit = (() => {
  const xs = oursMem.map((m) => m.n);
  const ys = oursMem.map((m) => m.rss);
  const mx = xs.reduce((s, x) => s + x, 0) / xs.length;
  const my = ys.reduce((s, y) => s + y, 0) / ys.length;
  const sxx = xs.reduce((s, x) => s + (x - mx) ** 2, 0);
  const slope = sxx === 0 ? 0 : xs.reduce((s, x, i) => s + (x - mx) * (ys[i] - my), 0) / sxx;
  return { base: my - slope * mx, perAdapter: slope };
})();
const budget = args['budget-gib'] * GiB;
const oursFit = Math.floor((budget - fit.base) / fit.perAdapter);
const mergedFit = Math.floor(budget / mergedOne);

// V2-Lite scale, from bench:memory's committed table (bench/results/memory-layout.md, 2 MiB pages).
function v2LiteFits(budgetGiB: number): string | undefined {
  const path = join(resultsDir(), 'memory-layout.md');
  if (!existsSync(path)) return undefined;
  const text = readFileSync(path, 'utf8').split('### Page size 4 KiB')[0];
  const rows = [...text.matchAll(/^\| (\d+) \|.*\| ([\d.]+) GiB \| ([\d.]+) GiB \|$/gm)].map((m) => ({ n: Number(m[1]), merged: Number(m[2]), ours: Number(m[3]) }));
  if (rows.length === 0) return undefined;
  const ours = rows.filter((r) => r.ours <= budgetGiB).map((r) => r.n);
  const merged = rows.filter((r) => r.merged <= budgetGiB).map((r) => r.n);
  const most = (xs: number[]) => (xs.length === 0 ? '0' : xs.length === rows.length ? `>= ${Math.max(...xs)}` : String(Math.max(...xs)));
  return `${budgetGiB} GiB: ours ${most(ours)} adapters, merged models ${most(merged)}`;
}

// ---- Report ----
const mib = (b: number) => f(b / 2 ** 20, 0);
const med = (xs: LoadSummary[], m: (s: LoadSummary) => number) => spread(xs.map(m)).value;
const rows = results.flatMap((r) => {
  const line = (k: 0 | 1) => {
    const p = r.runs.poisson[k];
    return [
      k === 0 ? `ExpertWeave, ${r.n} adapters` : `${r.n} merged daemons`,
      `${r.threads[k]}${k === 1 ? ` each (${r.threads[k] * r.n} total)` : ''}`,
      f(med(p, (s) => s.tokensPerS)),
      f(med(p, (s) => s.ttftMs.p50)),
      f(med(p, (s) => s.ttftMs.p99)),
      f(med(p, (s) => s.tpotMs.p50)),
      f(med(p, (s) => s.tpotMs.p99)),
      f(med(r.runs.prefill[k], (s) => r.prefillTokens / s.wallS)),
      f(med(r.runs.decode[k], (s) => s.tokensPerS)),
      mib(r.memory[k].rss),
      mib(r.memory[k].peak),
    ];
  };
  return [line(0), line(1)];
});
const ratios = results.map((r) => {
  const ratio = (load: Load, m: (s: LoadSummary) => number) => pairedRatios(r.runs[load][0].map(m), r.runs[load][1].map(m));
  return [
    r.n,
    fr(ratio('poisson', (s) => s.tokensPerS)),
    fr(ratio('poisson', (s) => s.ttftMs.p50)),
    fr(ratio('poisson', (s) => s.tpotMs.p50)),
    fr(ratio('prefill', (s) => 1 / s.wallS)),
    fr(ratio('decode', (s) => s.tokensPerS)),
    f(r.memory[0].rss / r.memory[1].rss, 2),
  ];
});
const v2 = [64, 80, 141].map(v2LiteFits).filter((x) => x !== undefined);
const md = [
  '# Against merged models (bench/merged.ts, `npm run bench:merged`)',
  '',
  ...header(info),
  `- model: the V2-shaped bench model (H=${cfg.hidden_size}, ${cfg.num_hidden_layers} layers, 64 experts top-6, bf16, ${mib(mergedOne)} MiB RSS as one daemon) on the CPU; adapters: the ESFT selections fitted and cycled`,
  `- merged model = base + one adapter written as one checkpoint (tools/merge/merge.ts); each side runs as separate \`expertweave serve\` processes on the same ${args.threads} cores: ours with ${args.threads} threads, the merged daemons splitting them (at least 1 each, so past N = ${args.threads} they hold more threads in total; giving ours as many would oversubscribe its spinning thread pool), the same total KV-cache tokens (${args['kv-tokens']})`,
  `- loads, the same on both sides, adapter i's requests to adapter i (j-th request: adapter j mod N): poisson = ${args.requests} requests at ${args.rate} req/s, max_tokens ${args['max-tokens']}; ` +
    `prefill burst = the same ${args.requests} prompts at once, max_tokens 1 (prompt tokens/s); decode burst = ${args.burst} 16-token prompts at once, max_tokens ${args['decode-tokens']} (output tokens/s)`,
  `- prompts: ${mix.describe}`,
  `- ${args.rounds} rounds, sides alternating (order swapped every round); ratios paired within a round: median (min-max)`,
  `- check: for every adapter, the same greedy request gave the same tokens on both sides`,
  '',
  '## Ratios, ExpertWeave / merged (higher throughput is better, lower latency and memory are better)',
  '',
  mdTable(['N adapters', 'poisson tok/s', 'TTFT p50', 'TPOT p50', 'prefill throughput', 'decode throughput', 'RSS'], ratios),
  '',
  'The paper (ExpertWeave on an Ascend NPU, 16B ESFT-vanilla-lite): +7-14% prefill and +14-18% decode throughput against merged models at comparable resources; serves adapters where merged models run out of memory.',
  '',
  '## Absolute figures (median over rounds)',
  '',
  mdTable(['side', 'threads', 'poisson out tok/s', 'TTFT p50 ms', 'TTFT p99 ms', 'TPOT p50 ms', 'TPOT p99 ms', 'prefill prompt tok/s', 'decode out tok/s', 'RSS MiB', 'peak RSS MiB'], rows),
  '',
  '## Memory against the number of adapters',
  '',
  'Both with a 2048-token KV cache; each daemon after one short request per model it serves.',
  '',
  mdTable(
    ['adapters', 'ExpertWeave RSS MiB (measured)', 'adapter experts MiB', 'N merged daemons MiB (N x one, measured once)'],
    oursMem.map((m) => [m.n, mib(m.rss), mib(m.adapterBytes), m.n === 0 ? '-' : mib(m.n * mergedOne)]),
  ),
  '',
  `Fit over the measured points: ExpertWeave RSS = ${mib(fit.base)} MiB + ${f(fit.perAdapter / 2 ** 20, 1)} MiB per adapter; one merged daemon ${mib(mergedOne)} MiB. ` +
    `In a ${args['budget-gib']} GiB budget: ExpertWeave holds ${oursFit} adapters, merged daemons ${mergedFit} (extrapolated from the fit).`,
  v2.length > 0 ? `At DeepSeek-V2-Lite scale (bf16 weights only, from bench/results/memory-layout.md): ${v2.join('; ')}.` : '',
  '',
  '![throughput vs merged](merged-throughput.svg)',
  '',
  '![memory vs adapters](memory-vs-adapters.svg)',
  '',
].join('\n');
console.log(md);
writeResult('merged.md', md);
writeResult(
  'merged-throughput.svg',
  barChartSvg({
    title: 'Throughput: one ExpertWeave daemon vs N merged daemons',
    yLabel: 'tokens/s',
    groups: results.flatMap((r) => [`prefill, N=${r.n}`, `decode, N=${r.n}`]),
    series: [0, 1].map((k) => ({
      name: k === 0 ? 'ExpertWeave' : 'merged daemons',
      values: results.flatMap((r) => [med(r.runs.prefill[k], (s) => r.prefillTokens / s.wallS), med(r.runs.decode[k], (s) => s.tokensPerS)]),
    })),
    note: footnote(info),
  }),
);
writeResult(
  'memory-vs-adapters.svg',
  lineChartSvg({
    title: 'Resident memory vs adapters served',
    xLabel: 'adapters',
    yLabel: 'RSS (MiB)',
    series: [
      { name: 'ExpertWeave (measured)', points: oursMem.map((m) => [m.n, m.rss / 2 ** 20] as const) },
      { name: 'merged daemons (N x one)', points: oursMem.filter((m) => m.n > 0).map((m) => [m.n, (m.n * mergedOne) / 2 ** 20] as const) },
      { name: 'merged daemons (measured)', points: results.map((r) => [r.n, r.memory[1].rss / 2 ** 20] as const) },
    ],
    note: footnote(info),
  }),
);
process.exit(0);
