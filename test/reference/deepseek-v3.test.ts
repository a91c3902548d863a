// The DeepSeek-V3 reference: noaux_tc routing on hand-made scores (the correction bias
// chooses but does not weight; groups ranked by their two best biased scores; closed
// groups never chosen), scaling after normalisation, yarn as V3 configures it, the MTP
// layer left out of decoding, and the config keys it refuses.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { TensorStore } from '../../lib/safetensors/reader.js';
import { writeSafetensors } from '../../lib/safetensors/writer.js';
import { makeAdapter } from '../../tools/fixtures/adapter.js';
import { configJson, V3_PRESETS } from '../../tools/fixtures/deepseek-v3.js';
import { editedModel, presetModel, someTokens } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/tmp.js';
import { DeepseekReference, parseDeepseekConfig, ropeTable, routerSpec, softmaxScale } from './deepseek.js';
import { selectExperts } from './routing.js';

const cfgText = (overrides: Record<string, unknown> = {}) => JSON.stringify({ ...configJson(V3_PRESETS.v3Tiny, 'float32'), ...overrides });
const spec = (overrides: Record<string, unknown>) => routerSpec(parseDeepseekConfig(cfgText(overrides)));
const close = (a: number[], b: number[]) => a.length === b.length && a.every((v, i) => Math.abs(v - b[i]) < 1e-15);

test('noaux_tc: the correction bias changes which experts are chosen, never their weights', () => {
  const s = spec({ n_routed_experts: 4, n_group: 1, topk_group: 1, num_experts_per_tok: 2, routed_scaling_factor: 2.5 });
  const scores = [0.9, 0.8, 0.3, 0.2];
  const r = selectExperts(scores, s, [0, 0, 0.7, 0]); // biased: 0.9, 0.8, 1.0, 0.2
  assert.deepEqual(r.ids, [2, 0]);
  assert.ok(close(r.weights, [(0.3 / 1.2) * 2.5, (0.9 / 1.2) * 2.5]), `${r.weights}`);
  assert.ok(Math.abs(r.margin - 0.1) < 1e-12, 'margin on the biased scores');
  assert.deepEqual(selectExperts(scores, s, [0, 0, 0, 0]).ids, [0, 1]);
  // A uniform shift of the bias chooses the same experts with the same weights.
  const shifted = selectExperts(scores, s, [5, 5, 5.7, 5]);
  assert.deepEqual([shifted.ids, shifted.weights], [r.ids, r.weights]);
  assert.throws(() => selectExperts(scores, s), /noaux_tc needs a correction bias/);
});

test('noaux_tc group limiting: a group scores the sum of its two best biased scores, not its best one', () => {
  const s = spec({ n_routed_experts: 4, n_group: 2, topk_group: 1, num_experts_per_tok: 2, routed_scaling_factor: 2.5 });
  const scores = [1.0, 0.1, 0.7, 0.6]; // groups {0,1}: best 1.0, sum 1.1; {2,3}: best 0.7, sum 1.3
  const r = selectExperts(scores, s, [0, 0, 0, 0]);
  assert.deepEqual(r.ids, [2, 3]);
  assert.ok(close(r.weights, [(0.7 / 1.3) * 2.5, (0.6 / 1.3) * 2.5]));
  assert.ok(Math.abs(r.margin - 0.2) < 1e-12, 'the margin is the group gap 1.3 - 1.1 (the closed experts are -inf)');
  // DeepSeek-V2's group_limited_greedy ranks groups by their best score: group 0.
  const v2 = { ...s, method: 'group_limited_greedy' as const, normalize: false, scale: 1 };
  assert.deepEqual(selectExperts(scores, v2).ids, [0, 1]);
  // Groups tie to the lower index; the bias decides the group as well.
  assert.deepEqual(selectExperts([0.5, 0.5, 0.5, 0.5], s, [0, 0, 0, 0]).ids, [0, 1]);
  assert.deepEqual(selectExperts([0.5, 0.5, 0.5, 0.5], s, [0, 0, 0.01, 0]).ids, [2, 3]);
});

test('noaux_tc: experts of closed groups are never chosen, even over negative biased scores in the open ones', () => {
  const s = spec({ n_routed_experts: 4, n_group: 2, topk_group: 1, num_experts_per_tok: 2, routed_scaling_factor: 2.5 });
  // Biased: -0.1, -0.05 | 0.7, -0.55: group 1 (sum 0.15) beats group 0 (-0.15). Filling the closed
  // group with 0.0 (transformers, HF hub modeling_deepseek.py) would choose expert 2 and a closed
  // expert; DeepSeek's inference code, vLLM and SGLang fill -inf and choose 2 and 3.
  const r = selectExperts([0.1, 0.2, 0.3, 0.05], s, [-0.2, -0.25, 0.4, -0.6]);
  assert.deepEqual(r.ids, [2, 3]);
  assert.ok(close(r.weights, [(0.3 / 0.35) * 2.5, (0.05 / 0.35) * 2.5]));
});

