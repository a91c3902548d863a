import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { TensorStore } from '../../lib/safetensors/reader.js';
import { fitSelection, loadEsftSelection, makeAdapter } from '../../tools/fixtures/adapter.js';
import { buildConfig } from '../../tools/fixtures/config.js';
import { makeModel, modelPlan } from '../../tools/fixtures/model.js';
import { presetModel } from '../helpers/fixtures.js';
import { repoRoot } from '../helpers/paths.js';
import { tempDir } from '../helpers/tmp.js';

test('models are deterministic in the seed and identical whether sharded or not', () => {
  const root = tempDir();
  const cfg = buildConfig('tiny');
  makeModel(join(root, 'a'), cfg, { dtype: 'bf16', seed: 3 });
  makeModel(join(root, 'b'), cfg, { dtype: 'bf16', seed: 3 });
  makeModel(join(root, 'c'), cfg, { dtype: 'bf16', seed: 4 });
  makeModel(join(root, 'sharded'), cfg, { dtype: 'bf16', seed: 3, maxShardBytes: 16_000 });
  const bytes = (d: string) => readFileSync(join(root, d, 'model.safetensors'));
  assert.deepEqual(bytes('a'), bytes('b'));
  assert.notDeepEqual(bytes('a'), bytes('c'));
  const single = TensorStore.openDir(join(root, 'a'));
  const sharded = TensorStore.openDir(join(root, 'sharded'));
  assert.ok(sharded.files.length > 2);
  for (const name of single.names()) assert.deepEqual(sharded.readF64(name), single.readF64(name), name);
});

test('tensor names and shapes follow the published checkpoints for each preset', () => {
  const names = (preset: 'tiny' | 'tinyQLora' | 'tinyGrouped') => new Set(modelPlan(buildConfig(preset)).map((t) => t.name));
  const tiny = names('tiny');
  assert.ok(tiny.has('model.layers.0.mlp.gate_proj.weight'), 'layer 0 is dense');
  assert.ok(!tiny.has('model.layers.0.mlp.gate.weight'));
  assert.ok(tiny.has('model.layers.2.mlp.experts.7.down_proj.weight'));
  assert.ok(tiny.has('model.layers.1.mlp.shared_experts.up_proj.weight'));
  assert.ok(tiny.has('model.layers.1.self_attn.q_proj.weight') && !tiny.has('model.layers.1.self_attn.q_a_proj.weight'));
  const qlora = names('tinyQLora');
  for (const n of ['q_a_proj', 'q_a_layernorm', 'q_b_proj']) assert.ok(qlora.has(`model.layers.0.self_attn.${n}.weight`), n);
  assert.ok(!qlora.has('model.layers.0.self_attn.q_proj.weight'));
  const grouped = names('tinyGrouped');
  assert.ok(grouped.has('model.layers.2.mlp.gate.weight'));
  for (const l of [1, 3]) assert.ok(grouped.has(`model.layers.${l}.mlp.down_proj.weight`), `layer ${l} is off the MoE stride`);
  assert.ok(![...grouped].some((n) => n.includes('shared_experts')));

  const shapes = new Map(modelPlan(buildConfig('tiny')).map((t) => [t.name, t.shape]));
  assert.deepEqual(shapes.get('model.layers.1.self_attn.kv_a_proj_with_mqa.weight'), [16 + 4, 32]);
  assert.deepEqual(shapes.get('model.layers.1.self_attn.kv_b_proj.weight'), [2 * (8 + 8), 16]);
  assert.deepEqual(shapes.get('model.layers.1.self_attn.q_proj.weight'), [2 * 12, 32]);
  assert.deepEqual(shapes.get('model.layers.1.self_attn.o_proj.weight'), [32, 2 * 8]);
  assert.deepEqual(shapes.get('model.layers.1.mlp.shared_experts.gate_proj.weight'), [32, 32]);
  assert.deepEqual(shapes.get('model.layers.1.mlp.experts.3.down_proj.weight'), [32, 16]);
});

