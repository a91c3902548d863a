// The float64 reference of Mixtral (HF transformers modeling_mixtral.py,
// MixtralForCausalLM): GQA without q/k norms, rotate_half RoPE (gqa.ts), no biases; every
// layer is MoE (block_sparse_moe) with num_local_experts experts of width intermediate_size,
// named w1 (gate), w3 (up), w2 (down): expert(x) = w2 · (silu(w1·x) * (w3·x)); no shared experts.
// Routing (MixtralSparseMoeBlock): p = softmax(W_gate·x); ids = top-k(p); w = p[ids] / sum(p[ids])
//   (always renormalised over the chosen; no epsilon, no scaling factor).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { loadWeights } from './checkpoint.js';
import { ConfigKeys } from './config-keys.js';
import type { ReferenceOptions } from './decoder.js';
import { GqaMoeReference, gqaMoeExperts, gqaShape, parseGqaCommon, type GqaCommonConfig, type GqaMoeLayout } from './gqa.js';
import type { RouterSpec } from './routing.js';

export interface MixtralConfig extends GqaCommonConfig {
  /** One expert's width. */
  intermediate: number;
  nExperts: number;
  topK: number;
}

export function parseMixtralConfig(text: string, origin = 'config.json'): MixtralConfig {
  const k = new ConfigKeys(text, origin);
  k.modelType('mixtral');
  k.only('sliding_window', [null], 'is not supported (sliding-window attention)');
  const cfg: MixtralConfig = {
    ...parseGqaCommon(k, { ropeTheta: 1e6, eps: 1e-5 }),
    intermediate: k.int('intermediate_size'),
    nExperts: k.int('num_local_experts'),
    topK: k.intOr('num_experts_per_tok', 2),
  };
  if (cfg.topK > cfg.nExperts) k.fail('num_experts_per_tok', `exceeds num_local_experts ${cfg.nExperts}`);
  return cfg;
}

export function routerSpec(cfg: MixtralConfig): RouterSpec {
  return { scoring: 'softmax', topK: cfg.topK, method: 'greedy', nGroup: 1, topkGroup: 1, normalize: true, normEps: 0, scale: 1 };
}

/** The Mixtral instance of the GQA + MoE decoder. */
export function mixtralLayout(cfg: MixtralConfig): GqaMoeLayout {
  return {
    ...gqaShape(cfg, false),
    router: routerSpec(cfg),
    nExperts: cfg.nExperts,
    expertWidth: cfg.intermediate,
    denseWidth: cfg.intermediate,
    isMoeLayer: (l) => l >= 0 && l < cfg.layers,
    routerName: (l) => `model.layers.${l}.block_sparse_moe.gate.weight`,
    expertNames: (l, e) => {
      const p = `model.layers.${l}.block_sparse_moe.experts.${e}`;
      return { gate: `${p}.w1.weight`, up: `${p}.w3.weight`, down: `${p}.w2.weight` };
    },
    denseNames: () => {
      throw new Error('mixtral has no dense layers');
    },
  };
}

export class MixtralReference extends GqaMoeReference {
  static load(dir: string, opts: ReferenceOptions = {}): MixtralReference {
    const path = join(dir, 'config.json');
    const layout = mixtralLayout(parseMixtralConfig(readFileSync(path, 'utf8'), path));
    return new MixtralReference(layout, loadWeights(dir, gqaMoeExperts(layout), opts), opts);
  }
}
