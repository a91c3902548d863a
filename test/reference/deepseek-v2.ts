// An independent float64 reference forward of DeepSeek-V2 (HF modeling_deepseek.py),
// written for reading, not speed: plain loops, float64 everywhere, attention in the
// plain (non-absorbed) formulation over all positions. The native engine is tested
// against it; nothing here is shared with the engine.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { TensorStore } from '../../lib/safetensors/reader.js';

export interface RefConfig {
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
  ropeScaling: { type: 'yarn' | 'linear'; factor: number; original: number; betaFast: number; betaSlow: number; mscale: number; mscaleAllDim: number } | null;
  topkMethod: 'greedy' | 'group_limited_greedy';
  nGroup: number;
  topkGroup: number;
  normTopkProb: boolean;
  routedScalingFactor: number;
  eps: number;
  tieWordEmbeddings: boolean;
}

/** Reads config.json text the way the HF model does, refusing anything it does not compute. */
export function parseRefConfig(text: string, origin = 'config.json'): RefConfig {
  const c = JSON.parse(text) as Record<string, unknown>;
  const num = (k: string): number => {
    if (typeof c[k] !== 'number') throw new Error(`${origin}: ${k} must be a number, got ${JSON.stringify(c[k])}`);
    return c[k] as number;
  };
  const numOr = (k: string, d: number): number => (c[k] === undefined || c[k] === null ? d : num(k));
  if (c.model_type !== 'deepseek_v2') throw new Error(`${origin}: model_type ${JSON.stringify(c.model_type)} is not deepseek_v2`);
  if ((c.scoring_func ?? 'softmax') !== 'softmax') throw new Error(`${origin}: scoring_func ${JSON.stringify(c.scoring_func)} is not softmax`);
  if ((c.hidden_act ?? 'silu') !== 'silu') throw new Error(`${origin}: hidden_act ${JSON.stringify(c.hidden_act)} is not silu`);
  if (c.attention_bias === true) throw new Error(`${origin}: attention_bias true is not supported`);
  const topkMethod = c.topk_method ?? 'greedy';
  if (topkMethod !== 'greedy' && topkMethod !== 'group_limited_greedy') throw new Error(`${origin}: topk_method ${JSON.stringify(topkMethod)}`);
  let ropeScaling: RefConfig['ropeScaling'] = null;
  const rs = c.rope_scaling as Record<string, number | string> | null | undefined;
  if (rs) {
    const type = rs.type ?? rs.rope_type;
    if (type !== 'yarn' && type !== 'linear') throw new Error(`${origin}: rope_scaling type ${JSON.stringify(type)} is not yarn or linear`);
    // The defaults of DeepseekV2YarnRotaryEmbedding's constructor.
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
  return {
    vocab: num('vocab_size'),
    hidden: num('hidden_size'),
    layers: num('num_hidden_layers'),
    intermediate: num('intermediate_size'),
    moeIntermediate: num('moe_intermediate_size'),
    nRouted: numOr('n_routed_experts', 0),
    nShared: numOr('n_shared_experts', 0),
    topK: numOr('num_experts_per_tok', 0),
    firstKDense: numOr('first_k_dense_replace', 0),
    moeLayerFreq: numOr('moe_layer_freq', 1),
    heads: num('num_attention_heads'),
    qLoraRank: c.q_lora_rank === null ? null : num('q_lora_rank'),
    kvLoraRank: num('kv_lora_rank'),
    nope: num('qk_nope_head_dim'),
    rope: num('qk_rope_head_dim'),
    vDim: num('v_head_dim'),
    ropeTheta: numOr('rope_theta', 10000),
    ropeScaling,
    topkMethod,
    nGroup: numOr('n_group', 1),
    topkGroup: numOr('topk_group', 1),
    normTopkProb: c.norm_topk_prob === true,
    routedScalingFactor: numOr('routed_scaling_factor', 1),
    eps: numOr('rms_norm_eps', 1e-6),
    tieWordEmbeddings: c.tie_word_embeddings === true,
  };
}

export function isMoeLayer(cfg: RefConfig, l: number): boolean {
  return cfg.nRouted > 0 && l >= cfg.firstKDense && l % cfg.moeLayerFreq === 0;
}

// ---- RoPE and yarn, as DeepseekV2(Yarn)RotaryEmbedding ----

export function yarnGetMscale(scale: number, mscale: number): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

function yarnFindCorrectionDim(numRotations: number, dim: number, base: number, maxPos: number): number {
  return (dim * Math.log(maxPos / (numRotations * 2 * Math.PI))) / (2 * Math.log(base));
}

export function yarnFindCorrectionRange(lowRot: number, highRot: number, dim: number, base: number, maxPos: number): [number, number] {
  const low = Math.floor(yarnFindCorrectionDim(lowRot, dim, base, maxPos));
  const high = Math.ceil(yarnFindCorrectionDim(highRot, dim, base, maxPos));
  return [Math.max(low, 0), Math.min(high, dim - 1)];
}

/** inv_freq per rotated pair (length rope/2) and the factor cos and sin are multiplied by. */
export function ropeFrequencies(cfg: RefConfig): { invFreq: Float64Array; cosSinScale: number; positionScale: number } {
  const dim = cfg.rope;
  const half = dim / 2;
  const invFreq = new Float64Array(half);
  const s = cfg.ropeScaling;
  for (let i = 0; i < half; i++) invFreq[i] = 1 / cfg.ropeTheta ** ((2 * i) / dim);
  if (s === null) return { invFreq, cosSinScale: 1, positionScale: 1 };
  if (s.type === 'linear') return { invFreq, cosSinScale: 1, positionScale: 1 / s.factor };
  const [low, high0] = yarnFindCorrectionRange(s.betaFast, s.betaSlow, dim, cfg.ropeTheta, s.original);
  const high = low === high0 ? high0 + 0.001 : high0; // yarn_linear_ramp_mask's guard
  for (let i = 0; i < half; i++) {
    const freqExtra = 1 / cfg.ropeTheta ** ((2 * i) / dim);
    const freqInter = 1 / (s.factor * cfg.ropeTheta ** ((2 * i) / dim));
    const ramp = Math.min(1, Math.max(0, (i - low) / (high - low)));
    const mask = 1 - ramp;
    invFreq[i] = freqInter * (1 - mask) + freqExtra * mask;
  }
  return {
    invFreq,
    cosSinScale: yarnGetMscale(s.factor, s.mscale) / yarnGetMscale(s.factor, s.mscaleAllDim),
    positionScale: 1,
  };
}

/**
 * RoPE of one head's rope part at position `pos`, as apply_rotary_pos_emb: the stored
 * dims are interleaved pairs, de-interleaved first (view(d/2, 2).transpose), then
 * rotate_half with cos/sin of cat(freqs, freqs). The result is in de-interleaved order.
 */
export function applyRope(x: ArrayLike<number>, pos: number, cfg: RefConfig): Float64Array {
  const { invFreq, cosSinScale, positionScale } = ropeFrequencies(cfg);
  const d = cfg.rope;
  const half = d / 2;
  const y = new Float64Array(d); // de-interleaved: y[j] = x[2j], y[half + j] = x[2j + 1]
  for (let j = 0; j < half; j++) {
    y[j] = x[2 * j];
    y[half + j] = x[2 * j + 1];
  }
  const out = new Float64Array(d);
  for (let j = 0; j < half; j++) {
    const angle = pos * positionScale * invFreq[j];
    const cos = Math.cos(angle) * cosSinScale;
    const sin = Math.sin(angle) * cosSinScale;
    out[j] = y[j] * cos - y[half + j] * sin;
    out[half + j] = y[half + j] * cos + y[j] * sin;
  }
  return out;
}

/** q_head_dim^-0.5, times mscale^2 when rope_scaling sets mscale_all_dim (DeepseekV2Attention). */
export function softmaxScale(cfg: RefConfig): number {
  let scale = (cfg.nope + cfg.rope) ** -0.5;
  const s = cfg.ropeScaling;
  if (s !== null && s.mscaleAllDim) {
    const m = yarnGetMscale(s.factor, s.mscaleAllDim);
    scale *= m * m;
  }
  return scale;
}

// ---- MoE routing, as MoEGate ----

/** Indices of the k largest values, ties to the lower index. */
function topIndices(values: ArrayLike<number>, k: number): number[] {
  const idx = Array.from({ length: values.length }, (_, i) => i);
  idx.sort((a, b) => values[b] - values[a] || a - b);
  return idx.slice(0, k);
}

export interface Routing {
  ids: number[];
  weights: number[];
  /** Gap between the last chosen and the first unchosen score (and group score): how far from a tie. */
  margin: number;
}

/** Top-k routing of one token's softmax probabilities. */
export function route(probs: ArrayLike<number>, cfg: RefConfig): Routing {
  const sortedGap = (v: ArrayLike<number>, chosen: number[]) => {
    const rest = Array.from(v).filter((_, i) => !chosen.includes(i));
    return rest.length === 0 ? Infinity : Math.min(...chosen.map((i) => v[i])) - Math.max(...rest);
  };
  let scores: ArrayLike<number> = probs;
  let margin = Infinity;
  if (cfg.topkMethod === 'group_limited_greedy') {
    const per = cfg.nRouted / cfg.nGroup;
    const groupScores = new Float64Array(cfg.nGroup);
    for (let g = 0; g < cfg.nGroup; g++) {
      groupScores[g] = -Infinity;
      for (let j = 0; j < per; j++) groupScores[g] = Math.max(groupScores[g], probs[g * per + j]);
    }
    const groups = topIndices(groupScores, cfg.topkGroup);
    margin = sortedGap(groupScores, groups);
    const masked = new Float64Array(cfg.nRouted);
    for (let e = 0; e < cfg.nRouted; e++) masked[e] = groups.includes(Math.floor(e / per)) ? probs[e] : 0;
    scores = masked;
  }
  const ids = topIndices(scores, cfg.topK);
  margin = Math.min(margin, sortedGap(scores, ids));
  let weights = ids.map((e) => scores[e]);
  if (cfg.topK > 1 && cfg.normTopkProb) {
    const denom = weights.reduce((s, w) => s + w, 0) + 1e-20;
    weights = weights.map((w) => w / denom);
  } else {
    weights = weights.map((w) => w * cfg.routedScalingFactor);
  }
  return { ids, weights, margin };
}

// ---- building blocks ----

/** y = W·x with W [rows, cols] row-major. */
export function matvec(w: Float64Array, rows: number, cols: number, x: ArrayLike<number>): Float64Array {
  const y = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += w[r * cols + c] * x[c];
    y[r] = s;
  }
  return y;
}

