// Part 1 of the suite: latency and throughput against the number of adapters in the
// request mix (0 = the base model alone, then 1, 5, 10, 20), at a fixed request rate
// and prompt mix, over one daemon (a separate `expertweave serve` process holding all
// 20 adapters, so memory is not the variable). Each round runs every adapter count
// once, in a rotated order; ratios to the base are taken within a round and reported
// as the median with the range over rounds.
//
//   npm run bench:sweep -- [--rate 1.5] [--requests 24] [--rounds 3] [--max-tokens 64] [--counts 0,1,5,10,20] [--quick]
//
// Correctness first: a request's greedy tokens must not depend on its batch, so every
// (adapter, prompt) pair seen twice (alone before the sweep, or in another run) must
// give the same tokens; any difference aborts.
import { BENCH_CONFIG, benchAdapters, benchModel } from './lib/bench-model.js';
import { benchArgs } from './lib/args.js';
import { adapterSlotsNeeded, startDaemonProcess } from './lib/daemon-process.js';
import { f, footnote, fr, header, mdTable, runInfo, writeResult } from './lib/report.js';
import { median, pairedRatios, spread } from './lib/stats.js';
import { lineChartSvg } from './lib/svg.js';
import { assertSameTokens, greedyTokens, poissonArrivals, promptMix, runLoad, summarizeLoad, type LoadSummary, type RequestResult } from './lib/workload.js';

const args = benchArgs({ rate: 1.5, requests: 24, rounds: 3, 'max-tokens': 64, counts: [0, 1, 5, 10, 20], threads: 2, scale: 80, 'max-prompt': 256 });
if (args.quick) Object.assign(args, { requests: 12, rounds: 1, counts: [0, 5] });
const counts = args.counts;
const maxN = Math.max(...counts);

const info = runInfo();
const model = benchModel();
const adapters = benchAdapters(model, BENCH_CONFIG, maxN);
const slots = adapterSlotsNeeded(adapters.map((a) => a.dir));

const mix = promptMix(BENCH_CONFIG.vocab_size, args.requests, { scale: args.scale, maxLen: args['max-prompt'] });
const arrivals = poissonArrivals(args.rate, args.requests);
console.log(`part 1, adapter-count sweep: ${adapters.length} adapters over ${model}; ${mix.describe}`);
const daemon = await startDaemonProcess({
  model,
  adapters,
  threads: args.threads,
  args: ['--max-adapters', String(maxN + 4), '--adapter-slots', String(slots), '--kv-cache-tokens', '16384'],
});

const seen = new Map<string, number[]>();
const check = (adapter: string | null, prompt: number, tokens: number[]) => {
  const key = `${adapter ?? 'base'}#${prompt}`;
  const prev = seen.get(key);
  if (prev) assertSameTokens(`sweep: ${key}`, prev, tokens);
  else seen.set(key, tokens);
};

const adapterOf = (n: number, i: number) => (n === 0 ? null : adapters[i % n].name);
const requestsFor = (n: number) =>
  mix.prompts.map((prompt, i) => ({ url: daemon.url, adapter: adapterOf(n, i), prompt, maxTokens: args['max-tokens'], at: arrivals[i] }));

let runs: Map<number, LoadSummary[]>;
let unloaded: LoadSummary;
try {
  // Alone first: the base and each adapter count's first adapters on prompt 0.
  for (const a of [null, ...adapters.slice(0, 4).map((x) => x.name)]) check(a, 0, await greedyTokens(daemon.url, a, mix.prompts[0], args['max-tokens']));
  // Unloaded latency: base requests one at a time (the floor the loaded runs are read against).
  const one: RequestResult[] = [];
  for (let i = 0; i < 4; i++) one.push(...(await runLoad([{ url: daemon.url, adapter: null, prompt: mix.prompts[i], maxTokens: args['max-tokens'], at: 0 }], 1)));
  unloaded = summarizeLoad(one);
  // Warm-up (faults in weights and adapter experts), not measured.
  await runLoad(requestsFor(maxN).slice(0, Math.min(8, args.requests)).map((r, i) => ({ ...r, at: i * 50 })));

  runs = new Map(counts.map((n) => [n, [] as LoadSummary[]]));
  for (let round = 0; round < args.rounds; round++) {
    const order = counts.map((_, i) => counts[(i + round) % counts.length]);
    for (const n of order) {
      const results: RequestResult[] = await runLoad(requestsFor(n));
      results.forEach((r) => {
        if (!r.error) check(r.req.adapter, mix.prompts.indexOf(r.req.prompt), r.tokens);
      });
      const s = summarizeLoad(results);
      if (s.errors > 0) throw new Error(`sweep: ${s.errors} of ${s.requests} requests failed with ${n} adapters`);
      runs.get(n)!.push(s);
      console.log(
        `round ${round + 1} N=${String(n).padStart(2)}: ${f(s.tokensPerS)} tok/s, TTFT p50 ${f(s.ttftMs.p50)} p99 ${f(s.ttftMs.p99)} ms, TPOT p50 ${f(s.tpotMs.p50)} p99 ${f(s.tpotMs.p99)} ms`,
      );
    }
  }
} finally {
  await daemon.stop();
}

