// The fixture writers of qwen3_moe, deepseek_v3 and mixtral: what they write loads in the
// safetensors reader under the published names and shapes, config.json carries the real
// keys (and parses in the reference), and ESFT adapters use each family's expert names.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { numel } from '../../lib/safetensors/format.js';
import { TensorStore } from '../../lib/safetensors/reader.js';
import { checkSelection, fitSelection, loadEsftSelection, makeAdapter } from '../../tools/fixtures/adapter.js';
import { ALL_PRESETS, familyOf, moeLayers, presetConfig, type AnyPresetName } from '../../tools/fixtures/families.js';
import { modelPlan } from '../../tools/fixtures/model.js';
import { presetModel } from '../helpers/fixtures.js';
import { repoRoot } from '../helpers/paths.js';
import { tempDir } from '../helpers/tmp.js';
import { parseDeepseekConfig } from '../reference/deepseek.js';
import { parseMixtralConfig } from '../reference/mixtral.js';
import { parseQwen3MoeConfig } from '../reference/qwen3-moe.js';

const TINY: AnyPresetName[] = ['qwen3Tiny', 'qwen3TinySparse', 'v3Tiny', 'v3TinyMoonlight', 'mixtralTiny'];

test('every tiny preset writes the tensors of its plan, with the planned shapes, in each dtype', () => {
  for (const preset of TINY) {
    const plan = modelPlan(presetConfig(preset));
    for (const dtype of ['f32', 'bf16'] as const) {
      const store = TensorStore.openDir(presetModel(preset, dtype));
      assert.deepEqual(store.names().sort(), plan.map((t) => t.name).sort(), `${preset} ${dtype}`);
      for (const t of plan) {
        const info = store.info(t.name);
        assert.deepEqual(info.shape, t.shape, t.name);
        assert.equal(info.dtype, t.f32 || dtype === 'f32' ? 'F32' : 'BF16', t.name);
      }
    }
  }
});

test('published tensor names and shapes: Qwen3-MoE', () => {
  const shapes = new Map(modelPlan(presetConfig('qwen3Tiny')).map((t) => [t.name, t.shape]));
  const p = 'model.layers.0';
  assert.deepEqual(shapes.get(`${p}.self_attn.q_proj.weight`), [4 * 16, 32]);
  assert.deepEqual(shapes.get(`${p}.self_attn.k_proj.weight`), [2 * 16, 32]);
  assert.deepEqual(shapes.get(`${p}.self_attn.v_proj.weight`), [2 * 16, 32]);
  assert.deepEqual(shapes.get(`${p}.self_attn.o_proj.weight`), [32, 4 * 16]);
  assert.deepEqual(shapes.get(`${p}.self_attn.q_norm.weight`), [16]);
  assert.deepEqual(shapes.get(`${p}.self_attn.k_norm.weight`), [16]);
  assert.deepEqual(shapes.get(`${p}.mlp.gate.weight`), [8, 32]);
  assert.deepEqual(shapes.get(`${p}.mlp.experts.7.down_proj.weight`), [32, 16]);
  assert.ok(shapes.has('lm_head.weight') && ![...shapes.keys()].some((n) => n.includes('shared_expert') || n.includes('bias')));
  const sparse = new Set(modelPlan(presetConfig('qwen3TinySparse')).map((t) => t.name));
  assert.ok(!sparse.has('lm_head.weight'), 'tied embeddings: no lm_head');
  assert.ok(sparse.has('model.layers.0.mlp.gate_proj.weight') && sparse.has('model.layers.3.mlp.experts.0.up_proj.weight'));
});

test('published tensor names and shapes: DeepSeek-V3, with one MTP layer', () => {
  const plan = modelPlan(presetConfig('v3Tiny'));
  const shapes = new Map(plan.map((t) => [t.name, t.shape]));
  assert.ok(shapes.has('model.layers.0.mlp.gate_proj.weight') && !shapes.has('model.layers.0.mlp.gate.e_score_correction_bias'), 'layer 0 is dense');
  assert.deepEqual(shapes.get('model.layers.1.mlp.gate.e_score_correction_bias'), [16]);
  assert.ok(plan.find((t) => t.name === 'model.layers.1.mlp.gate.e_score_correction_bias')!.f32);
  assert.deepEqual(shapes.get('model.layers.1.self_attn.q_a_proj.weight'), [12, 32]);
  assert.deepEqual(shapes.get('model.layers.1.self_attn.q_b_proj.weight'), [2 * 12, 12]);
  assert.deepEqual(shapes.get('model.layers.2.mlp.shared_experts.gate_proj.weight'), [16, 32]);
  assert.deepEqual(shapes.get('model.layers.3.eh_proj.weight'), [32, 64]);
  assert.deepEqual(shapes.get('model.layers.3.shared_head.head.weight'), [64, 32]);
  assert.deepEqual(shapes.get('model.layers.3.mlp.experts.15.down_proj.weight'), [32, 16]);
  assert.ok(!shapes.has('model.layers.4.enorm.weight'));
  assert.deepEqual(moeLayers(presetConfig('v3Tiny')), [1, 2], 'the MTP layer is not a decoding layer');
  const moonlight = new Set(modelPlan(presetConfig('v3TinyMoonlight')).map((t) => t.name));
  assert.ok(moonlight.has('model.layers.1.self_attn.q_proj.weight') && !moonlight.has('model.layers.3.enorm.weight'));
});

