// Writes a merged checkpoint: a base model with one ESFT adapter's tuned experts
// copied over its own, as one model directory. This is what people serve today (a
// full copy per fine-tune) and the baseline the benchmarks compare against; a
// request for the adapter over the base must give exactly this model's output.
// Tensors are copied byte for byte (no conversion); the adapter must store the
// base's dtype and shapes, as the engine requires.
import { copyFileSync, mkdirSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

import { isFloatDType } from '../../lib/safetensors/format.js';
import { INDEX_FILE, TensorStore } from '../../lib/safetensors/reader.js';
import { writeSafetensors, type TensorToWrite } from '../../lib/safetensors/writer.js';

// A routed expert's matrix in any family's layout: DeepSeek / Qwen3-MoE
// mlp.experts.E.{gate,up,down}_proj, Mixtral block_sparse_moe.experts.E.{w1,w3,w2}.
const EXPERT = /^(?:model\.)?layers\.(\d+)\.(mlp|block_sparse_moe)\.experts\.(\d+)\.(gate_proj|up_proj|down_proj|w1|w2|w3)\.weight$/;
const MATS: Record<string, string[]> = { mlp: ['gate_proj', 'up_proj', 'down_proj'], block_sparse_moe: ['w1', 'w3', 'w2'] };

export interface MergeReport {
  /** Base tensors replaced by the adapter's. */
  replaced: number;
  tensors: number;
}

function fail(msg: string): never {
  throw new Error(`mergeAdapter: ${msg}`);
}

/** Reads expert_cfg.json: the layer -> expert ids map, refusing adapters that changed shared weights. */
function readSelection(adapterDir: string): Map<number, Set<number>> {
  const path = join(adapterDir, 'expert_cfg.json');
  let cfg: { experts?: unknown; shared_experts?: unknown; non_expert_modules?: unknown };
  try {
    cfg = JSON.parse(readFileSync(path, 'utf8')) as typeof cfg;
  } catch (e) {
    fail(`cannot read ${path} (${(e as Error).message})`);
  }
  if (cfg.shared_experts === true || cfg.non_expert_modules === true) {
    fail(`${path}: the adapter changed shared experts or non-expert modules; this tool merges routed-expert adapters only`);
  }
  if (typeof cfg.experts !== 'object' || cfg.experts === null) fail(`${path}: no "experts" map`);
  const out = new Map<number, Set<number>>();
  for (const [layer, ids] of Object.entries(cfg.experts as Record<string, unknown>)) {
    if (!Array.isArray(ids) || !ids.every(Number.isInteger)) fail(`${path}: layer ${layer} is not a list of expert ids`);
    out.set(Number(layer), new Set(ids as number[]));
  }
  return out;
}

/** Writes base + adapter to `outDir` (created; must be empty or absent). */
export function mergeAdapter(baseDir: string, adapterDir: string, outDir: string): MergeReport {
  const base = TensorStore.openDir(baseDir);
  const adapter = TensorStore.openDir(adapterDir);
  const selection = readSelection(adapterDir);

  // Adapter tensor name -> the base tensor it replaces (canonical "model." name).
  const replacement = new Map<string, string>();
  let block: string | undefined;
  for (const name of adapter.names()) {
    const m = EXPERT.exec(name);
    if (!m || !MATS[m[2]].includes(m[4])) fail(`${adapterDir}: tensor ${name} is not a routed expert weight`);
    const [layer, expert] = [Number(m[1]), Number(m[3])];
    if (block !== undefined && m[2] !== block) fail(`${adapterDir}: tensor ${name} mixes ${m[2]} with ${block} experts`);
    block = m[2];
    if (!selection.get(layer)?.has(expert)) fail(`${adapterDir}: tensor ${name} is for an expert expert_cfg.json does not list`);
    const target = `model.layers.${layer}.${block}.experts.${expert}.${m[4]}.weight`;
    if (!base.has(target)) fail(`${adapterDir}: tensor ${name} has no counterpart ${target} in ${baseDir}`);
    if ([...replacement.values()].includes(target)) fail(`${adapterDir}: ${target} is given twice (with and without "model.")`);
    const a = adapter.info(name);
    const b = base.info(target);
    if (a.dtype !== b.dtype || a.shape.join() !== b.shape.join()) {
      fail(`${adapterDir}: tensor ${name} is ${a.dtype} [${a.shape}], the base's ${target} is ${b.dtype} [${b.shape}]`);
    }
    replacement.set(target, name);
  }
  for (const [layer, ids] of selection) {
    for (const e of ids) {
      for (const mat of MATS[block ?? 'mlp']) {
        const target = `model.layers.${layer}.${block ?? 'mlp'}.experts.${e}.${mat}.weight`;
        if (!replacement.has(target)) fail(`${adapterDir}: expert_cfg.json lists expert ${e} of layer ${layer}, but ${target} is missing`);
      }
    }
  }

  mkdirSync(outDir, { recursive: true });
  if (readdirSync(outDir).length > 0) fail(`${outDir} is not empty`);
  // config.json, generation_config.json, tokenizer files: copied as they are.
  for (const f of readdirSync(baseDir)) {
    if (f.endsWith('.safetensors') || f === INDEX_FILE || !statSync(join(baseDir, f)).isFile()) continue;
    copyFileSync(join(baseDir, f), join(outDir, f));
  }
  const tensors: TensorToWrite[] = base.names().map((name) => {
    const info = base.info(name);
    if (!isFloatDType(info.dtype)) fail(`${baseDir}: tensor ${name} is ${info.dtype}; only F32/F16/BF16 models are merged`);
    const from = replacement.get(name);
    const bytes = from === undefined ? () => base.file(name).readBytes(name) : () => adapter.file(from).readBytes(from);
    return { name, dtype: info.dtype, shape: info.shape, data: { bytes } };
  });
  writeSafetensors(join(outDir, 'model.safetensors'), tensors, { format: 'pt' });
  return { replaced: replacement.size, tensors: tensors.length };
}
