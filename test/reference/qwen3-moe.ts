// The float64 reference of Qwen3-MoE (HF transformers modeling_qwen3_moe.py,
// Qwen3MoeForCausalLM): GQA with head_dim and per-head q_norm/k_norm before rotate_half
// RoPE (gqa.ts), no biases; no shared experts. Layer l is MoE unless it is listed in
// mlp_only_layers, when num_experts > 0 and (l + 1) % decoder_sparse_step == 0; other
// layers are a dense MLP of intermediate_size.
// Routing (Qwen3MoeSparseMoeBlock): p = softmax(W_gate·x); ids = top-k(p); w = p[ids];
//   norm_topk_prob: w /= sum(w) (no epsilon, also for k = 1); no scaling factor.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { loadWeights, type ExpertLayout, type Weights } from './checkpoint.js';
import { ConfigKeys } from './config-keys.js';
import { DecoderReference, mixExperts, swiglu, type LayerCache, type ReferenceOptions } from './decoder.js';
import { gqaAttention, type GqaDims } from './gqa.js';
import { matvec } from './ops.js';
import { ropeFrequencies, type RopeTable } from './rope.js';
import { routerScores, selectExperts, type RouterSpec } from './routing.js';

export interface Qwen3MoeConfig {
  vocab: number;
  hidden: number;
  layers: number;
  intermediate: number;
  moeIntermediate: number;
  nExperts: number;
  topK: number;
  normTopkProb: boolean;
  decoderSparseStep: number;
  mlpOnlyLayers: number[];
  heads: number;
  kvHeads: number;
  headDim: number;
  ropeTheta: number;
  eps: number;
  tieWordEmbeddings: boolean;
}

export function parseQwen3MoeConfig(text: string, origin = 'config.json'): Qwen3MoeConfig {
  const k = new ConfigKeys(text, origin);
  k.modelType('qwen3_moe');
  k.only('hidden_act', ['silu']);
  k.only('attention_bias', [false]);
  k.only('use_sliding_window', [false], 'is not supported (sliding-window attention)');
  k.only('rope_scaling', [null], 'is not supported (plain RoPE only)');
  const heads = k.int('num_attention_heads');
  const hidden = k.int('hidden_size');
  const mlpOnly = k.c.mlp_only_layers ?? [];
  if (!Array.isArray(mlpOnly) || !mlpOnly.every((l) => Number.isSafeInteger(l) && l >= 0)) k.fail('mlp_only_layers', 'must be a list of layer indices');
  const cfg: Qwen3MoeConfig = {
    vocab: k.int('vocab_size'),
    hidden,
    layers: k.int('num_hidden_layers'),
    intermediate: k.int('intermediate_size'),
    moeIntermediate: k.int('moe_intermediate_size'),
    nExperts: k.countOr('num_experts', 0),
    topK: k.countOr('num_experts_per_tok', 0),
    normTopkProb: k.boolOr('norm_topk_prob', false),
    decoderSparseStep: k.intOr('decoder_sparse_step', 1),
    mlpOnlyLayers: mlpOnly as number[],
    heads,
    kvHeads: k.int('num_key_value_heads'),
    headDim: k.intOr('head_dim', Math.floor(hidden / heads)),
    ropeTheta: k.numOr('rope_theta', 10000),
    eps: k.numOr('rms_norm_eps', 1e-6),
    tieWordEmbeddings: k.boolOr('tie_word_embeddings', false),
  };
  if (cfg.heads % cfg.kvHeads !== 0) k.fail('num_key_value_heads', `must divide num_attention_heads ${cfg.heads}`);
  if (cfg.headDim % 2 !== 0) k.fail('head_dim', 'must be even (rotate_half RoPE)');
  if (cfg.nExperts > 0 && (cfg.topK < 1 || cfg.topK > cfg.nExperts)) k.fail('num_experts_per_tok', `must be in [1, num_experts ${cfg.nExperts}]`);
  return cfg;
}

export function isMoeLayer(cfg: Qwen3MoeConfig, l: number): boolean {
  return cfg.nExperts > 0 && l < cfg.layers && !cfg.mlpOnlyLayers.includes(l) && (l + 1) % cfg.decoderSparseStep === 0;
}

export function routerSpec(cfg: Qwen3MoeConfig): RouterSpec {
  return { scoring: 'softmax', topK: cfg.topK, method: 'greedy', nGroup: 1, topkGroup: 1, normalize: cfg.normTopkProb, normEps: 0, scale: 1 };
}

export function gqaDims(cfg: Qwen3MoeConfig): GqaDims {
  return { hidden: cfg.hidden, heads: cfg.heads, kvHeads: cfg.kvHeads, headDim: cfg.headDim, eps: cfg.eps, qkNorm: true };
}

const mlpNames = (prefix: string) => ({ gate: `${prefix}.gate_proj.weight`, up: `${prefix}.up_proj.weight`, down: `${prefix}.down_proj.weight` });

export function expertLayout(cfg: Qwen3MoeConfig): ExpertLayout {
  const { hidden: H, moeIntermediate: I } = cfg;
  return {
    layers: cfg.layers,
    nRouted: cfg.nExperts,
    isMoeLayer: (l) => isMoeLayer(cfg, l),
    expertTensors: (l, e) => {
      const n = mlpNames(`model.layers.${l}.mlp.experts.${e}`);
      return [{ name: n.gate, shape: [I, H] }, { name: n.up, shape: [I, H] }, { name: n.down, shape: [H, I] }];
    },
  };
}

export class Qwen3MoeReference extends DecoderReference {
  private readonly rope: RopeTable;
  private readonly router: RouterSpec;

  constructor(readonly cfg: Qwen3MoeConfig, w: Weights) {
    super(w, { vocab: cfg.vocab, hidden: cfg.hidden, layers: cfg.layers, eps: cfg.eps, tieWordEmbeddings: cfg.tieWordEmbeddings });
    this.rope = ropeFrequencies({ dim: cfg.headDim, theta: cfg.ropeTheta, scaling: null });
    this.router = routerSpec(cfg);
  }

  static load(dir: string, opts: ReferenceOptions = {}): Qwen3MoeReference {
    const path = join(dir, 'config.json');
    const cfg = parseQwen3MoeConfig(readFileSync(path, 'utf8'), path);
    return new Qwen3MoeReference(cfg, loadWeights(dir, expertLayout(cfg), opts));
  }

  protected override attention(l: number, xs: Float64Array[], start: number, cache: LayerCache): Float64Array[] {
    return gqaAttention(this.w, `model.layers.${l}.self_attn`, gqaDims(this.cfg), this.rope, xs, start, cache);
  }

  protected override ffn(l: number, x: Float64Array, margins: number[]): Float64Array {
    const c = this.cfg;
    const p = `model.layers.${l}.mlp`;
    if (!isMoeLayer(c, l)) return swiglu(this.w, mlpNames(p), c.hidden, c.intermediate, x);
    const logits = matvec(this.w.get(`${p}.gate.weight`, [c.nExperts, c.hidden]), c.nExperts, c.hidden, x);
    const r = selectExperts(routerScores(logits, 'softmax'), this.router);
    margins.push(r.margin);
    return mixExperts(r, (e) => swiglu(this.w, mlpNames(`${p}.experts.${e}`), c.hidden, c.moeIntermediate, x), c.hidden);
  }
}
