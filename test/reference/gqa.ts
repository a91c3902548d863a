// Grouped-query attention in float64, as Qwen3MoeAttention and MixtralAttention compute it,
// and the decoder of those two families (GQA + dense or routed SwiGLU MLPs):
//   q_h = W_q·x (heads × head_dim), k_g = W_k·x, v_g = W_v·x (kv_heads × head_dim), no biases;
//   Qwen3 only: q_h = RMSNorm_head(q_h; q_norm), k_g = RMSNorm_head(k_g; k_norm), per head, before RoPE;
//   rotate_half RoPE over the whole head; query head h reads KV head floor(h / (heads / kv_heads))
//   (repeat_kv); scores · head_dim^-0.5; causal softmax; o_proj over the concatenated heads.
import { swigluExperts, type ExpertLayout, type Weights } from './checkpoint.js';
import type { ConfigKeys } from './config-keys.js';
import { DecoderReference, attendCached, cacheStorage, mixExperts, swiglu, type DecoderDims, type LayerCache, type ReferenceOptions } from './decoder.js';
import { matvec, rmsNorm } from './ops.js';
import { ropeFrequencies, rotateHalf, type RopeTable } from './rope.js';
import { routerScores, selectExperts, type RouterSpec } from './routing.js';

export interface GqaDims {
  hidden: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  eps: number;
  /** Qwen3's per-head q_norm / k_norm. */
  qkNorm: boolean;
}

/** The KV head query head h reads (repeat_kv: each KV head serves heads/kv_heads consecutive query heads). */
export const kvHeadOf = (dims: GqaDims) => (h: number) => Math.floor(h / (dims.heads / dims.kvHeads));

/** Splits a [n * d] projection into n heads of d. */
function heads(v: Float64Array, n: number, d: number): Float64Array[] {
  return Array.from({ length: n }, (_, h) => v.slice(h * d, (h + 1) * d));
}

/** GQA of layer prefix `p` (model.layers.{l}.self_attn) over a chunk at positions start, start+1, ...;
 * the cache keeps keys and values as `stored` returns them (a bf16 cache rounds them). */
export function gqaAttention(w: Weights, p: string, dims: GqaDims, rope: RopeTable, xs: Float64Array[], start: number, cache: LayerCache, stored: (x: Float64Array) => Float64Array = (x) => x): Float64Array[] {
  const { hidden: H, heads: nq, kvHeads: nkv, headDim: d, eps } = dims;
  const qNorm = dims.qkNorm ? w.get(`${p}.q_norm.weight`, [d]) : undefined;
  const kNorm = dims.qkNorm ? w.get(`${p}.k_norm.weight`, [d]) : undefined;
  const qs = xs.map((x, t) => {
    const pos = start + t;
    const q = heads(matvec(w.get(`${p}.q_proj.weight`, [nq * d, H]), nq * d, H, x), nq, d);
    const k = heads(matvec(w.get(`${p}.k_proj.weight`, [nkv * d, H]), nkv * d, H, x), nkv, d);
    const v = heads(matvec(w.get(`${p}.v_proj.weight`, [nkv * d, H]), nkv * d, H, x), nkv, d);
    const norm = (hs: Float64Array[], weight?: Float64Array) => (weight ? hs.map((h) => rmsNorm(h, weight, eps)) : hs);
    cache.keys.push(norm(k, kNorm).map((h) => stored(rotateHalf(h, pos, rope))));
    cache.values.push(v.map(stored));
    return norm(q, qNorm).map((h) => rotateHalf(h, pos, rope));
  });
  const oProj = w.get(`${p}.o_proj.weight`, [H, nq * d]);
  return qs.map((q, t) => matvec(oProj, H, nq * d, attendCached(q, cache, start + t, kvHeadOf(dims), d ** -0.5)));
}

/** What distinguishes the GQA + MoE families (Qwen3-MoE, Mixtral) from each other. */
export interface GqaMoeLayout {
  dims: DecoderDims;
  gqa: GqaDims;
  ropeTheta: number;
  router: RouterSpec;
  nExperts: number;
  expertWidth: number;
  /** Width of the dense MLP layers (unused when every layer is MoE). */
  denseWidth: number;
  isMoeLayer(l: number): boolean;
  /** model.layers.{l}.mlp.gate.weight or ...block_sparse_moe.gate.weight */
  routerName(l: number): string;
  expertNames(l: number, e: number): { gate: string; up: string; down: string };
  denseNames(l: number): { gate: string; up: string; down: string };
}

