// Order statistics, spreads and paired comparisons for the benchmarks. Pure functions
// (no clock, no I/O), so tests check them against hand-computed values.

function sorted(xs: readonly number[]): number[] {
  return [...xs].sort((a, b) => a - b);
}

/**
 * The q-quantile (0 <= q <= 1) by linear interpolation between order statistics
 * (numpy's default, "type 7"): q = 0.5 of [1, 2, 3, 4] is 2.5. NaN for no values.
 */
export function quantile(xs: readonly number[], q: number): number {
  if (!(q >= 0 && q <= 1)) throw new RangeError(`quantile: q must be in [0, 1], got ${q}`);
  if (xs.length === 0) return NaN;
  const s = sorted(xs);
  const at = q * (s.length - 1);
  const lo = Math.floor(at);
  const hi = Math.min(lo + 1, s.length - 1);
  return s[lo] + (s[hi] - s[lo]) * (at - lo);
}

export const median = (xs: readonly number[]): number => quantile(xs, 0.5);

export function mean(xs: readonly number[]): number {
  if (xs.length === 0) return NaN;
  let s = 0;
  for (const x of xs) s += x;
  return s / xs.length;
}

/** Sample standard deviation (n - 1); NaN below two values. */
export function stddev(xs: readonly number[]): number {
  if (xs.length < 2) return NaN;
  const m = mean(xs);
  let s = 0;
  for (const x of xs) s += (x - m) ** 2;
  return Math.sqrt(s / (xs.length - 1));
}

export interface Summary {
  n: number;
  min: number;
  p50: number;
  p99: number;
  max: number;
  mean: number;
}

export function summarize(xs: readonly number[]): Summary {
  if (xs.length === 0) return { n: 0, min: NaN, p50: NaN, p99: NaN, max: NaN, mean: NaN };
  const s = sorted(xs);
  return { n: s.length, min: s[0], p50: quantile(s, 0.5), p99: quantile(s, 0.99), max: s[s.length - 1], mean: mean(s) };
}

/** A central value with the range it was seen in over repeats. */
export interface Spread {
  /** Median over the repeats. */
  value: number;
  min: number;
  max: number;
  n: number;
}

export function spread(xs: readonly number[]): Spread {
  const s = sorted(xs.filter((x) => !Number.isNaN(x)));
  if (s.length === 0) return { value: NaN, min: NaN, max: NaN, n: 0 };
  return { value: quantile(s, 0.5), min: s[0], max: s[s.length - 1], n: s.length };
}

/** Per-repeat ratios a[i] / b[i] (paired by index) summarised as a spread. */
export function pairedRatios(a: readonly number[], b: readonly number[]): Spread {
  if (a.length !== b.length) throw new RangeError(`pairedRatios: ${a.length} values against ${b.length}`);
  return spread(a.map((x, i) => x / b[i]));
}

/** A deterministic PRNG (mulberry32) so that resampling gives the same interval on every run. */
function rng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    let t = (state = (state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Interval {
  estimate: number;
  lo: number;
  hi: number;
}

/**
 * Percentile-bootstrap confidence interval of the median of `xs` (e.g. paired
 * differences): `level` (0.95) of `resamples` medians of resampled data fall in [lo, hi].
 * Seeded, so the same data always give the same interval.
 */
export function bootstrapMedianCI(xs: readonly number[], level = 0.95, resamples = 2000, seed = 1): Interval {
  if (xs.length === 0) return { estimate: NaN, lo: NaN, hi: NaN };
  const rand = rng(seed);
  const n = xs.length;
  const meds = new Float64Array(resamples);
  const buf = new Array<number>(n);
  for (let r = 0; r < resamples; r++) {
    for (let i = 0; i < n; i++) buf[i] = xs[Math.floor(rand() * n)];
    meds[r] = median(buf);
  }
  const m = [...meds];
  const tail = (1 - level) / 2;
  return { estimate: median(xs), lo: quantile(m, tail), hi: quantile(m, 1 - tail) };
}

export type Verdict = 'resolved' | 'bounded' | 'unresolved';

/**
 * What a paired difference's interval says against a tolerance: 'resolved' when it
 * excludes 0 (the sign is known), 'bounded' when it contains 0 but lies within
 * [-tolerance, +tolerance] (the difference is below the tolerance), else 'unresolved'.
 */
export function verdict(ci: Interval, tolerance: number): Verdict {
  if (ci.lo > 0 || ci.hi < 0) return 'resolved';
  if (ci.lo >= -tolerance && ci.hi <= tolerance) return 'bounded';
  return 'unresolved';
}