export function rmsNorm(x: ArrayLike<number>, w: ArrayLike<number>, eps: number): Float64Array {
  let ss = 0;
  for (let i = 0; i < x.length; i++) ss += x[i] * x[i];
  const inv = 1 / Math.sqrt(ss / x.length + eps);
  const y = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) y[i] = w[i] * x[i] * inv;
  return y;
}

export function softmax(x: ArrayLike<number>): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < x.length; i++) max = Math.max(max, x[i]);
  const y = new Float64Array(x.length);
  let sum = 0;
  for (let i = 0; i < x.length; i++) sum += y[i] = Math.exp(x[i] - max);
  for (let i = 0; i < x.length; i++) y[i] /= sum;
  return y;
}

const silu = (x: number) => x / (1 + Math.exp(-x));

function add(a: Float64Array, b: Float64Array): Float64Array {
  const y = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) y[i] = a[i] + b[i];
  return y;
}

export interface ReferenceOutput {
  /** Per position: logits over the vocabulary. */
  logits: Float64Array[];
  /** Smallest routing margin over all tokens and MoE layers (Infinity without MoE). */
  minRouterMargin: number;
}

export interface ReferenceOptions {
  /** An ESFT adapter directory whose experts replace the base's ("merged" model). */
  adapterDir?: string;
}

