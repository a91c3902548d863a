// Fused router + top-k + reroute vs router + top-k alone (route_tokens_cpu with and
// without the reroute table), DeepSeek-V2-Lite router shape: H=2048, M=64, k=6.
// Writes bench/results/router-reroute.md.
import { mkdirSync, writeFileSync } from 'node:fs';
import { Bench } from 'tinybench';

import { loadBenchBinding } from '../lib/engine/binding.js';

const HIDDEN = 2048;
const EXPERTS = 64;
const TOP_K = 6;
const TOKENS = [1, 2, 4, 8, 16, 32, 64, 128, 256];
const ADAPTERS = [0, 1, 4, 20];

const binding = loadBenchBinding();
const bench = new Bench({ time: 150, warmupTime: 30 });
for (const tokens of TOKENS) {
  for (const adapters of ADAPTERS) {
    const rb = binding.createRouterBench({ hidden: HIDDEN, experts: EXPERTS, topK: TOP_K, tokens, adapters });
    bench.add(`T=${tokens} A=${adapters} alone`, () => rb.run(false));
    bench.add(`T=${tokens} A=${adapters} fused`, () => rb.run(true));
  }
}
await bench.run();

function meanUs(name: string): number {
  const task = bench.getTask(name);
  const r = task?.result;
  if (!r || !('latency' in r)) throw new Error(`router bench: task ${name} has no result`);
  return r.latency.mean * 1000;
}

const lines = [
  '# Router + reroute micro-benchmark (CPU)',
  '',
  `route_tokens_cpu, H=${HIDDEN}, M=${EXPERTS}, k=${TOP_K}, bf16 router weight, fp32 logits.`,
  '"alone": logits + softmax + top-k; "fused": the same pass also writing slot = table[row*M + id]',
  '(tokens cycle over the base row and the adapter rows). Mean latency per call, microseconds.',
  `Node ${process.version}, ${new Date().toISOString()}.`,
  '',
  '| tokens | adapters | router+top-k (us) | fused +reroute (us) | overhead |',
  '| ---: | ---: | ---: | ---: | ---: |',
];
for (const tokens of TOKENS) {
  for (const adapters of ADAPTERS) {
    const alone = meanUs(`T=${tokens} A=${adapters} alone`);
    const fused = meanUs(`T=${tokens} A=${adapters} fused`);
    const pct = ((fused - alone) / alone) * 100;
    lines.push(`| ${tokens} | ${adapters} | ${alone.toFixed(2)} | ${fused.toFixed(2)} | ${pct.toFixed(1)}% |`);
  }
}
const text = lines.join('\n') + '\n';
mkdirSync('bench/results', { recursive: true });
writeFileSync('bench/results/router-reroute.md', text);
console.log(text);
