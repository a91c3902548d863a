// MoE routing in float64, one function for every family: scores, top-k (optionally
// group-limited, optionally chosen on bias-corrected scores), normalisation and scaling.
// Each family's config parser decides the spec; the rules differ in small ways that
// break naive ports (see each family's routerSpec).
import { sigmoid, softmax, topIndices } from './ops.js';

export interface RouterSpec {
  scoring: 'softmax' | 'sigmoid';
  topK: number;
  /**
   * greedy: top-k of the scores. group_limited_greedy (DeepSeek-V2): groups ranked by
   * their best score, experts outside the top groups scored 0. noaux_tc (DeepSeek-V3):
   * experts chosen on score + e_score_correction_bias, groups ranked by the sum of
   * their two best biased scores, experts outside the top groups never chosen.
   */
  method: 'greedy' | 'group_limited_greedy' | 'noaux_tc';
  nGroup: number;
  topkGroup: number;
  /** weights / (sum(weights) + normEps) */
  normalize: boolean;
  normEps: number;
  /** Multiplies the (normalised) weights. */
  scale: number;
}

export interface Routing {
  ids: number[];
  weights: number[];
  /** Gap between the last chosen and the first unchosen score (and group score): how far from a tie. */
  margin: number;
}

export function routerScores(logits: ArrayLike<number>, scoring: RouterSpec['scoring']): Float64Array {
  return scoring === 'softmax' ? softmax(logits) : Float64Array.from(logits, sigmoid);
}

function gap(v: ArrayLike<number>, chosen: number[]): number {
  let best = -Infinity;
  for (let i = 0; i < v.length; i++) if (!chosen.includes(i)) best = Math.max(best, v[i]);
  return Math.min(...chosen.map((i) => v[i])) - best;
}

/** Group g's score over `choice` (experts g*per .. g*per+per-1). */
function groupScore(choice: ArrayLike<number>, g: number, per: number, method: RouterSpec['method']): number {
  const members = Array.from({ length: per }, (_, j) => choice[g * per + j]).sort((a, b) => b - a);
  return method === 'noaux_tc' ? members[0] + members[1] : members[0];
}

/**
 * Top-k routing of one token's scores (after softmax or sigmoid). `bias` is DeepSeek-V3's
 * e_score_correction_bias: it changes which experts are chosen, never their weights.
 * Ties go to the lower id (and the lower group).
 */
export function selectExperts(scores: ArrayLike<number>, spec: RouterSpec, bias?: ArrayLike<number>): Routing {
  if ((spec.method === 'noaux_tc') !== (bias !== undefined)) throw new Error(`selectExperts: ${spec.method} ${bias ? 'takes no' : 'needs a'} correction bias`);
  const n = scores.length;
  const choice = bias ? Float64Array.from(scores, (s, e) => s + bias[e]) : scores;
  let masked: ArrayLike<number> = choice;
  let margin = Infinity;
  if (spec.method !== 'greedy' && spec.nGroup > 1) {
    const per = n / spec.nGroup;
    const groupScores = Float64Array.from({ length: spec.nGroup }, (_, g) => groupScore(choice, g, per, spec.method));
    const groups = topIndices(groupScores, spec.topkGroup);
    margin = gap(groupScores, groups);
    // HF V2 fills the closed groups with 0 (scores are >= 0 there); for V3, DeepSeek's
    // inference code, vLLM and SGLang fill -inf, HF's 0.0 (see deepseek.ts).
    const closed = spec.method === 'noaux_tc' ? -Infinity : 0;
    masked = Float64Array.from(choice, (s, e) => (groups.includes(Math.floor(e / per)) ? s : closed));
  }
  const ids = topIndices(masked, spec.topK);
  margin = Math.min(margin, gap(masked, ids));
  // V2's weights are the (masked) scores it chose on; V3's are the unbiased scores.
  let weights = ids.map((e) => (bias ? scores[e] : masked[e]));
  if (spec.normalize) {
    const denom = weights.reduce((s, w) => s + w, 0) + spec.normEps;
    weights = weights.map((w) => w / denom);
  }
  if (spec.scale !== 1) weights = weights.map((w) => w * spec.scale);
  return { ids, weights, margin };
}