test('config.json carries the real key names and values', () => {
  const cfg = JSON.parse(readFileSync(join(presetModel('tinyGrouped', 'f16'), 'config.json'), 'utf8'));
  assert.equal(cfg.model_type, 'deepseek_v2');
  assert.equal(cfg.torch_dtype, 'float16');
  assert.equal(cfg.topk_method, 'group_limited_greedy');
  assert.equal(cfg.rope_scaling, null);
  const tiny = JSON.parse(readFileSync(join(presetModel('tiny'), 'config.json'), 'utf8'));
  assert.equal(tiny.q_lora_rank, null);
  assert.deepEqual(Object.keys(tiny.rope_scaling).sort(), ['beta_fast', 'beta_slow', 'factor', 'mscale', 'mscale_all_dim', 'original_max_position_embeddings', 'type']);
});

test('adapters: published layout, base dtype, optional legacy names, bad selections refused', () => {
  const base = presetModel('tiny', 'bf16');
  const root = tempDir();
  makeAdapter(join(root, 'a'), base, { 1: [2, 6], 2: [] });
  const cfg = JSON.parse(readFileSync(join(root, 'a', 'expert_cfg.json'), 'utf8'));
  assert.deepEqual(cfg, { experts: { 1: [2, 6], 2: [] }, shared_experts: false, non_expert_modules: false });
  const store = TensorStore.openDir(join(root, 'a'));
  assert.deepEqual(store.names().sort(), ['2', '6'].flatMap((e) => ['down', 'gate', 'up'].map((p) => `model.layers.1.mlp.experts.${e}.${p}_proj.weight`)).sort());
  assert.equal(store.info('model.layers.1.mlp.experts.2.gate_proj.weight').dtype, 'BF16');
  makeAdapter(join(root, 'legacy'), base, { 1: [2] }, { omitModelPrefix: true });
  assert.ok(TensorStore.openDir(join(root, 'legacy')).has('layers.1.mlp.experts.2.up_proj.weight'));
  assert.throws(() => makeAdapter(join(root, 'x'), base, { 0: [1] }), /layer 0 is not a MoE layer/);
  assert.throws(() => makeAdapter(join(root, 'x'), base, { 1: [8] }), /expert 8 is outside \[0, 8\)/);
  assert.throws(() => makeAdapter(join(root, 'x'), base, { 1: [3, 3] }), /expert 3 listed twice/);
});

test('the real ESFT selections load, and fit onto a tiny model', () => {
  const law = loadEsftSelection('law');
  assert.equal(Object.keys(law).length, 26);
  assert.equal(Object.values(law).reduce((s, ids) => s + ids.length, 0), 153);
  assert.deepEqual(law[1], [12, 40, 7, 13, 37, 16, 1, 17, 9]);
  const fitted = fitSelection(buildConfig('tiny'), law);
  assert.deepEqual(Object.keys(fitted), ['1', '2']);
  assert.deepEqual(fitted[1], [4, 0, 7, 5, 1]);
  assert.throws(() => loadEsftSelection('nonexistent'), /cannot read .*nonexistent\.json/);
});

test('the CLI writes a model and an adapter from a real selection', () => {
  const root = tempDir();
  const cli = join(repoRoot(), 'dist', 'tools', 'fixtures', 'cli.js');
  execFileSync(process.execPath, [cli, 'model', '--preset', 'tiny', '--dtype', 'f16', '--seed', '2', '--set', 'num_hidden_layers=2', '--out', join(root, 'm')]);
  const cfg = JSON.parse(readFileSync(join(root, 'm', 'config.json'), 'utf8'));
  assert.equal(cfg.num_hidden_layers, 2);
  execFileSync(process.execPath, [cli, 'adapter', '--model', join(root, 'm'), '--experts-from', 'intent', '--out', join(root, 'a')]);
  const sel = JSON.parse(readFileSync(join(root, 'a', 'expert_cfg.json'), 'utf8'));
  assert.deepEqual(Object.keys(sel.experts), ['1']);
  assert.equal(TensorStore.openDir(join(root, 'a')).info(`model.layers.1.mlp.experts.${sel.experts[1][0]}.up_proj.weight`).dtype, 'F16');
});