export class ReferenceModel {
  private readonly weights = new Map<string, Float64Array>();

  private constructor(readonly cfg: RefConfig, private readonly store: TensorStore) {}

  static load(dir: string, opts: ReferenceOptions = {}): ReferenceModel {
    const cfg = parseRefConfig(readFileSync(join(dir, 'config.json'), 'utf8'), join(dir, 'config.json'));
    const model = new ReferenceModel(cfg, TensorStore.openDir(dir));
    if (opts.adapterDir !== undefined) model.mergeAdapter(opts.adapterDir);
    return model;
  }

  /** A weight with its shape checked (loaded once). */
  private w(name: string, shape: number[]): Float64Array {
    let t = this.weights.get(name);
    if (!t) {
      t = this.store.readF64(name, shape);
      this.weights.set(name, t);
    }
    return t;
  }

  /** Copies the adapter's experts over the base's, after checking expert_cfg.json and the tensor set. */
  private mergeAdapter(dir: string): void {
    const cfgPath = join(dir, 'expert_cfg.json');
    const sel = JSON.parse(readFileSync(cfgPath, 'utf8')) as { experts: Record<string, number[]>; shared_experts?: boolean; non_expert_modules?: boolean };
    if (sel.shared_experts || sel.non_expert_modules) throw new Error(`${cfgPath}: adapter changes shared weights; no merged view`);
    const store = TensorStore.openDir(dir);
    const used = new Set<string>();
    const { hidden: H, moeIntermediate: I } = this.cfg;
    for (const [key, ids] of Object.entries(sel.experts)) {
      const l = Number(key);
      if (!isMoeLayer(this.cfg, l)) throw new Error(`${cfgPath}: layer ${key} is not a MoE layer`);
      for (const e of ids) {
        for (const [proj, shape] of [['gate_proj', [I, H]], ['up_proj', [I, H]], ['down_proj', [H, I]]] as const) {
          const name = `model.layers.${l}.mlp.experts.${e}.${proj}.weight`;
          const stored = store.has(name) ? name : name.slice('model.'.length);
          this.weights.set(name, store.readF64(stored, [...shape]));
          used.add(stored);
        }
      }
    }
    const extra = store.names().filter((n) => !used.has(n));
    if (extra.length > 0) throw new Error(`${dir}: tensors not listed in expert_cfg.json: ${extra.join(', ')}`);
  }

