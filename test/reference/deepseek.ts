// The float64 reference of the DeepSeek-V2 and DeepSeek-V3 architectures (HF
// modeling_deepseek.py of each release; transformers' modeling_deepseek_v3.py), which
// differ only in routing. Both: MLA attention (plain, non-absorbed formulation, K and V
// expanded per head), the interleaved RoPE layout, yarn; dense MLP on the first
// first_k_dense_replace layers, MoE with shared experts elsewhere.
//
// Routing, V2 (MoEGate, topk_method greedy / group_limited_greedy):
//   p = softmax(W_gate·x); ids = top-k(p) (groups ranked by their best p);
//   w = p[ids]; if k > 1 and norm_topk_prob: w /= sum(w) + 1e-20, else w *= routed_scaling_factor.
// Routing, V3 (MoEGate, topk_method noaux_tc, scoring_func sigmoid):
//   s = sigmoid(W_gate·x); c = s + e_score_correction_bias;
//   groups ranked by the sum of their two best c, experts outside the topk_group best never chosen;
//   ids = top-k(c); w = s[ids] (the bias chooses, it does not weight);
//   if k > 1 and norm_topk_prob: w /= sum(w) + 1e-20; then always w *= routed_scaling_factor.
// Where the published codes disagree (the closed groups' fill), see selectExperts.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { loadWeights, mlpNames, swigluExperts, type ExpertLayout, type Weights } from './checkpoint.js';
import { ConfigKeys } from './config-keys.js';
import { DecoderReference, attendCached, cacheStorage, mixExperts, swiglu, type LayerCache, type ReferenceOptions } from './decoder.js';
import { matvec, rmsNorm } from './ops.js';
import { interleavedRope, ropeFrequencies, yarnGetMscale, type RopeScaling, type RopeTable } from './rope.js';
import { routerScores, selectExperts, type RouterSpec } from './routing.js';

export type DeepseekModelType = 'deepseek_v2' | 'deepseek_v3';

export interface DeepseekConfig {
  modelType: DeepseekModelType;
  vocab: number;
  hidden: number;
  layers: number;
  intermediate: number;
  moeIntermediate: number;
  nRouted: number;
  nShared: number;
  topK: number;
  firstKDense: number;
  moeLayerFreq: number;
  heads: number;
  qLoraRank: number | null;
  kvLoraRank: number;
  nope: number;
  rope: number;
  vDim: number;
  ropeTheta: number;
  /** null: plain RoPE. */
  ropeScaling: RopeScaling | null;
  topkMethod: RouterSpec['method'];
  nGroup: number;
  topkGroup: number;
  normTopkProb: boolean;
  routedScalingFactor: number;
  eps: number;
  tieWordEmbeddings: boolean;
  /** V3's multi-token-prediction layers (model.layers.{layers}...): not used for decoding. */
  nextnLayers: number;
}

