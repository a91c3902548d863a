// The float64 reference of Mixtral (HF transformers modeling_mixtral.py,
// MixtralForCausalLM): GQA without q/k norms, rotate_half RoPE (gqa.ts), no biases; every
// layer is MoE (block_sparse_moe) with num_local_experts experts of width intermediate_size,
// named w1 (gate), w3 (up), w2 (down): expert(x) = w2 · (silu(w1·x) * (w3·x)); no shared experts.
// Routing (MixtralSparseMoeBlock): p = softmax(W_gate·x); ids = top-k(p); w = p[ids] / sum(p[ids])
//   (always renormalised over the chosen; no epsilon, no scaling factor).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { loadWeights, type ExpertLayout, type Weights } from './checkpoint.js';
import { ConfigKeys } from './config-keys.js';
import { DecoderReference, mixExperts, swiglu, type LayerCache, type ReferenceOptions } from './decoder.js';
import { gqaAttention, type GqaDims } from './gqa.js';
import { matvec } from './ops.js';
import { ropeFrequencies, type RopeTable } from './rope.js';
import { routerScores, selectExperts, type RouterSpec } from './routing.js';

export interface MixtralConfig {
  vocab: number;
  hidden: number;
  layers: number;
  /** One expert's width. */
  intermediate: number;
  nExperts: number;
  topK: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  ropeTheta: number;
  eps: number;
  tieWordEmbeddings: boolean;
}

export function parseMixtralConfig(text: string, origin = 'config.json'): MixtralConfig {
  const k = new ConfigKeys(text, origin);
  k.modelType('mixtral');
  k.only('hidden_act', ['silu']);
  k.only('sliding_window', [null], 'is not supported (sliding-window attention)');
  k.only('rope_scaling', [null], 'is not supported (plain RoPE only)');
  const heads = k.int('num_attention_heads');
  const hidden = k.int('hidden_size');
  const cfg: MixtralConfig = {
    vocab: k.int('vocab_size'),
    hidden,
    layers: k.int('num_hidden_layers'),
    intermediate: k.int('intermediate_size'),
    nExperts: k.int('num_local_experts'),
    topK: k.intOr('num_experts_per_tok', 2),
    heads,
    kvHeads: k.int('num_key_value_heads'),
    headDim: k.intOr('head_dim', Math.floor(hidden / heads)),
    ropeTheta: k.numOr('rope_theta', 1e6),
    eps: k.numOr('rms_norm_eps', 1e-5),
    tieWordEmbeddings: k.boolOr('tie_word_embeddings', false),
  };
  if (cfg.heads % cfg.kvHeads !== 0) k.fail('num_key_value_heads', `must divide num_attention_heads ${cfg.heads}`);
  if (cfg.headDim % 2 !== 0) k.fail('head_dim', 'must be even (rotate_half RoPE)');
  if (cfg.topK > cfg.nExperts) k.fail('num_experts_per_tok', `exceeds num_local_experts ${cfg.nExperts}`);
  return cfg;
}

export function routerSpec(cfg: MixtralConfig): RouterSpec {
  return { scoring: 'softmax', topK: cfg.topK, method: 'greedy', nGroup: 1, topkGroup: 1, normalize: true, normEps: 0, scale: 1 };
}

export function gqaDims(cfg: MixtralConfig): GqaDims {
  return { hidden: cfg.hidden, heads: cfg.heads, kvHeads: cfg.kvHeads, headDim: cfg.headDim, eps: cfg.eps, qkNorm: false };
}

const expertNames = (l: number, e: number) => {
  const p = `model.layers.${l}.block_sparse_moe.experts.${e}`;
  return { gate: `${p}.w1.weight`, up: `${p}.w3.weight`, down: `${p}.w2.weight` };
};

export function expertLayout(cfg: MixtralConfig): ExpertLayout {
  const { hidden: H, intermediate: I } = cfg;
  return {
    layers: cfg.layers,
    nRouted: cfg.nExperts,
    isMoeLayer: (l) => l >= 0 && l < cfg.layers,
    expertTensors: (l, e) => {
      const n = expertNames(l, e);
      return [{ name: n.gate, shape: [I, H] }, { name: n.up, shape: [I, H] }, { name: n.down, shape: [H, I] }];
    },
  };
}

export class MixtralReference extends DecoderReference {
  private readonly rope: RopeTable;
  private readonly router: RouterSpec;

  constructor(readonly cfg: MixtralConfig, w: Weights) {
    super(w, { vocab: cfg.vocab, hidden: cfg.hidden, layers: cfg.layers, eps: cfg.eps, tieWordEmbeddings: cfg.tieWordEmbeddings });
    this.rope = ropeFrequencies({ dim: cfg.headDim, theta: cfg.ropeTheta, scaling: null });
    this.router = routerSpec(cfg);
  }

  static load(dir: string, opts: ReferenceOptions = {}): MixtralReference {
    const path = join(dir, 'config.json');
    const cfg = parseMixtralConfig(readFileSync(path, 'utf8'), path);
    return new MixtralReference(cfg, loadWeights(dir, expertLayout(cfg), opts));
  }

  protected override attention(l: number, xs: Float64Array[], start: number, cache: LayerCache): Float64Array[] {
    return gqaAttention(this.w, `model.layers.${l}.self_attn`, gqaDims(this.cfg), this.rope, xs, start, cache);
  }

  protected override ffn(l: number, x: Float64Array, margins: number[]): Float64Array {
    const c = this.cfg;
    const p = `model.layers.${l}.block_sparse_moe`;
    const logits = matvec(this.w.get(`${p}.gate.weight`, [c.nExperts, c.hidden]), c.nExperts, c.hidden, x);
    const r = selectExperts(routerScores(logits, 'softmax'), this.router);
    margins.push(r.margin);
    return mixExperts(r, (e) => swiglu(this.w, expertNames(l, e), c.hidden, c.intermediate, x), c.hidden);
  }
}
