// Random model fixtures for tests, generated once per test process.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import type { FloatDType } from '../../lib/safetensors/format.js';
import { TensorStore } from '../../lib/safetensors/reader.js';
import { writeSafetensors, type TensorToWrite } from '../../lib/safetensors/writer.js';

import { presetConfig, type AnyPresetName } from '../../tools/fixtures/families.js';
import { makeModel, type FixtureDType } from '../../tools/fixtures/model.js';
import { tempDir } from './tmp.js';

const cache = new Map<string, string>();

/** The directory of preset `preset` (any family) in `dtype` with `seed` (written on first use). */
export function presetModel(preset: AnyPresetName, dtype: FixtureDType = 'f32', seed = 1): string {
  const key = `${preset}-${dtype}-${seed}`;
  let dir = cache.get(key);
  if (!dir) {
    dir = join(tempDir('ew-fixture-'), key);
    makeModel(dir, presetConfig(preset), { dtype, seed });
    cache.set(key, dir);
  }
  return dir;
}

/** Deterministic token ids in [2, vocab) (0 and 1 are BOS/EOS in the presets). */
export function someTokens(n: number, vocab: number, salt = 0): number[] {
  return Array.from({ length: n }, (_, i) => 2 + ((i * 37 + salt * 11 + 5) % (vocab - 2)));
}

/**
 * Copies model `src` to a new directory, letting `edit` change the tensor list (as
 * name, dtype, shape, data) and `editConfig` the parsed config.json.
 */
export function editedModel(
  src: string,
  edit: (tensors: TensorToWrite[]) => TensorToWrite[] = (t) => t,
  editConfig: (cfg: Record<string, unknown>) => void = () => {},
): string {
  const dir = join(tempDir('ew-fixture-'), 'edited');
  mkdirSync(dir);
  const cfg = JSON.parse(readFileSync(join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
  editConfig(cfg);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
  const store = TensorStore.openDir(src);
  const tensors: TensorToWrite[] = store.names().map((name) => {
    const info = store.info(name);
    return { name, dtype: info.dtype as FloatDType, shape: info.shape, data: store.readF64(name) };
  });
  writeSafetensors(join(dir, 'model.safetensors'), edit(tensors));
  return dir;
}

const merged = new Map<string, string>();

/**
 * The "merged" checkpoint of base model `base` and ESFT adapter `adapterDir`: the base
 * with the adapter's experts copied over its own (written once per pair). Serving it
 * on row 0 is the independent expectation for serving the adapter over the base.
 */
export function mergedModel(base: string, adapterDir: string): string {
  const key = `${base}\0${adapterDir}`;
  let dir = merged.get(key);
  if (!dir) {
    const adapter = TensorStore.openDir(adapterDir);
    const stored = (name: string) => (adapter.has(name) ? name : adapter.has(name.slice('model.'.length)) ? name.slice('model.'.length) : undefined);
    const names = new Set(adapter.names());
    dir = editedModel(base, (tensors) =>
      tensors.map((t) => {
        const from = stored(t.name);
        if (from === undefined) return t;
        names.delete(from);
        return { ...t, data: adapter.readF64(from) };
      }),
    );
    if (names.size > 0) throw new Error(`mergedModel: ${adapterDir} has tensors the base lacks: ${[...names].join(', ')}`);
    merged.set(key, dir);
  }
  return dir;
}