/** Reads config.json text the way the HF model does, refusing anything it does not compute. */
export function parseDeepseekConfig(text: string, origin = 'config.json'): DeepseekConfig {
  const k = new ConfigKeys(text, origin);
  const c = k.c;
  if (c.model_type !== 'deepseek_v2' && c.model_type !== 'deepseek_v3') {
    throw new Error(`${origin}: model_type ${JSON.stringify(c.model_type)} is not deepseek_v2 or deepseek_v3`);
  }
  const modelType = c.model_type;
  const v3 = modelType === 'deepseek_v3';
  const scoring = v3 ? 'sigmoid' : 'softmax';
  if ((c.scoring_func ?? 'softmax') !== scoring) throw new Error(`${origin}: scoring_func ${JSON.stringify(c.scoring_func)} is not ${scoring}`);
  if ((c.hidden_act ?? 'silu') !== 'silu') throw new Error(`${origin}: hidden_act ${JSON.stringify(c.hidden_act)} is not silu`);
  if (c.attention_bias === true) throw new Error(`${origin}: attention_bias true is not supported`);
  const topkMethod = (c.topk_method ?? 'greedy') as RouterSpec['method'];
  if (v3 ? topkMethod !== 'noaux_tc' : topkMethod !== 'greedy' && topkMethod !== 'group_limited_greedy') {
    throw new Error(`${origin}: topk_method ${JSON.stringify(topkMethod)}${v3 ? ' is not noaux_tc' : ''}`);
  }
  // transformers' DeepseekV3 can rotate a non-interleaved layout; no published checkpoint uses it.
  if (v3) k.only('rope_interleave', [true], 'is not supported (the checkpoints store interleaved rope dims)');
  let ropeScaling: RopeScaling | null = null;
  const rs = c.rope_scaling as Record<string, number | string> | null | undefined;
  if (rs) {
    const type = rs.type ?? rs.rope_type;
    if (type !== 'yarn' && type !== 'linear') throw new Error(`${origin}: rope_scaling type ${JSON.stringify(type)} is not yarn or linear`);
    // The defaults of DeepseekV2/V3YarnRotaryEmbedding's constructor.
    ropeScaling = {
      type,
      factor: Number(rs.factor),
      original: Number(rs.original_max_position_embeddings ?? 4096),
      betaFast: Number(rs.beta_fast ?? 32),
      betaSlow: Number(rs.beta_slow ?? 1),
      mscale: Number(rs.mscale ?? 1),
      mscaleAllDim: Number(rs.mscale_all_dim ?? 0),
    };
  }
  const cfg: DeepseekConfig = {
    modelType,
    vocab: k.num('vocab_size'),
    hidden: k.num('hidden_size'),
    layers: k.num('num_hidden_layers'),
    intermediate: k.num('intermediate_size'),
    moeIntermediate: k.num('moe_intermediate_size'),
    nRouted: k.numOr('n_routed_experts', 0),
    nShared: k.numOr('n_shared_experts', 0),
    topK: k.numOr('num_experts_per_tok', 0),
    firstKDense: k.numOr('first_k_dense_replace', 0),
    moeLayerFreq: k.numOr('moe_layer_freq', 1),
    heads: k.num('num_attention_heads'),
    qLoraRank: c.q_lora_rank === null ? null : k.num('q_lora_rank'),
    kvLoraRank: k.num('kv_lora_rank'),
    nope: k.num('qk_nope_head_dim'),
    rope: k.num('qk_rope_head_dim'),
    vDim: k.num('v_head_dim'),
    ropeTheta: k.numOr('rope_theta', 10000),
    ropeScaling,
    topkMethod,
    nGroup: k.numOr('n_group', 1),
    topkGroup: k.numOr('topk_group', 1),
    normTopkProb: c.norm_topk_prob === true,
    routedScalingFactor: k.numOr('routed_scaling_factor', 1),
    eps: k.numOr('rms_norm_eps', 1e-6),
    tieWordEmbeddings: c.tie_word_embeddings === true,
    nextnLayers: v3 ? k.countOr('num_nextn_predict_layers', 0) : 0,
  };
  if (v3 && cfg.nRouted > 0) {
    // noaux_tc ranks groups by their two best experts and needs top_k experts in the open groups.
    const per = cfg.nRouted / cfg.nGroup;
    if (!Number.isInteger(per) || per < 2) k.fail('n_group', `must split n_routed_experts ${cfg.nRouted} into groups of at least 2`);
    if (!Number.isInteger(cfg.topkGroup) || cfg.topkGroup < 1 || cfg.topkGroup > cfg.nGroup) k.fail('topk_group', `must be in [1, n_group ${cfg.nGroup}]`);
    if (cfg.topK > cfg.topkGroup * per) k.fail('num_experts_per_tok', `exceeds the ${cfg.topkGroup * per} experts of topk_group groups`);
  }
  return cfg;
}

export function isMoeLayer(cfg: DeepseekConfig, l: number): boolean {
  return cfg.nRouted > 0 && l < cfg.layers && l >= cfg.firstKDense && l % cfg.moeLayerFreq === 0;
}

/** The routing rules of each release (see the file comment). */
export function routerSpec(cfg: DeepseekConfig): RouterSpec {
  const normalize = cfg.topK > 1 && cfg.normTopkProb;
  const base = { topK: cfg.topK, nGroup: cfg.nGroup, topkGroup: cfg.topkGroup, normalize, normEps: 1e-20 };
  if (cfg.modelType === 'deepseek_v3') return { ...base, scoring: 'sigmoid', method: 'noaux_tc', scale: cfg.routedScalingFactor };
  // V2 scales only the weights it does not normalise.
  return { ...base, scoring: 'softmax', method: cfg.topkMethod, scale: normalize ? 1 : cfg.routedScalingFactor };
}

export function ropeTable(cfg: DeepseekConfig): RopeTable {
  return ropeFrequencies({ dim: cfg.rope, theta: cfg.ropeTheta, scaling: cfg.ropeScaling });
}

/** q_head_dim^-0.5, times mscale^2 when rope_scaling sets mscale_all_dim (DeepseekV2/V3Attention). */
export function softmaxScale(cfg: DeepseekConfig): number {
  let scale = (cfg.nope + cfg.rope) ** -0.5;
  const s = cfg.ropeScaling;
  if (s !== null && s.mscaleAllDim) {
    const m = yarnGetMscale(s.factor, s.mscaleAllDim);
    scale *= m * m;
  }
  return scale;
}

export function expertLayout(cfg: DeepseekConfig): ExpertLayout {
  return swigluExperts({
    layers: cfg.layers,
    nRouted: cfg.nRouted,
    hidden: cfg.hidden,
    width: cfg.moeIntermediate,
    isMoeLayer: (l) => isMoeLayer(cfg, l),
    names: (l, e) => mlpNames(`model.layers.${l}.mlp.experts.${e}`),
  });
}


export class DeepseekReference extends DecoderReference {
  private readonly rope: RopeTable;
  private readonly router: RouterSpec;

  /** The latent cache's entries as stored: exact, or rounded to bf16. */
  private readonly stored: (x: Float64Array) => Float64Array;

