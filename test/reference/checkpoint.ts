// A checkpoint's weights as float64 (read once, shapes checked), and the "merged" view
// of an ESFT adapter: the base with the adapter's routed experts copied over its own.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

import { TensorStore } from '../../lib/safetensors/reader.js';

export interface ExpertTensor {
  /** Full name, with the leading "model." (adapters may omit it, as older checkpoints do). */
  name: string;
  shape: number[];
}

/** What the adapter merge needs to know of a family: its MoE layers and expert tensor names. */
export interface ExpertLayout {
  layers: number;
  nRouted: number;
  isMoeLayer(l: number): boolean;
  expertTensors(l: number, e: number): ExpertTensor[];
}

/** The tensor names of the MLP `prefix`.{gate,up,down}_proj.weight (DeepSeek, Qwen). */
export const mlpNames = (prefix: string) => ({ gate: `${prefix}.gate_proj.weight`, up: `${prefix}.up_proj.weight`, down: `${prefix}.down_proj.weight` });

/** The layout of a family whose routed experts are SwiGLU MLPs named by `names(l, e)`. */
export function swigluExperts(o: {
  layers: number;
  nRouted: number;
  hidden: number;
  width: number;
  isMoeLayer(l: number): boolean;
  names(l: number, e: number): { gate: string; up: string; down: string };
}): ExpertLayout {
  const { hidden: H, width: I } = o;
  return {
    layers: o.layers,
    nRouted: o.nRouted,
    isMoeLayer: o.isMoeLayer,
    expertTensors: (l, e) => {
      const n = o.names(l, e);
      return [{ name: n.gate, shape: [I, H] }, { name: n.up, shape: [I, H] }, { name: n.down, shape: [H, I] }];
    },
  };
}

export class Weights {
  private readonly cache = new Map<string, Float64Array>();

  constructor(private readonly store: TensorStore) {}

  has(name: string): boolean {
    return this.cache.has(name) || this.store.has(name);
  }

  /** A weight with its shape checked (loaded once). */
  get(name: string, shape: number[]): Float64Array {
    let t = this.cache.get(name);
    if (!t) {
      t = this.store.readF64(name, shape);
      this.cache.set(name, t);
    }
    return t;
  }

  /**
   * Copies an ESFT adapter's experts over the base's after checking expert_cfg.json (no
   * shared-weight changes, only MoE layers, only routed ids) and that the adapter holds
   * exactly the listed experts' tensors.
   */
  mergeAdapter(dir: string, layout: ExpertLayout): void {
    const cfgPath = join(dir, 'expert_cfg.json');
    const sel = JSON.parse(readFileSync(cfgPath, 'utf8')) as { experts: Record<string, number[]>; shared_experts?: boolean; non_expert_modules?: boolean };
    if (sel.shared_experts || sel.non_expert_modules) throw new Error(`${cfgPath}: adapter changes shared weights; no merged view`);
    const store = TensorStore.openDir(dir);
    const used = new Set<string>();
    for (const [key, ids] of Object.entries(sel.experts)) {
      const l = Number(key);
      if (!Number.isInteger(l) || l < 0 || l >= layout.layers || !layout.isMoeLayer(l)) throw new Error(`${cfgPath}: layer ${key} is not a MoE layer`);
      for (const e of ids) {
        if (!Number.isInteger(e) || e < 0 || e >= layout.nRouted) throw new Error(`${cfgPath}: layer ${key}: expert ${e} is outside [0, ${layout.nRouted})`);
        for (const { name, shape } of layout.expertTensors(l, e)) {
          const stored = store.has(name) ? name : name.slice('model.'.length);
          this.cache.set(name, store.readF64(stored, shape));
          used.add(stored);
        }
      }
    }
    const extra = store.names().filter((n) => !used.has(n));
    if (extra.length > 0) throw new Error(`${dir}: tensors not listed in expert_cfg.json: ${extra.join(', ')}`);
  }
}

/** A model directory's weights, with the adapter of `opts.adapterDir` merged in. */
export function loadWeights(dir: string, layout: ExpertLayout, opts: { adapterDir?: string }): Weights {
  const w = new Weights(TensorStore.openDir(dir));
  if (opts.adapterDir !== undefined) w.mergeAdapter(opts.adapterDir, layout);
  return w;
}
