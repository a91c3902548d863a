// The random benchmark models (generated once under the git-ignored bench/.models/,
// named by a hash of their config so a changed shape makes a new one) and the
// bytes one decode step reads, shared by the benchmarks.
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { buildConfig, type DeepseekV2Config } from '../tools/fixtures/config.js';
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

function modelDir(prefix: string, cfg: DeepseekV2Config): string {
  return join(MODELS_DIR, `${prefix}-${createHash('sha256').update(JSON.stringify(cfg)).digest('hex').slice(0, 12)}`);
}

/** The directory of a bf16 random model of `cfg`, generated on first use. */
export function ensureBenchModel(prefix: string, cfg: DeepseekV2Config): string {
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

/**
 * Bytes one decode step reads: every non-expert weight once (attention, norms, dense
 * MLP, routers, shared experts, final norm, lm_head), the embedding rows of the step's
 * tokens, each distinct routed expert touched, and the KV cache of every sequence.
 */
export function decodeStepBytes(
  c: DeepseekV2Config,
  opts: { tokens: number; distinctExpertsPerMoeLayer: number; contexts: number[]; bytesPerWeight: number; kvBytesPerValue: number },
): number {
  const H = c.hidden_size;
  const qHead = c.qk_nope_head_dim + c.qk_rope_head_dim;
  const q = c.q_lora_rank ? c.q_lora_rank * H + c.q_lora_rank + c.num_attention_heads * qHead * c.q_lora_rank : c.num_attention_heads * qHead * H;
  const attention =
    q +
    (c.kv_lora_rank + c.qk_rope_head_dim) * H +
    c.kv_lora_rank +
    c.num_attention_heads * (c.qk_nope_head_dim + c.v_head_dim) * c.kv_lora_rank +
    H * c.num_attention_heads * c.v_head_dim +
    2 * H;
  const expert = 3 * H * c.moe_intermediate_size;
  let weights = H + c.vocab_size * H + opts.tokens * H; // final norm, lm_head, embedding rows
  for (let l = 0; l < c.num_hidden_layers; l++) {
    weights += attention;
    const moe = l >= c.first_k_dense_replace && l % c.moe_layer_freq === 0;
    weights += moe
      ? c.n_routed_experts * H + (c.n_shared_experts ?? 0) * expert + opts.distinctExpertsPerMoeLayer * expert
      : 3 * H * c.intermediate_size;
  }
  const kvValues = opts.contexts.reduce((s, n) => s + n, 0) * (c.kv_lora_rank + c.qk_rope_head_dim) * c.num_hidden_layers;
  return weights * opts.bytesPerWeight + kvValues * opts.kvBytesPerValue;
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
