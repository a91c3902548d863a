// `npm run bench:suite`: every part of the benchmark suite, one after another, each in
// its own process (each is also runnable alone: npm run bench:<part>). Writes
// bench/results/suite.md: what ran, how long each part took, and links to the results.
//
//   npm run bench:suite -- [--quick] [--only sweep,merged,...]
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

import { repoRoot } from '../test/helpers/paths.js';
import { nativeBench } from './lib/native-bench.js';
import { f, header, mdTable, runInfo, writeResult } from './lib/report.js';

interface Part {
  name: string;
  what: string;
  results: string[];
  run: (quick: boolean) => number;
}

const root = repoRoot();
const node = (script: string, ...args: string[]) => (quick: boolean) =>
  spawnSync(process.execPath, [join(root, 'dist', 'bench', script), ...args, ...(quick ? ['--quick'] : [])], { stdio: 'inherit', cwd: root }).status ?? 1;

const PARTS: Part[] = [
  {
    name: 'memory',
    what: 'expert memory at V2-Lite geometry: padded vs page-mapped vs merged (F_mem)',
    results: ['memory-layout.md'],
    run: () => spawnSync(nativeBench('memory_layout'), [join(root, 'bench', 'results', 'memory-layout.md'), join(root, '..', 'shared', 'data', 'esft', 'expert_configs')], { stdio: 'inherit', cwd: root }).status ?? 1,
  },
  { name: 'sweep', what: '1. TTFT/TPOT/throughput vs adapters in the mix (0/1/5/10/20)', results: ['adapter-sweep.md', 'adapter-sweep.svg'], run: node('adapter-sweep.js') },
  { name: 'merged', what: '2. one daemon with N adapters vs N merged daemons: throughput, latency, RSS, adapters per memory budget', results: ['merged.md', 'merged-throughput.svg', 'memory-vs-adapters.svg'], run: node('merged.js') },
  { name: 'reroute', what: '3. fused vs unfused reroute vs router alone, as a share of a decode step; mixed-adapter step vs base', results: ['reroute.md', 'reroute.svg'], run: node('reroute.js') },
  { name: 'residency', what: '4. working set > --adapter-pool-bytes: miss vs hit TTFT, base traffic during loads', results: ['residency.md', 'residency.svg'], run: node('residency.js') },
  { name: 'overhead', what: '5. daemon streaming tok/s vs engine alone at 32 and 128 streams, with the time breakdown', results: ['overhead.md', 'overhead.svg', 'overhead.json'], run: node('overhead.js') },
  { name: 'overhead-sse', what: '5. the same over OpenAI streaming completions (SSE, one connection per stream)', results: ['overhead-sse.md', 'overhead-sse.svg', 'overhead-sse.json'], run: node('overhead.js', '--sse', '1') },
];

const argv = process.argv.slice(2);
const quick = argv.includes('--quick');
const onlyAt = argv.indexOf('--only');
const only = onlyAt === -1 ? undefined : new Set((argv[onlyAt + 1] ?? '').split(','));
for (const n of only ?? []) if (!PARTS.some((p) => p.name === n)) throw new Error(`--only: no part named '${n}' (parts: ${PARTS.map((p) => p.name).join(', ')})`);
const info = runInfo();
const rows: string[][] = [];
let failed = 0;
const t0 = performance.now();
for (const p of PARTS) {
  if (only && !only.has(p.name)) continue;
  console.log(`\n===== bench:suite: ${p.name} (${p.what}) =====`);
  const start = performance.now();
  const status = p.run(quick);
  const s = (performance.now() - start) / 1000;
  if (status !== 0) failed++;
  rows.push([p.name, p.what, status === 0 ? 'ok' : `FAILED (exit ${status})`, f(s, 0), p.results.map((r) => `[${r}](${r})`).join(', ')]);
  console.log(`===== ${p.name}: ${status === 0 ? 'ok' : 'FAILED'} in ${f(s, 0)} s =====`);
}
const total = (performance.now() - t0) / 1000;
const md = [
  `# Benchmark suite run (bench/suite.ts, \`npm run bench:suite${quick ? ' -- --quick' : ''}\`)`,
  '',
  ...header(info),
  `- total ${f(total / 60, 1)} min${quick ? ' (quick: development-sized runs, not figures)' : ''}`,
  '',
  mdTable(['part', 'what', 'status', 'seconds', 'results'], rows, ['l', 'l', 'l', 'r', 'l']),
  '',
].join('\n');
console.log(md);
if (!only) writeResult('suite.md', md);
process.exit(failed === 0 ? 0 : 1);