/** The config fields Qwen3-MoE and Mixtral share (same names in both parsed configs). */
export interface GqaCommonConfig {
  vocab: number;
  hidden: number;
  layers: number;
  eps: number;
  tieWordEmbeddings: boolean;
  heads: number;
  kvHeads: number;
  headDim: number;
  ropeTheta: number;
}

/**
 * Reads the shared keys (HF defaults differ per family: rope_theta, rms_norm_eps). Both
 * families take head_dim from the config when present, else hidden_size / heads.
 */
export function parseGqaCommon(k: ConfigKeys, defaults: { ropeTheta: number; eps: number }): GqaCommonConfig {
  k.only('hidden_act', ['silu']);
  k.only('rope_scaling', [null], 'is not supported (plain RoPE only)');
  const heads = k.int('num_attention_heads');
  const hidden = k.int('hidden_size');
  const c: GqaCommonConfig = {
    vocab: k.int('vocab_size'),
    hidden,
    layers: k.int('num_hidden_layers'),
    eps: k.numOr('rms_norm_eps', defaults.eps),
    tieWordEmbeddings: k.boolOr('tie_word_embeddings', false),
    heads,
    kvHeads: k.int('num_key_value_heads'),
    headDim: k.intOr('head_dim', Math.floor(hidden / heads)),
    ropeTheta: k.numOr('rope_theta', defaults.ropeTheta),
  };
  if (c.heads % c.kvHeads !== 0) k.fail('num_key_value_heads', `must divide num_attention_heads ${c.heads}`);
  if (c.headDim % 2 !== 0) k.fail('head_dim', 'must be even (rotate_half RoPE)');
  return c;
}

/** The decoder and attention part of a GqaMoeLayout. */
export function gqaShape(c: GqaCommonConfig, qkNorm: boolean): Pick<GqaMoeLayout, 'dims' | 'gqa' | 'ropeTheta'> {
  return {
    dims: { vocab: c.vocab, hidden: c.hidden, layers: c.layers, eps: c.eps, tieWordEmbeddings: c.tieWordEmbeddings },
    gqa: { hidden: c.hidden, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, eps: c.eps, qkNorm },
    ropeTheta: c.ropeTheta,
  };
}

export function gqaMoeExperts(f: GqaMoeLayout): ExpertLayout {
  return swigluExperts({ layers: f.dims.layers, nRouted: f.nExperts, hidden: f.dims.hidden, width: f.expertWidth, isMoeLayer: (l) => f.isMoeLayer(l), names: (l, e) => f.expertNames(l, e) });
}

/** A decoder of GQA attention and either a dense SwiGLU MLP or top-k routed SwiGLU experts per layer. */
export class GqaMoeReference extends DecoderReference {
  private readonly rope: RopeTable;
  /** The KV cache's entries as stored: exact, or rounded to bf16. */
  private readonly stored: (x: Float64Array) => Float64Array;

  constructor(readonly layout: GqaMoeLayout, w: Weights, opts: ReferenceOptions = {}) {
    super(w, layout.dims);
    this.rope = ropeFrequencies({ dim: layout.gqa.headDim, theta: layout.ropeTheta, scaling: null });
    this.stored = cacheStorage(opts.kvCacheDtype);
  }

  protected override attention(l: number, xs: Float64Array[], start: number, cache: LayerCache): Float64Array[] {
    return gqaAttention(this.w, `model.layers.${l}.self_attn`, this.layout.gqa, this.rope, xs, start, cache, this.stored);
  }

  protected override ffn(l: number, x: Float64Array, margins: number[]): Float64Array {
    const f = this.layout;
    const H = f.dims.hidden;
    if (!f.isMoeLayer(l)) return swiglu(this.w, f.denseNames(l), H, f.denseWidth, x);
    const logits = matvec(this.w.get(f.routerName(l), [f.nExperts, H]), f.nExperts, H, x);
    const r = selectExperts(routerScores(logits, f.router.scoring), f.router);
    margins.push(r.margin);
    return mixExperts(r, (e) => swiglu(this.w, f.expertNames(l, e), H, f.expertWidth, x), H);
  }
}
