// The decoder every family shares, in float64:
//   x = embed(token)
//   per layer: h = x + Attention(RMSNorm(x)); x = h + FFN(RMSNorm(h))   (FFN: dense MLP or MoE)
//   logits = lm_head(RMSNorm(x))   (lm_head = embed_tokens when tie_word_embeddings)
// with a per-sequence KV cache, so a sequence can be extended chunk by chunk
// (prefill, then one token at a time) exactly as an engine decodes it.
import { Weights } from './checkpoint.js';
import { add, matvec, rmsNorm, silu, softmax, roundToBf16 } from './ops.js';
import type { Routing } from './routing.js';

export interface DecoderDims {
  vocab: number;
  hidden: number;
  layers: number;
  eps: number;
  tieWordEmbeddings: boolean;
}

/** One layer's cache: per position, per KV head, the key (after RoPE) and the value. */
export interface LayerCache {
  keys: Float64Array[][];
  values: Float64Array[][];
}

export interface ReferenceOutput {
  /** Per position of the chunk: logits over the vocabulary. */
  logits: Float64Array[];
  /** Smallest routing margin over the chunk's tokens and MoE layers (Infinity without MoE). */
  minRouterMargin: number;
  /** Per position of the chunk: its smallest routing margin over the MoE layers. */
  routerMargins: number[];
}

export interface ReferenceOptions {
  /** An ESFT adapter directory whose experts replace the base's ("merged" model). */
  adapterDir?: string;
  /** The KV cache's element type: 'bf16' rounds every cached entry to bf16 as it is stored
   * (the engine's default on the CPU); default 'f32' (exact: the reference keeps float64). */
  kvCacheDtype?: 'f32' | 'bf16';
}

/** How a KV cache of this element type stores an entry: exact (f32: the reference keeps
 * float64), or rounded to bf16 as the engine writes it. */
export function cacheStorage(dtype: ReferenceOptions['kvCacheDtype']): (x: Float64Array) => Float64Array {
  return dtype === 'bf16' ? (x) => x.map(roundToBf16) : (x) => x;
}

/**
 * Softmax attention of one query position over cached positions 0..upTo: per query head
 * h, keys and values of KV head kvHead(h); the heads' outputs concatenated.
 */
export function attendCached(q: Float64Array[], cache: LayerCache, upTo: number, kvHead: (h: number) => number, scale: number): Float64Array {
  const vDim = cache.values[0][0].length;
  const out = new Float64Array(q.length * vDim);
  for (let h = 0; h < q.length; h++) {
    const g = kvHead(h);
    const scores = new Float64Array(upTo + 1);
    for (let j = 0; j <= upTo; j++) {
      const k = cache.keys[j][g];
      let s = 0;
      for (let d = 0; d < k.length; d++) s += q[h][d] * k[d];
      scores[j] = s * scale;
    }
    const probs = softmax(scores);
    for (let j = 0; j <= upTo; j++) {
      const v = cache.values[j][g];
      for (let d = 0; d < vDim; d++) out[h * vDim + d] += probs[j] * v[d];
    }
  }
  return out;
}

/** down · (silu(gate · x) * (up · x)), the SwiGLU MLP of every family (names differ). */
export function swiglu(w: Weights, names: { gate: string; up: string; down: string }, hidden: number, width: number, x: Float64Array): Float64Array {
  const g = matvec(w.get(names.gate, [width, hidden]), width, hidden, x);
  const u = matvec(w.get(names.up, [width, hidden]), width, hidden, x);
  const a = new Float64Array(width);
  for (let i = 0; i < width; i++) a[i] = silu(g[i]) * u[i];
  return matvec(w.get(names.down, [hidden, width]), hidden, width, a);
}

/** sum_j weight_j * expert_{id_j}(x) */
export function mixExperts(r: Routing, expert: (e: number) => Float64Array, hidden: number): Float64Array {
  const y = new Float64Array(hidden);
  r.ids.forEach((e, j) => {
    const out = expert(e);
    for (let i = 0; i < hidden; i++) y[i] += r.weights[j] * out[i];
  });
  return y;
}

export abstract class DecoderReference {
  protected constructor(protected readonly w: Weights, readonly dims: DecoderDims) {}

  /**
   * Attention of layer l for a chunk of normed inputs at positions start, start+1, ...:
   * appends the chunk's keys and values to `cache` (which holds positions 0..start-1)
   * and returns the attention output of each chunk position (before the residual).
   */
  protected abstract attention(l: number, xs: Float64Array[], start: number, cache: LayerCache): Float64Array[];

  /** The feed-forward of layer l (dense MLP or MoE); MoE layers push their routing margin. */
  protected abstract ffn(l: number, x: Float64Array, margins: number[]): Float64Array;

  /** A new sequence with an empty KV cache. */
  session(): ReferenceSession {
    return new ReferenceSession(this);
  }

  /** Logits at every position of `tokens` (positions 0, 1, ...): one prefill. */
  forward(tokens: readonly number[]): ReferenceOutput {
    return this.session().extend(tokens);
  }

  /** @internal the layer loop over one chunk; ReferenceSession owns the caches. */
  runChunk(tokens: readonly number[], start: number, caches: LayerCache[]): ReferenceOutput {
    const { vocab, hidden: H, layers, eps } = this.dims;
    const embed = this.w.get('model.embed_tokens.weight', [vocab, H]);
    let xs: Float64Array[] = tokens.map((tok) => {
      if (!Number.isInteger(tok) || tok < 0 || tok >= vocab) throw new RangeError(`token ${tok} outside [0, ${vocab})`);
      return embed.slice(tok * H, (tok + 1) * H);
    });
    const margins: number[][] = tokens.map(() => []);
    for (let l = 0; l < layers; l++) {
      const p = `model.layers.${l}`;
      const inNorm = this.w.get(`${p}.input_layernorm.weight`, [H]);
      const attn = this.attention(l, xs.map((x) => rmsNorm(x, inNorm, eps)), start, caches[l]);
      const hs = xs.map((x, t) => add(x, attn[t]));
      const postNorm = this.w.get(`${p}.post_attention_layernorm.weight`, [H]);
      xs = hs.map((h, t) => add(h, this.ffn(l, rmsNorm(h, postNorm, eps), margins[t])));
    }
    const finalNorm = this.w.get('model.norm.weight', [H]);
    const head = this.dims.tieWordEmbeddings ? embed : this.w.get('lm_head.weight', [vocab, H]);
    return {
      logits: xs.map((x) => matvec(head, vocab, H, rmsNorm(x, finalNorm, eps))),
      minRouterMargin: Math.min(Infinity, ...margins.flat()),
      routerMargins: margins.map((m) => Math.min(Infinity, ...m)),
    };
  }
}

/** One sequence: its KV caches and its length; extend() runs a chunk at the next positions. */
export class ReferenceSession {
  private readonly caches: LayerCache[];
  private pos = 0;

  constructor(private readonly model: DecoderReference) {
    this.caches = Array.from({ length: model.dims.layers }, () => ({ keys: [], values: [] }));
  }

  get length(): number {
    return this.pos;
  }

  extend(tokens: readonly number[]): ReferenceOutput {
    const out = this.model.runChunk(tokens, this.pos, this.caches);
    this.pos += tokens.length;
    return out;
  }
}
