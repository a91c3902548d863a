// Grouped-query attention in float64, as Qwen3MoeAttention and MixtralAttention compute it:
//   q_h = W_q·x (heads × head_dim), k_g = W_k·x, v_g = W_v·x (kv_heads × head_dim), no biases;
//   Qwen3 only: q_h = RMSNorm_head(q_h; q_norm), k_g = RMSNorm_head(k_g; k_norm), per head, before RoPE;
//   rotate_half RoPE over the whole head; query head h reads KV head floor(h / (heads / kv_heads))
//   (repeat_kv); scores · head_dim^-0.5; causal softmax; o_proj over the concatenated heads.
import type { Weights } from './checkpoint.js';
import { attendCached, type LayerCache } from './decoder.js';
import { matvec, rmsNorm } from './ops.js';
import { rotateHalf, type RopeTable } from './rope.js';

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

/** GQA of layer prefix `p` (model.layers.{l}.self_attn) over a chunk at positions start, start+1, ... */
export function gqaAttention(w: Weights, p: string, dims: GqaDims, rope: RopeTable, xs: Float64Array[], start: number, cache: LayerCache): Float64Array[] {
  const { hidden: H, heads: nq, kvHeads: nkv, headDim: d, eps } = dims;
  const qNorm = dims.qkNorm ? w.get(`${p}.q_norm.weight`, [d]) : undefined;
  const kNorm = dims.qkNorm ? w.get(`${p}.k_norm.weight`, [d]) : undefined;
  const qs = xs.map((x, t) => {
    const pos = start + t;
    const q = heads(matvec(w.get(`${p}.q_proj.weight`, [nq * d, H]), nq * d, H, x), nq, d);
    const k = heads(matvec(w.get(`${p}.k_proj.weight`, [nkv * d, H]), nkv * d, H, x), nkv, d);
    const v = heads(matvec(w.get(`${p}.v_proj.weight`, [nkv * d, H]), nkv * d, H, x), nkv, d);
    const norm = (hs: Float64Array[], weight?: Float64Array) => (weight ? hs.map((h) => rmsNorm(h, weight, eps)) : hs);
    cache.keys.push(norm(k, kNorm).map((h) => rotateHalf(h, pos, rope)));
    cache.values.push(v);
    return norm(q, qNorm).map((h) => rotateHalf(h, pos, rope));
  });
  const oProj = w.get(`${p}.o_proj.weight`, [H, nq * d]);
  return qs.map((q, t) => matvec(oProj, H, nq * d, attendCached(q, cache, start + t, kvHeadOf(dims), d ** -0.5)));
}