test('V3 scales the normalised weights by routed_scaling_factor (V2 does not); top-1 is scaled, not normalised', () => {
  const r = selectExperts([0.2, 0.6, 0.5, 0.1, 0.9, 0.3, 0.4, 0.7], spec({ n_routed_experts: 8, n_group: 2, topk_group: 2, num_experts_per_tok: 3, routed_scaling_factor: 2.5 }), new Float64Array(8));
  assert.deepEqual(r.ids, [4, 7, 1]);
  assert.ok(Math.abs(r.weights.reduce((a, b) => a + b) - 2.5) < 1e-14);
  const v2 = routerSpec(parseDeepseekConfig(JSON.stringify({ ...JSON.parse(cfgText()), model_type: 'deepseek_v2', scoring_func: 'softmax', topk_method: 'greedy' })));
  assert.equal(v2.scale, 1, 'V2 normalises instead of scaling');
  const top1 = selectExperts([0.2, 0.6, 0.5, 0.1], spec({ n_routed_experts: 4, n_group: 1, topk_group: 1, num_experts_per_tok: 1, routed_scaling_factor: 2.5 }), [0, 0, 0, 0]);
  assert.deepEqual(top1.weights, [0.6 * 2.5]);
});

test('yarn as DeepSeek-V3 sets it (mscale = mscale_all_dim = 1, factor 40): cos/sin unscaled, softmax scale times mscale(40)^2', () => {
  const v3Rope = { type: 'yarn', factor: 40, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1, mscale: 1.0, mscale_all_dim: 1.0 };
  const cfg = parseDeepseekConfig(cfgText({ rope_scaling: v3Rope, qk_nope_head_dim: 128, qk_rope_head_dim: 64, max_position_embeddings: 163840 }));
  assert.equal(ropeTable(cfg).cosSinScale, 1);
  const m = 0.1 * Math.log(40) + 1;
  assert.ok(Math.abs(softmaxScale(cfg) - (m * m) / Math.sqrt(192)) < 1e-15);
  const tiny = parseDeepseekConfig(cfgText());
  const mt = 0.1 * Math.log(4) + 1;
  assert.ok(Math.abs(softmaxScale(tiny) - (mt * mt) / Math.sqrt(12)) < 1e-15);
});

test('the fixture bias matters: zeroing it changes the logits, a uniform shift of it does not', () => {
  const dir = presetModel('v3Tiny');
  const tokens = someTokens(10, 64, 2);
  const base = DeepseekReference.load(dir).forward(tokens).logits;
  const withBias = (f: (v: number) => number) =>
    editedModel(dir, (ts) => ts.map((t) => (t.name.endsWith('e_score_correction_bias') ? { ...t, data: Array.from(t.data as ArrayLike<number>, f) } : t)));
  assert.notDeepEqual(DeepseekReference.load(withBias(() => 0)).forward(tokens).logits, base);
  assert.deepEqual(DeepseekReference.load(withBias((v) => v + 0.25)).forward(tokens).logits, base);
});

test('MTP layers (model.layers.{num_hidden_layers}.*) are not part of decoding, nor of an adapter', () => {
  const dir = presetModel('v3Tiny');
  const names = TensorStore.openDir(dir).names();
  for (const n of ['embed_tokens', 'enorm', 'hnorm', 'eh_proj', 'shared_head.norm', 'shared_head.head', 'mlp.gate.e_score_correction_bias']) {
    assert.ok(names.includes(`model.layers.3.${n}${n.endsWith('bias') ? '' : '.weight'}`), n);
  }
  const tokens = someTokens(8, 64, 1);
  const without = editedModel(dir, (ts) => ts.filter((t) => !t.name.startsWith('model.layers.3.')));
  assert.deepEqual(DeepseekReference.load(without).forward(tokens).logits, DeepseekReference.load(dir).forward(tokens).logits);

  assert.throws(() => makeAdapter(join(tempDir(), 'a'), dir, { 3: [0] }), /layer 3 is not a MoE layer/);
  const adapter = join(tempDir(), 'mtp-adapter');
  mkdirSync(adapter);
  writeFileSync(join(adapter, 'expert_cfg.json'), JSON.stringify({ experts: { 3: [0] }, shared_experts: false, non_expert_modules: false }));
  const store = TensorStore.openDir(dir);
  writeSafetensors(join(adapter, 'adapter.safetensors'), ['gate', 'up', 'down'].map((p) => {
    const name = `model.layers.3.mlp.experts.0.${p}_proj.weight`;
    return { name, dtype: 'F32' as const, shape: store.info(name).shape, data: store.readF64(name) };
  }));
  assert.throws(() => DeepseekReference.load(dir, { adapterDir: adapter }), /layer 3 is not a MoE layer/);
});

test('config keys the V3 reference does not compute are refused by name', () => {
  const refused: [Record<string, unknown>, RegExp][] = [
    [{ scoring_func: 'softmax' }, /scoring_func "softmax" is not sigmoid/],
    [{ topk_method: 'group_limited_greedy' }, /topk_method "group_limited_greedy" is not noaux_tc/],
    [{ rope_interleave: false }, /rope_interleave false is not supported/],
    [{ n_group: 3 }, /n_group 3 must split n_routed_experts 16 into groups of at least 2/],
    [{ n_group: 16 }, /n_group 16 must split/],
    [{ topk_group: 5 }, /topk_group 5 must be in \[1, n_group 4\]/],
    [{ num_experts_per_tok: 9 }, /num_experts_per_tok 9 exceeds the 8 experts of topk_group groups/],
    [{ num_nextn_predict_layers: -1 }, /num_nextn_predict_layers -1 must be a non-negative integer/],
    [{ hidden_act: 'gelu' }, /hidden_act "gelu" is not silu/],
    [{ model_type: 'deepseek_v4' }, /model_type "deepseek_v4" is not deepseek_v2 or deepseek_v3/],
  ];
  for (const [overrides, message] of refused) assert.throws(() => parseDeepseekConfig(cfgText(overrides)), message, JSON.stringify(overrides));
  assert.equal(parseDeepseekConfig(cfgText()).nextnLayers, 1);
});
