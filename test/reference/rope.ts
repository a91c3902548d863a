// Rotary position embeddings in float64: the inverse frequencies (plain, linear, and
// yarn as DeepseekV2/V3YarnRotaryEmbedding computes them) and the two layouts the
// families store their rotated dimensions in.

export interface RopeScaling {
  type: 'yarn' | 'linear';
  factor: number;
  original: number;
  betaFast: number;
  betaSlow: number;
  mscale: number;
  mscaleAllDim: number;
}

export interface RopeSpec {
  /** Rotated dimensions per head (even). */
  dim: number;
  theta: number;
  /** null: plain RoPE. */
  scaling: RopeScaling | null;
}

export interface RopeTable {
  /** Per rotated pair (dim/2). */
  invFreq: Float64Array;
  /** cos and sin are multiplied by this (yarn's attention factor). */
  cosSinScale: number;
  /** Positions are multiplied by this (linear scaling). */
  positionScale: number;
}

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

export function ropeFrequencies(spec: RopeSpec): RopeTable {
  const { dim, theta } = spec;
  const half = dim / 2;
  const invFreq = new Float64Array(half);
  const s = spec.scaling;
  for (let i = 0; i < half; i++) invFreq[i] = 1 / theta ** ((2 * i) / dim);
  if (s === null) return { invFreq, cosSinScale: 1, positionScale: 1 };
  if (s.type === 'linear') return { invFreq, cosSinScale: 1, positionScale: 1 / s.factor };
  const [low, high0] = yarnFindCorrectionRange(s.betaFast, s.betaSlow, dim, theta, s.original);
  const high = low === high0 ? high0 + 0.001 : high0; // yarn_linear_ramp_mask's guard
  for (let i = 0; i < half; i++) {
    const freqExtra = 1 / theta ** ((2 * i) / dim);
    const freqInter = 1 / (s.factor * theta ** ((2 * i) / dim));
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
 * rotate_half RoPE (HF apply_rotary_pos_emb, GPT-NeoX layout) of `x` at `pos`: pair j is
 * (x[j], x[j + d/2]), rotated by pos * invFreq[j]. Qwen3-MoE and Mixtral store this layout.
 */
export function rotateHalf(x: ArrayLike<number>, pos: number, t: RopeTable): Float64Array {
  const d = x.length;
  const half = d / 2;
  const out = new Float64Array(d);
  for (let j = 0; j < half; j++) {
    const angle = pos * t.positionScale * t.invFreq[j];
    const cos = Math.cos(angle) * t.cosSinScale;
    const sin = Math.sin(angle) * t.cosSinScale;
    out[j] = x[j] * cos - x[half + j] * sin;
    out[half + j] = x[half + j] * cos + x[j] * sin;
  }
  return out;
}

/**
 * DeepSeek's layout: the checkpoint stores the rotated dims as interleaved pairs
 * (0,1), (2,3), ...; the HF code de-interleaves them (view(d/2, 2).transpose) and then
 * applies rotate_half. The result is in de-interleaved order, which dot products
 * between two such vectors do not see.
 */
export function interleavedRope(x: ArrayLike<number>, pos: number, t: RopeTable): Float64Array {
  const half = x.length / 2;
  const y = new Float64Array(x.length); // y[j] = x[2j], y[half + j] = x[2j + 1]
  for (let j = 0; j < half; j++) {
    y[j] = x[2 * j];
    y[half + j] = x[2 * j + 1];
  }
  return rotateHalf(y, pos, t);
}