  private mlp(prefix: string, width: number, x: Float64Array): Float64Array {
    const H = this.cfg.hidden;
    const g = matvec(this.w(`${prefix}.gate_proj.weight`, [width, H]), width, H, x);
    const u = matvec(this.w(`${prefix}.up_proj.weight`, [width, H]), width, H, x);
    const a = new Float64Array(width);
    for (let i = 0; i < width; i++) a[i] = silu(g[i]) * u[i];
    return matvec(this.w(`${prefix}.down_proj.weight`, [H, width]), H, width, a);
  }

  private moe(l: number, x: Float64Array, margins: number[]): Float64Array {
    const { hidden: H, nRouted: M, moeIntermediate: I } = this.cfg;
    const p = `model.layers.${l}.mlp`;
    const r = route(softmax(matvec(this.w(`${p}.gate.weight`, [M, H]), M, H, x)), this.cfg);
    margins.push(r.margin);
    let y: Float64Array = new Float64Array(H);
    r.ids.forEach((e, j) => {
      const out = this.mlp(`${p}.experts.${e}`, I, x);
      for (let i = 0; i < H; i++) y[i] += r.weights[j] * out[i];
    });
    if (this.cfg.nShared > 0) y = add(y, this.mlp(`${p}.shared_experts`, I * this.cfg.nShared, x));
    return y;
  }

