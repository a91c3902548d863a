// Engine throughput on bf16 models sized for a small CPU host, one per family shape:
// DeepSeek-V2-shaped (MLA, 64 experts top-6, 2 shared) and Qwen3-30B-A3B-shaped (GQA
// 16/2 heads of 128 with q/k norms, 128 experts top-8). For each: prefill and decode
// tokens/s at batch 1 and 16, decode step time, the weight and KV bytes a decode step
// reads, and that as a share of the measured memory read bandwidth; the KV cache's bytes
// per token per layer. Each on the default CPU path (fp32 activations) and on every bf16-activation
// path this CPU has (avx512-bf16, amx), each in its own engine, one after the other; the KV
// cache is the CPU default (bf16). The models are generated once (random weights) under
// bench/.models/. Prints a table per model and path; writes bench/results/engine-throughput.json.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join, relative } from 'node:path';

import { bestFp32Path, loadBinding, roundsActivations, type CpuPath } from '../lib/engine/binding.js';
import { Engine, type ChunkSpec } from '../lib/engine/engine.js';
import type { FixtureConfig } from '../tools/fixtures/families.js';
import { QWEN3_SHAPED, ROOT, V2_SHAPED, decodeStepBytes as stepBytes, ensureBenchModel, median, promptTokens } from './models.js';

const MODELS: { key: string; title: string; config: FixtureConfig; experts: number; topK: number }[] = [
  { key: 'v2-shaped', title: 'DeepSeek-V2-shaped (MLA, 64 experts top-6, 2 shared)', config: V2_SHAPED, experts: V2_SHAPED.n_routed_experts, topK: V2_SHAPED.num_experts_per_tok },
  { key: 'qwen3-a3b-shaped', title: 'Qwen3-30B-A3B-shaped (GQA 16/2 x 128, 128 experts top-8)', config: QWEN3_SHAPED, experts: QWEN3_SHAPED.num_experts, topK: QWEN3_SHAPED.num_experts_per_tok },
];
const PROMPT = 128;
const BATCH = 16;
const BYTES_PER_WEIGHT = 2; // bf16

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await fn();
  return [r, performance.now() - t0];
}

async function measure(model: (typeof MODELS)[number], bandwidthGBs: number, cpuPath: CpuPath) {
  const dir = ensureBenchModel(model.key, model.config);
  const engine = await Engine.load(dir, { device: 'cpu', kvCacheTokens: (BATCH + 2) * (PROMPT + 64), cpuPath });
  const kvBytesPerValue = engine.info.kvCacheDtype === 'f32' ? 4 : 2;
  const V = engine.info.vocabSize;
  const prefillChunks = (ids: number[]): ChunkSpec[] => ids.map((seqId) => ({ seqId, tokens: promptTokens(seqId, PROMPT, V) }));
  const freeAll = (ids: number[]) => ids.forEach((id) => engine.freeSequence(id));
  const range = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

  // Warm-up: one untimed prefill touches the mapped weights (page faults) and the arena.
  await engine.step(prefillChunks([99]));
  freeAll([99]);

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
  const info = engine.info;
  engine.close();

  // Routed experts one decode step reads per MoE layer: exactly k at batch 1; at batch B
  // at most min(M, B*k) (the engine does not report routing; uniform routing would touch
  // M*(1-(1-k/M)^B) on average, fewer than the bound).
  const { experts: M, topK: k } = model;
  const bound16 = Math.min(M, BATCH * k);
  const uniform16 = M * (1 - (1 - k / M) ** BATCH);
  const row = (batch: number, stepMs: number, experts: number, contexts: number[]) => {
    const bytes = stepBytes(model.config, { tokens: batch, distinctExpertsPerMoeLayer: experts, contexts, bytesPerWeight: BYTES_PER_WEIGHT, kvBytesPerValue });
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
  return {
    key: model.key,
    title: model.title,
    dir: relative(ROOT, dir),
    config: model.config,
    cpuPath: info.cpuPath,
    kvCacheDtype: info.kvCacheDtype,
    expertDtype: info.expertDtype,
    attention: info.attention,
    kvBytesPerTokenPerLayer: info.kvBytesPerTokenPerLayer,
    prefill: [
      { batch: 1, tokens: PROMPT, stepMs: median(prefill1), tokensPerS: (PROMPT * 1000) / median(prefill1) },
      { batch: BATCH, tokens: PROMPT * BATCH, stepMs: prefill16Ms, tokensPerS: (PROMPT * BATCH * 1000) / prefill16Ms },
    ],
    decode: [row(1, median(decode1), k, [context1]), row(BATCH, median(decode16), bound16, contexts16)],
    decodeNote: decode16Note,
  };
}

async function main(): Promise<void> {
  const only = process.argv[2];
  const models = MODELS.filter((m) => !only || m.key === only);
  if (models.length === 0) throw new Error(`bench:engine: no model ${only}; one of ${MODELS.map((m) => m.key).join(', ')}`);
  const binding = loadBinding();
  const bandwidthGBs = await binding.measureMemoryBandwidth();
  const cpuPaths = binding.buildInfo().cpuPaths;
  const paths: CpuPath[] = [bestFp32Path(cpuPaths), ...cpuPaths.filter(roundsActivations)];
  const machine = { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, node: process.version };
  const results = [];
  for (const m of models) for (const p of paths) results.push(await measure(m, bandwidthGBs, p));

  const mb = (b: number) => (b / 1e6).toFixed(1);
  const lines = [`Engine throughput, ${machine.cpu} (${machine.cores} threads), bf16 weights`, `Measured memory read bandwidth: ${bandwidthGBs.toFixed(1)} GB/s`];
  for (const r of results) {
    const c = r.config;
    lines.push(
      '',
      `${r.title}, CPU path ${r.cpuPath}: H=${c.hidden_size} L=${c.num_hidden_layers}; ${r.kvCacheDtype} KV cache, ${r.kvBytesPerTokenPerLayer} B per token per layer (${r.attention})`,
      'phase    batch  tokens/step  step ms   tokens/s   experts/layer  MB read/step  GB/s achieved  % of measured',
      ...r.prefill.map((p) => `prefill  ${String(p.batch).padStart(5)}  ${String(p.tokens).padStart(11)}  ${p.stepMs.toFixed(1).padStart(7)}  ${p.tokensPerS.toFixed(1).padStart(9)}`),
      ...r.decode.map(
        (d) =>
          `decode   ${String(d.batch).padStart(5)}  ${String(d.batch).padStart(11)}  ${d.stepMs.toFixed(1).padStart(7)}  ${d.tokensPerS.toFixed(1).padStart(9)}` +
          `  ${String(d.distinctExpertsPerLayer).padStart(13)}  ${mb(d.bytesPerStep).padStart(12)}  ${d.achievedGBs.toFixed(2).padStart(13)}  ${(d.percentOfMeasured?.toFixed(1) ?? 'n/a').padStart(12)}%`,
      ),
      `decode batch ${BATCH}: ${r.decodeNote}, so its bandwidth figures are upper bounds.`,
    );
  }
  console.log(lines.join('\n'));
  mkdirSync(join(ROOT, 'bench', 'results'), { recursive: true });
  const file = join(ROOT, 'bench', 'results', 'engine-throughput.json');
  writeFileSync(file, JSON.stringify({ date: new Date().toISOString(), machine, measuredReadBandwidthGBs: bandwidthGBs, models: results }, null, 2) + '\n');
}

await main();
