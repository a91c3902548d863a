// The float64 reference of Qwen3-MoE (HF transformers modeling_qwen3_moe.py,
// Qwen3MoeForCausalLM): GQA with head_dim and per-head q_norm/k_norm before rotate_half
// RoPE (gqa.ts), no biases; no shared experts. Layer l is MoE unless it is listed in
// mlp_only_layers, when num_experts > 0 and (l + 1) % decoder_sparse_step == 0; other
// layers are a dense MLP of intermediate_size.
// Routing (Qwen3MoeSparseMoeBlock): p = softmax(W_gate·x); ids = top-k(p); w = p[ids];
//   norm_topk_prob: w /= sum(w) (no epsilon, also for k = 1); no scaling factor.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { loadWeights, mlpNames } from './checkpoint.js';
import { ConfigKeys } from './config-keys.js';
import type { ReferenceOptions } from './decoder.js';
import { GqaMoeReference, gqaMoeExperts, gqaShape, parseGqaCommon, type GqaCommonConfig, type GqaMoeLayout } from './gqa.js';
import type { RouterSpec } from './routing.js';

export interface Qwen3MoeConfig extends GqaCommonConfig {
  intermediate: number;
  moeIntermediate: number;
  nExperts: number;
  topK: number;
  normTopkProb: boolean;
  decoderSparseStep: number;
  mlpOnlyLayers: number[];
}

export function parseQwen3MoeConfig(text: string, origin = 'config.json'): Qwen3MoeConfig {
  const k = new ConfigKeys(text, origin);
  k.modelType('qwen3_moe');
  k.only('attention_bias', [false]);
  k.only('use_sliding_window', [false], 'is not supported (sliding-window attention)');
  const mlpOnly = k.c.mlp_only_layers ?? [];
  if (!Array.isArray(mlpOnly) || !mlpOnly.every((l) => Number.isSafeInteger(l) && l >= 0)) k.fail('mlp_only_layers', 'must be a list of layer indices');
  const cfg: Qwen3MoeConfig = {
    ...parseGqaCommon(k, { ropeTheta: 10000, eps: 1e-6 }),
    intermediate: k.int('intermediate_size'),
    moeIntermediate: k.int('moe_intermediate_size'),
    nExperts: k.countOr('num_experts', 0),
    topK: k.countOr('num_experts_per_tok', 0),
    normTopkProb: k.boolOr('norm_topk_prob', false),
    decoderSparseStep: k.intOr('decoder_sparse_step', 1),
    mlpOnlyLayers: mlpOnly as number[],
  };
  if (cfg.nExperts > 0 && (cfg.topK < 1 || cfg.topK > cfg.nExperts)) k.fail('num_experts_per_tok', `must be in [1, num_experts ${cfg.nExperts}]`);
  return cfg;
}

export function isMoeLayer(cfg: Qwen3MoeConfig, l: number): boolean {
  return cfg.nExperts > 0 && l < cfg.layers && !cfg.mlpOnlyLayers.includes(l) && (l + 1) % cfg.decoderSparseStep === 0;
}

export function routerSpec(cfg: Qwen3MoeConfig): RouterSpec {
  return { scoring: 'softmax', topK: cfg.topK, method: 'greedy', nGroup: 1, topkGroup: 1, normalize: cfg.normTopkProb, normEps: 0, scale: 1 };
}

/** The Qwen3-MoE instance of the GQA + MoE decoder. */
export function qwen3Layout(cfg: Qwen3MoeConfig): GqaMoeLayout {
  return {
    ...gqaShape(cfg, true),
    router: routerSpec(cfg),
    nExperts: cfg.nExperts,
    expertWidth: cfg.moeIntermediate,
    denseWidth: cfg.intermediate,
    isMoeLayer: (l) => isMoeLayer(cfg, l),
    routerName: (l) => `model.layers.${l}.mlp.gate.weight`,
    expertNames: (l, e) => mlpNames(`model.layers.${l}.mlp.experts.${e}`),
    denseNames: (l) => mlpNames(`model.layers.${l}.mlp`),
  };
}

export class Qwen3MoeReference extends GqaMoeReference {
  static load(dir: string, opts: ReferenceOptions = {}): Qwen3MoeReference {
    const path = join(dir, 'config.json');
    const layout = qwen3Layout(parseQwen3MoeConfig(readFileSync(path, 'utf8'), path));
    return new Qwen3MoeReference(layout, loadWeights(dir, gqaMoeExperts(layout), opts), opts);
  }
}
