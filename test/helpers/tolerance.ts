// How close the engine's logits must be to the float64 reference (test/reference), per CPU
// path, KV cache element type and weight dtype; shared by the reference suites of every family.
import { roundsActivations, type NativeEngine } from '../../lib/engine/binding.js';
import type { FixtureDType } from '../../tools/fixtures/model.js';

/**
 * max |engine - reference| / max |reference| per logit row. The reference reads the same
 * dtype-rounded weights in float64 and stores its latent cache as the engine's does (exact
 * for an f32 cache, rounded to bf16 for a bf16 one), so only the engine's fp32 arithmetic
 * differs, in every dtype alike: with an f32 cache measured at most 6.8e-7 (AVX2 path) and
 * 8.1e-7 (EW_CPU_PATH=portable) over the V2 presets and dtypes; 1e-5 leaves a 12x margin for
 * other CPUs' summation, and a bf16-rounded output in one matmul (relative error up to 4e-3
 * per element) lands far above it. With a bf16 cache (the CPU default) a cached value within
 * fp32 rounding of a bf16 rounding boundary may round one way in the engine and the other in
 * the reference (measured 2.8e-5 once, on the portable path): 1e-4 there.
 * The paths that round matmul activations to bf16 (avx512-bf16, amx; the reference does not)
 * differ by up to 1.2e-2 (measured, avx512-bf16, bf16 weights; 6e-3 typical): 3e-2 there,
 * still far below what a wrong row or a missed expert gives (order 1). That rounding can also
 * choose another expert where the reference's routing is a near-tie (these fixtures have
 * margins down to 6e-7, where it did: 0.12), and from there a sequence's logits legitimately
 * differ: on those paths a position is compared only while every routing margin up to it
 * exceeds NEAR_TIE = 1e-3 (comparable(), below; 6 to 13 of 13 prefill positions on the V2 presets).
 * Coarse routers have scores an order of magnitude larger, so the same relative perturbation
 * moves them about ten times as far: sigmoid routers (DeepSeek-V3, Kimi-K2) score each expert
 * in (0, 1) on its own, and Mixtral's softmax spreads its unit mass over 8 experts, not 64-128
 * (measured: a 2.7e-3 Mixtral margin flipped on avx512-bf16): 1e-2 for those.
 */
const TOL_F32_CACHE = 1e-5;
const TOL_BF16_CACHE = 1e-4;
const TOL_BF16_ACTIVATIONS = 3e-2;
const NEAR_TIE = 1e-3;
const NEAR_TIE_COARSE = 1e-2;
const coarseRouter = (modelType: string) => ['deepseek_v3', 'kimi_k2', 'mixtral'].includes(modelType);
/** Positions [0, n) of a reference run the engine's logits are compared at (see above). */
export function comparable(engine: NativeEngine, weights: FixtureDType, want: { routerMargins: number[] }): number {
  const info = engine.info();
  if (!(roundsActivations(info.cpuPath) && weights === 'bf16')) return want.routerMargins.length;
  const nearTie = coarseRouter(info.modelType) ? NEAR_TIE_COARSE : NEAR_TIE;
  const first = want.routerMargins.findIndex((m) => m < nearTie);
  return first < 0 ? want.routerMargins.length : first;
}
/** The tolerance of an engine's logits against the reference: its path and its cache decide. */
export function tolerance(engine: NativeEngine, weights: FixtureDType): number {
  const info = engine.info();
  if (roundsActivations(info.cpuPath) && weights === 'bf16') return TOL_BF16_ACTIVATIONS;
  return info.kvCacheDtype === 'bf16' ? TOL_BF16_CACHE : TOL_F32_CACHE;
}