  /** MLA in the plain formulation: expand k_nope and v per head for every position. */
  private attention(l: number, xs: Float64Array[]): Float64Array[] {
    const c = this.cfg;
    const H = c.hidden;
    const qHead = c.nope + c.rope;
    const p = `model.layers.${l}.self_attn`;
    const T = xs.length;
    const q: Float64Array[][] = []; // [t][head]: q_nope | roped q_pe
    const k: Float64Array[][] = []; // [t][head]: k_nope | roped k_pe (shared by heads)
    const v: Float64Array[][] = []; // [t][head]
    for (let t = 0; t < T; t++) {
      let qAll: Float64Array;
      if (c.qLoraRank === null) {
        qAll = matvec(this.w(`${p}.q_proj.weight`, [c.heads * qHead, H]), c.heads * qHead, H, xs[t]);
      } else {
        const qa = matvec(this.w(`${p}.q_a_proj.weight`, [c.qLoraRank, H]), c.qLoraRank, H, xs[t]);
        const qn = rmsNorm(qa, this.w(`${p}.q_a_layernorm.weight`, [c.qLoraRank]), c.eps);
        qAll = matvec(this.w(`${p}.q_b_proj.weight`, [c.heads * qHead, c.qLoraRank]), c.heads * qHead, c.qLoraRank, qn);
      }
      const kva = matvec(this.w(`${p}.kv_a_proj_with_mqa.weight`, [c.kvLoraRank + c.rope, H]), c.kvLoraRank + c.rope, H, xs[t]);
      const ckv = rmsNorm(kva.subarray(0, c.kvLoraRank), this.w(`${p}.kv_a_layernorm.weight`, [c.kvLoraRank]), c.eps);
      const kPe = applyRope(kva.subarray(c.kvLoraRank), t, c);
      const kvWidth = c.nope + c.vDim;
      const kv = matvec(this.w(`${p}.kv_b_proj.weight`, [c.heads * kvWidth, c.kvLoraRank]), c.heads * kvWidth, c.kvLoraRank, ckv);
      q.push([]);
      k.push([]);
      v.push([]);
      for (let h = 0; h < c.heads; h++) {
        const qh = new Float64Array(qHead);
        qh.set(qAll.subarray(h * qHead, h * qHead + c.nope));
        qh.set(applyRope(qAll.subarray(h * qHead + c.nope, (h + 1) * qHead), t, c), c.nope);
        const kh = new Float64Array(qHead);
        kh.set(kv.subarray(h * kvWidth, h * kvWidth + c.nope));
        kh.set(kPe, c.nope);
        q[t].push(qh);
        k[t].push(kh);
        v[t].push(kv.slice(h * kvWidth + c.nope, (h + 1) * kvWidth));
      }
    }
    const scale = softmaxScale(c);
    const oProj = this.w(`${p}.o_proj.weight`, [H, c.heads * c.vDim]);
    const out: Float64Array[] = [];
    for (let t = 0; t < T; t++) {
      const concat = new Float64Array(c.heads * c.vDim);
      for (let h = 0; h < c.heads; h++) {
        const scores = new Float64Array(t + 1); // causal: keys 0..t
        for (let j = 0; j <= t; j++) {
          let s = 0;
          for (let d = 0; d < qHead; d++) s += q[t][h][d] * k[j][h][d];
          scores[j] = s * scale;
        }
        const probs = softmax(scores);
        for (let j = 0; j <= t; j++) for (let d = 0; d < c.vDim; d++) concat[h * c.vDim + d] += probs[j] * v[j][h][d];
      }
      out.push(matvec(oProj, H, c.heads * c.vDim, concat));
    }
    return out;
  }

  /** Logits at every position of `tokens` (positions 0, 1, ...). */
  forward(tokens: readonly number[]): ReferenceOutput {
    const c = this.cfg;
    const H = c.hidden;
    const embed = this.w('model.embed_tokens.weight', [c.vocab, H]);
    let xs: Float64Array[] = tokens.map((tok) => {
      if (!Number.isInteger(tok) || tok < 0 || tok >= c.vocab) throw new RangeError(`token ${tok} outside [0, ${c.vocab})`);
      return embed.slice(tok * H, (tok + 1) * H);
    });
    const margins: number[] = [];
    for (let l = 0; l < c.layers; l++) {
      const p = `model.layers.${l}`;
      const inNorm = this.w(`${p}.input_layernorm.weight`, [H]);
      const attn = this.attention(l, xs.map((x) => rmsNorm(x, inNorm, c.eps)));
      const hs = xs.map((x, t) => add(x, attn[t]));
      const postNorm = this.w(`${p}.post_attention_layernorm.weight`, [H]);
      xs = hs.map((h) => {
        const n = rmsNorm(h, postNorm, c.eps);
        return add(h, isMoeLayer(c, l) ? this.moe(l, n, margins) : this.mlp(`${p}.mlp`, c.intermediate, n));
      });
    }
    const finalNorm = this.w('model.norm.weight', [H]);
    const head = c.tieWordEmbeddings ? embed : this.w('lm_head.weight', [c.vocab, H]);
    return {
      logits: xs.map((x) => matvec(head, c.vocab, H, rmsNorm(x, finalNorm, c.eps))),
      minRouterMargin: Math.min(Infinity, ...margins),
    };
  }
}

/** Index of the largest value, ties to the lower index (greedy sampling). */
export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}
