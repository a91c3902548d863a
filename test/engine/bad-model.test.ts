// loadEngine on broken model directories must reject with a message that says what
// is wrong and where, never crash or load something half-right.
import assert from 'node:assert/strict';
import { copyFileSync, mkdirSync, statSync, truncateSync } from 'node:fs';
import { join } from 'node:path';

import { CPU_ENGINE, addon, withAddon } from '../helpers/engine.js';
import { editedModel, presetModel } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/tmp.js';

const native = addon();
const { describe, test } = withAddon();

async function rejects(dir: string, ...patterns: RegExp[]): Promise<void> {
  if ('skip' in native) throw new Error(native.skip);
  await assert.rejects(native.binding.loadEngine(dir, CPU_ENGINE), (e: unknown) => {
    assert.ok(e instanceof Error, 'rejects with an Error');
    for (const p of patterns) assert.match(e.message, p);
    return true;
  });
}

const KV_B = 'model.layers.1.self_attn.kv_b_proj.weight';

describe('loadEngine refuses bad model directories', () => {
  test('a missing tensor is named', async () => {
    const dir = editedModel(presetModel('tiny'), (ts) => ts.filter((t) => t.name !== KV_B));
    await rejects(dir, new RegExp(KV_B.replaceAll('.', '\\.')), /missing|not found|absent/i);
  });

  test('a tensor of the wrong shape is named with its shape', async () => {
    const dir = editedModel(presetModel('tiny'), (ts) =>
      ts.map((t) => (t.name === KV_B ? { ...t, shape: [t.shape[1], t.shape[0]] } : t)),
    );
    await rejects(dir, new RegExp(KV_B.replaceAll('.', '\\.')), /shape/i);
  });

  test('a truncated safetensors file is refused naming the file', async () => {
    const dir = join(tempDir(), 'truncated');
    mkdirSync(dir);
    const src = presetModel('tiny');
    copyFileSync(join(src, 'config.json'), join(dir, 'config.json'));
    copyFileSync(join(src, 'model.safetensors'), join(dir, 'model.safetensors'));
    truncateSync(join(dir, 'model.safetensors'), statSync(join(dir, 'model.safetensors')).size - 100);
    await rejects(dir, /model\.safetensors/);
  });

  test('an unsupported model_type is refused naming the key', async () => {
    const dir = editedModel(presetModel('tiny'), undefined, (cfg) => (cfg.model_type = 'llama'));
    await rejects(dir, /model_type/, /llama/);
  });

  test('scoring_func sigmoid is refused naming the key', async () => {
    const dir = editedModel(presetModel('tiny'), undefined, (cfg) => (cfg.scoring_func = 'sigmoid'));
    await rejects(dir, /scoring_func/, /sigmoid/);
  });

  test('a directory without config.json is refused', async () => {
    const dir = join(tempDir(), 'noconfig');
    mkdirSync(dir);
    copyFileSync(join(presetModel('tiny'), 'model.safetensors'), join(dir, 'model.safetensors'));
    await rejects(dir, /config\.json/);
  });

  test('a directory that does not exist is refused naming it', async () => {
    await rejects(join(tempDir(), 'nowhere'), /nowhere/);
  });
});
