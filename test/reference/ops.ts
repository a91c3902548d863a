// The float64 building blocks every family's reference is written from: plain loops,
// written for reading, not speed. Nothing here is shared with the engine.

/**
 * x rounded to bf16 (8 significant bits, nearest even), directly from the double: what a
 * bf16 cache stores of the exact value.
 */
export function roundToBf16(x: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  const v = new DataView(new ArrayBuffer(8));
  v.setFloat64(0, x);
  let hi = v.getUint32(0);
  const lo = v.getUint32(4);
  // bf16 keeps 7 of the double's 52 mantissa bits: drop the low 32 and 13 of the high word.
  const round = (hi >>> 12) & 1;
  const sticky = (hi & 0xfff) !== 0 || lo !== 0;
  const lsb = (hi >>> 13) & 1;
  hi = (hi >>> 13) << 13;
  if (round && (sticky || lsb)) hi += 1 << 13;
  v.setUint32(0, hi >>> 0);
  v.setUint32(4, 0);
  return v.getFloat64(0);
}

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

/** w * x / sqrt(mean(x^2) + eps) over all of x (the HF *RMSNorm modules). */
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

export const sigmoid = (x: number): number => 1 / (1 + Math.exp(-x));

export const silu = (x: number): number => x / (1 + Math.exp(-x));

export function add(a: ArrayLike<number>, b: ArrayLike<number>): Float64Array {
  const y = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) y[i] = a[i] + b[i];
  return y;
}

/** Indices of the k largest values, ties to the lower index. */
export function topIndices(values: ArrayLike<number>, k: number): number[] {
  const idx = Array.from({ length: values.length }, (_, i) => i);
  idx.sort((a, b) => values[b] - values[a] || a - b);
  return idx.slice(0, k);
}

/** Index of the largest value, ties to the lower index (greedy sampling). */
export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}
