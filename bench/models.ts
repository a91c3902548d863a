// The random benchmark models (generated once under the git-ignored bench/.models/,
// named by a hash of their config so a changed shape makes a new one) and the
// bytes one decode step reads, shared by the benchmarks.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { buildConfig, type DeepseekV2Config } from '../tools/fixtures/config.js';
import { familyOf, moeLayers, presetConfig, type FixtureConfig, type Qwen3MoeConfig } from '../tools/fixtures/families.js';
import { makeModel } from '../tools/fixtures/model.js';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const MODELS_DIR = join(ROOT, 'bench', '.models');

/** V2-Lite's structure (layer 0 dense, 64 experts top-6, 2 shared, q_lora_rank null, yarn),
 * scaled down so one step takes well under a second on 2 cores. */
export const V2_SHAPED: DeepseekV2Config = buildConfig('v2Lite', {
  vocab_size: 32000,
  hidden_size: 1024,
  num_hidden_layers: 4,
  intermediate_size: 2816,
  moe_intermediate_size: 352,
  num_attention_heads: 8,
  num_key_value_heads: 8,
  kv_lora_rank: 256,
  qk_nope_head_dim: 64,
  qk_rope_head_dim: 32,
  v_head_dim: 64,
  max_position_embeddings: 8192,
  rope_scaling: {
    type: 'yarn',
    factor: 4,
    original_max_position_embeddings: 2048,
    beta_fast: 32,
    beta_slow: 1,
    mscale: 0.707,
    mscale_all_dim: 0.707,
  },
  bos_token_id: 0,
  eos_token_id: 1,
});

/** Every width of V2-Lite (vocabulary, hidden, experts, attention) with 3 layers instead of 27:
 * 3.3 GB of bf16, far past any last-level cache, read ~0.8 GB per decode step. */
export const V2_LITE_WIDTH: DeepseekV2Config = buildConfig('v2Lite', { num_hidden_layers: 3 });

/**
 * Qwen3-30B-A3B's structure (GQA 16/2 heads of 128 with q/k norms, 128 experts top-8 of
 * moe_intermediate_size 384, no shared experts) scaled so a decode step on 2 cores takes
 * well under a second: hidden 1024, 4 layers, vocab 32000 (1.2 GB of bf16).
 */
export const QWEN3_SHAPED: Qwen3MoeConfig = presetConfig('qwen3A3bShaped');

function modelDir(prefix: string, cfg: FixtureConfig): string {
  return join(MODELS_DIR, `${prefix}-${createHash('sha256').update(JSON.stringify(cfg)).digest('hex').slice(0, 12)}`);
}

/** The directory of a bf16 random model of `cfg` (any family), generated on first use. */
export function ensureBenchModel(prefix: string, cfg: FixtureConfig): string {
  const dir = modelDir(prefix, cfg);
  if (existsSync(join(dir, 'config.json'))) return dir;
  const tmp = dir + '.tmp';
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(dirname(tmp), { recursive: true });
  console.log(`generating the benchmark model in ${dir} (once) ...`);
  makeModel(tmp, cfg, { dtype: 'bf16', seed: 1 });
  renameSync(tmp, dir); // config.json appears only once everything is written
  return dir;
}

/** KV cache values one token stores per layer: MLA's latent (c_kv + rotated k_pe) or GQA's keys and values. */
export function kvValuesPerTokenLayer(c: FixtureConfig): number {
  if ('kv_lora_rank' in c) return c.kv_lora_rank + c.qk_rope_head_dim;
  const headDim = c.head_dim ?? Math.floor(c.hidden_size / c.num_attention_heads);
  return 2 * c.num_key_value_heads * headDim;
}

/**
 * Bytes one decode step reads, from the checkpoint's own tensor list (any family): every
 * non-expert weight once (attention, norms, dense MLPs, routers, shared experts, final
 * norm, lm_head), the embedding rows of the step's tokens, each distinct routed expert
 * touched, and the KV cache of every sequence. Multi-token-prediction layers are not read.
 */
export function decodeStepBytes(
  c: FixtureConfig,
  opts: { tokens: number; distinctExpertsPerMoeLayer: number; contexts: number[]; bytesPerWeight: number; kvBytesPerValue: number },
): number {
  const f = familyOf(c);
  const layers = f.layers(c);
  const moe = moeLayers(c);
  const expertNames = new Set(moe.flatMap((l) => Array.from({ length: f.routedExperts(c) }, (_, e) => f.expertPlan(c, l, e).map((t) => t.name)).flat()));
  const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
  let bytes = 0;
  let expertBytes = 0;
  let tied = true;
  for (const t of f.plan(c)) {
    const m = /^model\.layers\.(\d+)\./.exec(t.name);
    if (m && Number(m[1]) >= layers) continue; // MTP
    const size = numel(t.shape) * (t.f32 ? 4 : opts.bytesPerWeight);
    if (t.name === 'model.embed_tokens.weight') bytes += opts.tokens * t.shape[1] * opts.bytesPerWeight;
    else if (expertNames.has(t.name)) expertBytes = size; // every expert matrix has its layer's size
    else bytes += size;
    if (t.name === 'lm_head.weight') tied = false;
  }
  if (tied) bytes += c.vocab_size * c.hidden_size * opts.bytesPerWeight; // lm_head reads the whole embedding
  bytes += moe.length * opts.distinctExpertsPerMoeLayer * 3 * expertBytes;
  const kvValues = opts.contexts.reduce((s, n) => s + n, 0) * kvValuesPerTokenLayer(c) * layers;
  return bytes + kvValues * opts.kvBytesPerValue;
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Deterministic prompt tokens (ids 2.., away from BOS/EOS 0 and 1). */
export function promptTokens(seed: number, n: number, vocab: number): number[] {
  let x = seed * 2654435761 + 12345;
  return Array.from({ length: n }, () => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return 2 + (x % (vocab - 2));
  });
}
