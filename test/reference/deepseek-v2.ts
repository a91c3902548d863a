// The float64 reference of DeepSeek-V2 (HF modeling_deepseek.py), the engine's first
// family: the DeepSeek reference (deepseek.ts) restricted to model_type deepseek_v2,
// with the per-concern helpers the tests use under their V2 names. Nothing here is
// shared with the engine.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { loadWeights } from './checkpoint.js';
import type { ReferenceOptions } from './decoder.js';
import { DeepseekReference, expertLayout, isMoeLayer, parseDeepseekConfig, routerSpec, ropeTable, softmaxScale, type DeepseekConfig } from './deepseek.js';
import { interleavedRope, type RopeTable } from './rope.js';
import { selectExperts, type Routing } from './routing.js';

export type { ReferenceOptions, ReferenceOutput } from './decoder.js';
export type { Routing } from './routing.js';
export { argmax, matvec, rmsNorm, softmax } from './ops.js';
export { yarnFindCorrectionRange, yarnGetMscale } from './rope.js';
export { isMoeLayer, softmaxScale };

export type RefConfig = DeepseekConfig;

/** Reads a deepseek_v2 config.json, refusing anything the reference does not compute. */
export function parseRefConfig(text: string, origin = 'config.json'): RefConfig {
  const modelType = (JSON.parse(text) as { model_type?: unknown }).model_type;
  if (modelType !== 'deepseek_v2') throw new Error(`${origin}: model_type ${JSON.stringify(modelType)} is not deepseek_v2`);
  return parseDeepseekConfig(text, origin);
}

/** inv_freq per rotated pair (length rope/2) and the factors cos/sin and positions are multiplied by. */
export function ropeFrequencies(cfg: RefConfig): RopeTable {
  return ropeTable(cfg);
}

/** RoPE of one head's rope part at `pos` in DeepSeek's interleaved layout (result de-interleaved). */
export function applyRope(x: ArrayLike<number>, pos: number, cfg: RefConfig): Float64Array {
  return interleavedRope(x, pos, ropeTable(cfg));
}

/** Top-k routing of one token's softmax probabilities (MoEGate). */
export function route(probs: ArrayLike<number>, cfg: RefConfig): Routing {
  return selectExperts(probs, routerSpec(cfg));
}

export class ReferenceModel extends DeepseekReference {
  static override load(dir: string, opts: ReferenceOptions = {}): ReferenceModel {
    const path = join(dir, 'config.json');
    const cfg = parseRefConfig(readFileSync(path, 'utf8'), path);
    return new ReferenceModel(cfg, loadWeights(dir, expertLayout(cfg), opts), opts);
  }
}
