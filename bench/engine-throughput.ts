// Engine throughput on a DeepSeek-V2-shaped bf16 model sized for a small CPU host:
// prefill and decode tokens/s at batch 1 and 16, decode step time, the weight bytes a
// decode step reads, and that as a share of the measured memory read bandwidth.
// The model is generated once (random weights) under bench/.models/.
// Prints a table; writes bench/results/engine-throughput.json.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join, relative } from 'node:path';

import { loadBinding } from '../lib/engine/binding.js';
import { Engine, type ChunkSpec } from '../lib/engine/engine.js';
import type { DeepseekV2Config } from '../tools/fixtures/config.js';
import { ROOT, V2_SHAPED, decodeStepBytes as stepBytes, ensureBenchModel, median, promptTokens } from './models.js';

const CONFIG = V2_SHAPED;
const PROMPT = 128;
const BATCH = 16;
const BYTES_PER_WEIGHT = 2; // bf16
const KV_BYTES_PER_VALUE = 4; // the latent KV cache is fp32

const ensureModel = () => ensureBenchModel('v2-shaped', CONFIG);

function decodeStepBytes(c: DeepseekV2Config, tokens: number, distinctExpertsPerMoeLayer: number, contexts: number[]): number {
  return stepBytes(c, { tokens, distinctExpertsPerMoeLayer, contexts, bytesPerWeight: BYTES_PER_WEIGHT, kvBytesPerValue: KV_BYTES_PER_VALUE });
}

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await fn();
  return [r, performance.now() - t0];
}

async function main(): Promise<void> {
  const dir = ensureModel();
  const binding = loadBinding();
  const bandwidthGBs = await binding.measureMemoryBandwidth();
  const engine = await Engine.load(dir, { device: 'cpu', kvCacheTokens: (BATCH + 2) * (PROMPT + 64) });
  const V = engine.info.vocabSize;
  const prefillChunks = (ids: number[]): ChunkSpec[] => ids.map((seqId) => ({ seqId, tokens: promptTokens(seqId, PROMPT, V) }));
  const freeAll = (ids: number[]) => ids.forEach((id) => engine.freeSequence(id));
  const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

  // Prefill, batch 1: median of 3 fresh prompts.
  const prefill1: number[] = [];
  for (let rep = 0; rep < 3; rep++) {
    const [, ms] = await timed(() => engine.step(prefillChunks([100 + rep])));
    prefill1.push(ms);
    freeAll([100 + rep]);
  }

  // Decode, batch 1: one sequence, 2 warm-up steps, then 16 timed steps.
  let out = await engine.step(prefillChunks([1]));
  const decode1: number[] = [];
  for (let i = 0; i < 18; i++) {
    const [o, ms] = await timed(() => engine.step([{ seqId: 1, tokens: [out.tokens[0]] }]));
    out = o;
    if (i >= 2) decode1.push(ms);
  }
  const context1 = engine.sequenceLength(1);
  freeAll([1]);

  // Prefill, batch 16 (one step of 16 x 128 tokens), then decode the same 16 sequences.
  const seqs = range(200, BATCH);
  const [first, prefill16Ms] = await timed(() => engine.step(prefillChunks(seqs)));
  let last = first.tokens;
  const decode16: number[] = [];
  for (let i = 0; i < 10; i++) {
    const [o, ms] = await timed(() => engine.step(seqs.map((seqId, j) => ({ seqId, tokens: [last[j]] }))));
    last = o.tokens;
    if (i >= 2) decode16.push(ms);
  }
  const contexts16 = seqs.map((id) => engine.sequenceLength(id));
  freeAll(seqs);
  engine.close();

  // Routed experts one decode step reads per MoE layer: exactly k at batch 1; at batch B
  // at most min(M, B*k) (the engine does not report routing; uniform routing would touch
  // M*(1-(1-k/M)^B) on average, fewer than the bound).
  const M = CONFIG.n_routed_experts;
  const k = CONFIG.num_experts_per_tok;
  const bound16 = Math.min(M, BATCH * k);
  const uniform16 = M * (1 - (1 - k / M) ** BATCH);
  const row = (batch: number, stepMs: number, experts: number, contexts: number[]) => {
    const bytes = decodeStepBytes(CONFIG, batch, experts, contexts);
    const achievedGBs = bytes / (stepMs / 1000) / 1e9;
    return {
      batch,
      stepMs,
      tokensPerS: (batch * 1000) / stepMs,
      distinctExpertsPerLayer: experts,
      bytesPerStep: bytes,
      achievedGBs,
      percentOfMeasured: bandwidthGBs > 0 ? (100 * achievedGBs) / bandwidthGBs : null,
    };
  };
  const decode16Note = `experts per layer is the upper bound min(M, B*k); uniform routing expects ${uniform16.toFixed(1)}`;
  const results = {
    date: new Date().toISOString(),
    machine: { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, node: process.version },
    model: { dir: relative(ROOT, dir), config: CONFIG, expertDtype: engine.info.expertDtype },
    measuredReadBandwidthGBs: bandwidthGBs,
    prefill: [
      { batch: 1, tokens: PROMPT, stepMs: median(prefill1), tokensPerS: (PROMPT * 1000) / median(prefill1) },
      { batch: BATCH, tokens: PROMPT * BATCH, stepMs: prefill16Ms, tokensPerS: (PROMPT * BATCH * 1000) / prefill16Ms },
    ],
    decode: [
      row(1, median(decode1), k, [context1]),
      { ...row(BATCH, median(decode16), bound16, contexts16), note: decode16Note },
    ],
  };

  const mb = (b: number) => (b / 1e6).toFixed(1);
  const lines = [
    `Engine throughput, ${results.machine.cpu} (${results.machine.cores} threads), model H=${CONFIG.hidden_size} L=${CONFIG.num_hidden_layers} M=${M} k=${k} bf16`,
    `Measured memory read bandwidth: ${bandwidthGBs.toFixed(1)} GB/s`,
    '',
    'phase    batch  tokens/step  step ms   tokens/s   experts/layer  MB read/step  GB/s achieved  % of measured',
    ...results.prefill.map(
      (p) => `prefill  ${String(p.batch).padStart(5)}  ${String(p.tokens).padStart(11)}  ${p.stepMs.toFixed(1).padStart(7)}  ${p.tokensPerS.toFixed(1).padStart(9)}`,
    ),
    ...results.decode.map(
      (d) =>
        `decode   ${String(d.batch).padStart(5)}  ${String(d.batch).padStart(11)}  ${d.stepMs.toFixed(1).padStart(7)}  ${d.tokensPerS.toFixed(1).padStart(9)}` +
        `  ${String(d.distinctExpertsPerLayer).padStart(13)}  ${mb(d.bytesPerStep).padStart(12)}  ${d.achievedGBs.toFixed(2).padStart(13)}  ${(d.percentOfMeasured?.toFixed(1) ?? 'n/a').padStart(12)}%`,
    ),
    '',
    `decode batch ${BATCH}: ${decode16Note}, so its bandwidth figures are upper bounds.`,
  ];
  console.log(lines.join('\n'));
  mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
  writeFileSync(join(ROOT, 'bench', 'results', 'engine-throughput.json'), JSON.stringify(results, null, 2) + '\n');
}

await main();