  constructor(readonly cfg: DeepseekConfig, w: Weights, opts: ReferenceOptions = {}) {
    super(w, { vocab: cfg.vocab, hidden: cfg.hidden, layers: cfg.layers, eps: cfg.eps, tieWordEmbeddings: cfg.tieWordEmbeddings });
    this.rope = ropeTable(cfg);
    this.router = routerSpec(cfg);
    this.stored = cacheStorage(opts.kvCacheDtype);
  }

  /** Loads either release (the config's model_type decides). */
  static load(dir: string, opts: ReferenceOptions = {}): DeepseekReference {
    const path = join(dir, 'config.json');
    const cfg = parseDeepseekConfig(readFileSync(path, 'utf8'), path);
    return new DeepseekReference(cfg, loadWeights(dir, expertLayout(cfg), opts), opts);
  }

  protected override ffn(l: number, x: Float64Array, margins: number[]): Float64Array {
    const c = this.cfg;
    const H = c.hidden;
    const p = `model.layers.${l}.mlp`;
    if (!isMoeLayer(c, l)) return swiglu(this.w, mlpNames(p), H, c.intermediate, x);
    const logits = matvec(this.w.get(`${p}.gate.weight`, [c.nRouted, H]), c.nRouted, H, x);
    const bias = this.router.method === 'noaux_tc' ? this.w.get(`${p}.gate.e_score_correction_bias`, [c.nRouted]) : undefined;
    const r = selectExperts(routerScores(logits, this.router.scoring), this.router, bias);
    margins.push(r.margin);
    const y = mixExperts(r, (e) => swiglu(this.w, mlpNames(`${p}.experts.${e}`), H, c.moeIntermediate, x), H);
    if (c.nShared > 0) {
      const shared = swiglu(this.w, mlpNames(`${p}.shared_experts`), H, c.moeIntermediate * c.nShared, x);
      for (let i = 0; i < H; i++) y[i] += shared[i];
    }
    return y;
  }

  /** MLA in the plain formulation: k_nope and v expanded per head; k_pe shared by all heads.
   * What a cache holds (c_kv, k_pe) is taken as stored, so a bf16 cache's rounding is modelled. */
  protected override attention(l: number, xs: Float64Array[], start: number, cache: LayerCache): Float64Array[] {
    const c = this.cfg;
    const H = c.hidden;
    const qHead = c.nope + c.rope;
    const kvWidth = c.nope + c.vDim;
    const p = `model.layers.${l}.self_attn`;
    const qs = xs.map((x, t) => {
      const pos = start + t;
      let qAll: Float64Array;
      if (c.qLoraRank === null) {
        qAll = matvec(this.w.get(`${p}.q_proj.weight`, [c.heads * qHead, H]), c.heads * qHead, H, x);
      } else {
        const qa = matvec(this.w.get(`${p}.q_a_proj.weight`, [c.qLoraRank, H]), c.qLoraRank, H, x);
        const qn = rmsNorm(qa, this.w.get(`${p}.q_a_layernorm.weight`, [c.qLoraRank]), c.eps);
        qAll = matvec(this.w.get(`${p}.q_b_proj.weight`, [c.heads * qHead, c.qLoraRank]), c.heads * qHead, c.qLoraRank, qn);
      }
      const kva = matvec(this.w.get(`${p}.kv_a_proj_with_mqa.weight`, [c.kvLoraRank + c.rope, H]), c.kvLoraRank + c.rope, H, x);
      const ckv = this.stored(rmsNorm(kva.subarray(0, c.kvLoraRank), this.w.get(`${p}.kv_a_layernorm.weight`, [c.kvLoraRank]), c.eps));
      const kPe = this.stored(interleavedRope(kva.subarray(c.kvLoraRank), pos, this.rope));
      const kv = matvec(this.w.get(`${p}.kv_b_proj.weight`, [c.heads * kvWidth, c.kvLoraRank]), c.heads * kvWidth, c.kvLoraRank, ckv);
      const q: Float64Array[] = [];
      const keys: Float64Array[] = [];
      const values: Float64Array[] = [];
      for (let h = 0; h < c.heads; h++) {
        const qh = new Float64Array(qHead);
        qh.set(qAll.subarray(h * qHead, h * qHead + c.nope));
        qh.set(interleavedRope(qAll.subarray(h * qHead + c.nope, (h + 1) * qHead), pos, this.rope), c.nope);
        const kh = new Float64Array(qHead);
        kh.set(kv.subarray(h * kvWidth, h * kvWidth + c.nope));
        kh.set(kPe, c.nope);
        q.push(qh);
        keys.push(kh);
        values.push(kv.slice(h * kvWidth + c.nope, (h + 1) * kvWidth));
      }
      cache.keys.push(keys);
      cache.values.push(values);
      return q;
    });
    const scale = softmaxScale(c);
    const oProj = this.w.get(`${p}.o_proj.weight`, [H, c.heads * c.vDim]);
    return qs.map((q, t) => matvec(oProj, H, c.heads * c.vDim, attendCached(q, cache, start + t, (h) => h, scale)));
  }
}