test('published tensor names and shapes: Mixtral', () => {
  const shapes = new Map(modelPlan(presetConfig('mixtralTiny')).map((t) => [t.name, t.shape]));
  const p = 'model.layers.2.block_sparse_moe';
  assert.deepEqual(shapes.get(`${p}.gate.weight`), [8, 32]);
  assert.deepEqual(shapes.get(`${p}.experts.7.w1.weight`), [24, 32]);
  assert.deepEqual(shapes.get(`${p}.experts.7.w3.weight`), [24, 32]);
  assert.deepEqual(shapes.get(`${p}.experts.7.w2.weight`), [32, 24]);
  assert.deepEqual(shapes.get('model.layers.0.self_attn.k_proj.weight'), [2 * 8, 32]);
  const names = [...shapes.keys()];
  assert.ok(!names.some((n) => n.includes('.mlp.')), 'no mlp.* tensors');
  assert.ok(!names.some((n) => /self_attn\.[qk]_norm/.test(n)), 'no q/k norms');
});

test('config.json: the published keys, and it parses in the reference', () => {
  const read = (preset: AnyPresetName, dtype: 'f32' | 'bf16' = 'f32') => {
    const path = join(presetModel(preset, dtype), 'config.json');
    return { text: readFileSync(path, 'utf8'), json: JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown> };
  };
  const q = read('qwen3Tiny', 'bf16');
  assert.deepEqual(q.json.architectures, ['Qwen3MoeForCausalLM']);
  assert.equal(q.json.torch_dtype, 'bfloat16');
  for (const key of ['num_experts', 'num_experts_per_tok', 'moe_intermediate_size', 'norm_topk_prob', 'decoder_sparse_step', 'mlp_only_layers', 'head_dim', 'num_key_value_heads', 'rope_theta', 'use_sliding_window', 'tie_word_embeddings']) {
    assert.ok(key in q.json, `qwen3_moe: ${key}`);
  }
  assert.equal(parseQwen3MoeConfig(q.text).headDim, 16);
  const v = read('v3Tiny');
  assert.deepEqual(v.json.architectures, ['DeepseekV3ForCausalLM']);
  assert.deepEqual([v.json.model_type, v.json.scoring_func, v.json.topk_method, v.json.n_group, v.json.topk_group, v.json.num_nextn_predict_layers], ['deepseek_v3', 'sigmoid', 'noaux_tc', 4, 2, 1]);
  assert.equal(parseDeepseekConfig(v.text).modelType, 'deepseek_v3');
  const m = read('mixtralTiny');
  assert.deepEqual(m.json.architectures, ['MixtralForCausalLM']);
  assert.equal(m.json.sliding_window, null);
  assert.ok(!('head_dim' in m.json), 'Mixtral configs carry no head_dim');
  assert.equal(parseMixtralConfig(m.text).nExperts, 8);
});

test('the benchmark and full-size presets have the published shapes (planned, not written)', () => {
  const shaped = presetConfig('qwen3A3bShaped');
  const full = presetConfig('qwen3_30bA3b');
  for (const k of ['num_experts', 'num_experts_per_tok', 'head_dim', 'norm_topk_prob', 'rope_theta'] as const) assert.equal(shaped[k], full[k], k);
  assert.deepEqual([full.num_experts, full.num_experts_per_tok, full.num_attention_heads, full.num_key_value_heads, full.head_dim], [128, 8, 32, 4, 128]);
  assert.equal(shaped.num_attention_heads / shaped.num_key_value_heads, 8, 'GQA group of 8 as the published 32/4');
  assert.equal(shaped.moe_intermediate_size / shaped.hidden_size, full.moe_intermediate_size / full.hidden_size);
  const bytes = modelPlan(shaped).reduce((s, t) => s + 2 * numel(t.shape), 0);
  assert.ok(bytes > 1.0e9 && bytes < 1.4e9, `qwen3A3bShaped: ${bytes} bf16 bytes`);
  assert.equal(parseQwen3MoeConfig(JSON.stringify(familyOf(full).configJson(full, 'bfloat16'))).nExperts, 128);
  const moon = presetConfig('moonlight');
  assert.deepEqual([moon.n_routed_experts, moon.num_experts_per_tok, moon.n_shared_experts, moon.q_lora_rank, moon.n_group, moon.routed_scaling_factor], [64, 6, 2, null, 1, 2.446]);
  assert.equal(parseDeepseekConfig(JSON.stringify(familyOf(moon).configJson(moon, 'bfloat16'))).layers, 27);
  for (const name of Object.keys(ALL_PRESETS) as AnyPresetName[]) assert.equal(familyOf(presetConfig(name)).modelType, presetConfig(name).model_type, name);
});