// ---- Report ----
type Metric = (s: LoadSummary) => number;
const metrics: [string, Metric][] = [
  ['TTFT p50', (s) => s.ttftMs.p50],
  ['TTFT p99', (s) => s.ttftMs.p99],
  ['TPOT p50', (s) => s.tpotMs.p50],
  ['TPOT p99', (s) => s.tpotMs.p99],
  ['throughput', (s) => s.tokensPerS],
];
const base = runs.get(counts[0])!;
const ratio = (n: number, m: Metric) => pairedRatios(runs.get(n)!.map(m), base.map(m));
const abs = (n: number, m: Metric) => spread(runs.get(n)!.map(m)).value;

const absTable = mdTable(
  ['adapters in the mix', 'TTFT p50 ms', 'TTFT p99 ms', 'TPOT p50 ms', 'TPOT p99 ms', 'output tok/s'],
  counts.map((n) => [n === 0 ? '0 (base only)' : n, ...metrics.map(([, m]) => f(abs(n, m)))]),
);
const ratioTable = mdTable(
  ['adapters in the mix', ...metrics.map(([name]) => `${name} / base`)],
  counts.filter((n) => n !== counts[0]).map((n) => [n, ...metrics.map(([, m]) => fr(ratio(n, m)))]),
);
const saturated = median(base.map((s) => s.ttftMs.p50)) > 3 * unloaded.ttftMs.p50;
const md = [
  '# Adapter-count sweep (bench/adapter-sweep.ts, `npm run bench:sweep`)',
  '',
  ...header(info),
  `- model: the V2-shaped bench model (${model.split('/').pop()}: H=${BENCH_CONFIG.hidden_size}, ${BENCH_CONFIG.num_hidden_layers} layers, 64 experts top-6, bf16), CPU, ${args.threads} threads, one daemon process holding all ${adapters.length} adapters`,
  `- adapters: the four ESFT selections (intent, law, summary, translation) fitted to the model and cycled (${adapters.map((a) => a.experts).slice(0, 4).join('/')} experts each), own random weights`,
  `- load: Poisson arrivals at ${args.rate} req/s, ${args.requests} requests per run, max_tokens ${args['max-tokens']}, greedy; N adapters: request i goes to adapter i mod N (N = 0: the base)`,
  `- prompts: ${mix.describe}`,
  `- ${args.rounds} rounds, each running every N once in a rotated order; ratios are within a round, shown as median (min-max over rounds)`,
  `- check: every (adapter, prompt) pair gave the same greedy tokens alone and in every run (${seen.size} pairs)`,
  `- unloaded (base requests one at a time): TTFT p50 ${f(unloaded.ttftMs.p50)} ms, TPOT p50 ${f(unloaded.tpotMs.p50)} ms`,
  ...(saturated
    ? ['', `**The machine did not keep up with the offered load** (base TTFT p50 over 3x the unloaded one): latencies here are mostly queueing and their ratios say little; rerun on a quiet machine or with a lower --rate.`]
    : []),
  '',
  '## Ratios to the base model alone',
  '',
  ratioTable,
  '',
  'The paper (ExpertWeave, arXiv 2508.17624, 16B ESFT-vanilla-lite on an Ascend NPU): TTFT +8% at 5 adapters and +11% at 20; TPOT +4-11% over the base alone.',
  '',
  '## Absolute figures (median over rounds)',
  '',
  absTable,
  '',
  '![TTFT/TPOT vs adapters](adapter-sweep.svg)',
  '',
].join('\n');
console.log(md);
writeResult('adapter-sweep.md', md);
const xs = counts.filter((n) => n !== counts[0]);
const series = (name: string, m: Metric) => {
  const rs = [counts[0], ...xs].map((n) => (n === counts[0] ? { value: 1, min: 1, max: 1, n: 1 } : ratio(n, m)));
  return { name, points: [counts[0], ...xs].map((n, i) => [n, rs[i].value] as const), ranges: rs.map((r) => [r.min, r.max] as const) };
};
writeResult(
  'adapter-sweep.svg',
  lineChartSvg({
    title: 'Latency vs adapters in the mix (ratio to the base alone)',
    xLabel: 'adapters in the request mix',
    yLabel: 'ratio to base only',
    series: [series('TTFT p50', metrics[0][1]), series('TTFT p99', metrics[1][1]), series('TPOT p50', metrics[2][1]), series('TPOT p99', metrics[3][1])],
    reference: { y: 1, label: 'base only' },
    note: footnote(info),
  }),
);
process.exit(0);