test('adapters of every family: the family\'s expert names, the base dtype, selections fitted from the real ESFT data', () => {
  const root = tempDir();
  const law = loadEsftSelection('law');
  const expected: Record<string, (l: number, e: number) => string[]> = {
    qwen3Tiny: (l, e) => ['gate', 'up', 'down'].map((p) => `model.layers.${l}.mlp.experts.${e}.${p}_proj.weight`),
    v3Tiny: (l, e) => ['gate', 'up', 'down'].map((p) => `model.layers.${l}.mlp.experts.${e}.${p}_proj.weight`),
    mixtralTiny: (l, e) => ['w1', 'w2', 'w3'].map((w) => `model.layers.${l}.block_sparse_moe.experts.${e}.${w}.weight`),
  };
  for (const [preset, names] of Object.entries(expected) as [AnyPresetName, (l: number, e: number) => string[]][]) {
    const cfg = presetConfig(preset);
    const fitted = fitSelection(cfg, law);
    const n = familyOf(cfg).routedExperts(cfg);
    assert.deepEqual(Object.keys(fitted).map(Number), moeLayers(cfg).filter((l) => String(l) in law), preset);
    assert.deepEqual(fitted[1], [...new Set(law[1].map((e) => e % n))], preset);
    const dir = join(root, preset);
    makeAdapter(dir, presetModel(preset, 'bf16'), fitted);
    const store = TensorStore.openDir(dir);
    const want = Object.entries(fitted).flatMap(([l, ids]) => ids.flatMap((e) => names(Number(l), e)));
    assert.deepEqual(store.names().sort(), want.sort(), preset);
    assert.ok(store.names().every((name) => store.info(name).dtype === 'BF16'), preset);
    const sel = JSON.parse(readFileSync(join(dir, 'expert_cfg.json'), 'utf8'));
    assert.deepEqual(sel, { experts: Object.fromEntries(Object.entries(fitted).map(([l, ids]) => [l, ids])), shared_experts: false, non_expert_modules: false });
  }
  assert.throws(() => checkSelection(presetConfig('qwen3TinySparse'), { 0: [1] }), /layer 0 is not a MoE layer/);
  assert.throws(() => checkSelection(presetConfig('qwen3TinySparse'), { 2: [1] }), /layer 2 is not a MoE layer/);
  assert.throws(() => checkSelection(presetConfig('mixtralTiny'), { 0: [8] }), /expert 8 is outside \[0, 8\)/);
  assert.throws(() => familyOf('llama'), /model_type "llama" is not one of deepseek_v2, deepseek_v3, qwen3_moe, mixtral/);
});

test('the CLI writes a model and a fitted adapter of a new family', () => {
  const root = tempDir();
  const cli = join(repoRoot(), 'dist', 'tools', 'fixtures', 'cli.js');
  execFileSync(process.execPath, [cli, 'model', '--preset', 'mixtralTiny', '--dtype', 'bf16', '--seed', '2', '--set', 'num_hidden_layers=2', '--out', join(root, 'm')]);
  const cfg = JSON.parse(readFileSync(join(root, 'm', 'config.json'), 'utf8'));
  assert.deepEqual([cfg.model_type, cfg.num_hidden_layers], ['mixtral', 2]);
  execFileSync(process.execPath, [cli, 'adapter', '--model', join(root, 'm'), '--experts-from', 'intent', '--out', join(root, 'a')]);
  const sel = JSON.parse(readFileSync(join(root, 'a', 'expert_cfg.json'), 'utf8'));
  assert.deepEqual(Object.keys(sel.experts), ['1']);
  assert.equal(TensorStore.openDir(join(root, 'a')).info(`model.layers.1.block_sparse_moe.experts.${sel.experts[1][0]}.w3.weight`).dtype, 'BF16');
});
