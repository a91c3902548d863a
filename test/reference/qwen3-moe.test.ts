// The Qwen3-MoE reference against a hand-computed model and the rules of
// modeling_qwen3_moe.py: per-head q/k RMSNorm before RoPE, GQA, MoE layer placement,
// routing normalisation, tied embeddings, and the config keys it refuses.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { writeSafetensors, type TensorToWrite } from '../../lib/safetensors/writer.js';
import { configJson, QWEN3_PRESETS } from '../../tools/fixtures/qwen3-moe.js';
import { presetConfig } from '../../tools/fixtures/families.js';
import { modelPlan } from '../../tools/fixtures/model.js';
import { editedModel, presetModel, someTokens } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/tmp.js';
import { Qwen3MoeReference, isMoeLayer, parseQwen3MoeConfig, routerSpec } from './qwen3-moe.js';
import { selectExperts } from './routing.js';

const cfgText = (overrides: Record<string, unknown> = {}) => JSON.stringify({ ...configJson(QWEN3_PRESETS.qwen3Tiny, 'float32'), ...overrides });

/**
 * One layer, H=2, vocab 3, two query heads of head_dim 2 sharing one KV head, q_norm and
 * k_norm with unequal weights (so norming per head, and before RoPE, both matter), a dense
 * MLP of width 1 (layer 0 in mlp_only_layers), rope_theta 10000 (inv_freq 1 for head_dim 2).
 */
function handModel(dir: string): void {
  mkdirSync(dir, { recursive: true });
  const cfg = presetConfig('qwen3Tiny', {
    vocab_size: 3, hidden_size: 2, num_hidden_layers: 1, intermediate_size: 1, num_attention_heads: 2, num_key_value_heads: 1,
    head_dim: 2, mlp_only_layers: [0], rope_theta: 10000,
  });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(configJson(cfg, 'float32')));
  const t = (name: string, shape: number[], data: number[]): TensorToWrite => ({ name, dtype: 'F32', shape, data });
  const p = 'model.layers.0';
  writeSafetensors(join(dir, 'model.safetensors'), [
    t('model.embed_tokens.weight', [3, 2], [1, -1, 3, 4, -2, 0.5]),
    t(`${p}.input_layernorm.weight`, [2], [0.5, 2]),
    t(`${p}.self_attn.q_proj.weight`, [4, 2], [1, 0, 0, 1, 2, 1, 0.5, -1]),
    t(`${p}.self_attn.k_proj.weight`, [2, 2], [1, 1, 1, -1]),
    t(`${p}.self_attn.v_proj.weight`, [2, 2], [1, 0, 0.5, 2]),
    t(`${p}.self_attn.o_proj.weight`, [2, 4], [1, 0, 0.5, 0, 0, 1, 0, -0.5]),
    t(`${p}.self_attn.q_norm.weight`, [2], [0.5, 2]),
    t(`${p}.self_attn.k_norm.weight`, [2], [1.5, 0.75]),
    t(`${p}.post_attention_layernorm.weight`, [2], [1, 1]),
    t(`${p}.mlp.gate_proj.weight`, [1, 2], [1, 0]),
    t(`${p}.mlp.up_proj.weight`, [1, 2], [0, 1]),
    t(`${p}.mlp.down_proj.weight`, [2, 1], [1, -1]),
    t('model.norm.weight', [2], [2, 1]),
    t('lm_head.weight', [3, 2], [1, 0, 0, 1, 1, 1]),
  ]);
}

test('a hand-computed 1-layer Qwen3-MoE: per-head q/k RMSNorm before rotate_half RoPE, 2 query heads on 1 KV head, dense MLP', () => {
  const dir = join(tempDir(), 'hand');
  handModel(dir);
  const eps = 1e-6;
  const rmsNorm = ([a, b]: number[], [wa, wb]: number[]) => {
    const r = Math.sqrt((a * a + b * b) / 2 + eps);
    return [(wa * a) / r, (wb * b) / r];
  };
  const rot = ([a, b]: number[], angle: number) => [a * Math.cos(angle) - b * Math.sin(angle), b * Math.cos(angle) + a * Math.sin(angle)];
  const embed = [[1, -1], [3, 4], [-2, 0.5]];
  const tokens = [2, 1, 0];
  const pos = tokens.map((tok, t) => {
    const x = embed[tok];
    const [n0, n1] = rmsNorm(x, [0.5, 2]);
    // q heads: (n0, n1) and (2 n0 + n1, 0.5 n0 - n1); k: (n0 + n1, n0 - n1); v: (n0, 0.5 n0 + 2 n1).
    const q = [rot(rmsNorm([n0, n1], [0.5, 2]), t), rot(rmsNorm([2 * n0 + n1, 0.5 * n0 - n1], [0.5, 2]), t)];
    return { x, q, k: rot(rmsNorm([n0 + n1, n0 - n1], [1.5, 0.75]), t), v: [n0, 0.5 * n0 + 2 * n1] };
  });
  const expected = pos.map((me, t) => {
    const heads = me.q.map((qh) => {
      const scores = pos.slice(0, t + 1).map((o) => (qh[0] * o.k[0] + qh[1] * o.k[1]) / Math.SQRT2);
      const z = scores.map((s) => Math.exp(s - Math.max(...scores)));
      const sum = z.reduce((a, b) => a + b);
      return [0, 1].map((d) => z.reduce((s, zi, j) => s + (zi / sum) * pos[j].v[d], 0));
    });
    const o = [heads[0][0] + 0.5 * heads[1][0], heads[0][1] - 0.5 * heads[1][1]];
    const h = [me.x[0] + o[0], me.x[1] + o[1]];
    const [m0, m1] = rmsNorm(h, [1, 1]);
    const a = (m0 / (1 + Math.exp(-m0))) * m1;
    const [f0, f1] = rmsNorm([h[0] + a, h[1] - a], [2, 1]);
    return [f0, f1, f0 + f1];
  });
  const got = Qwen3MoeReference.load(dir).forward(tokens).logits;
  for (let t = 0; t < tokens.length; t++) {
    for (let i = 0; i < 3; i++) assert.ok(Math.abs(got[t][i] - expected[t][i]) < 1e-12, `position ${t} logit ${i}: ${got[t][i]} vs ${expected[t][i]}`);
  }
});

test('MoE layers from mlp_only_layers and decoder_sparse_step, in the reference and the fixture writer alike', () => {
  const tiny = parseQwen3MoeConfig(cfgText());
  assert.deepEqual([0, 1, 2].filter((l) => isMoeLayer(tiny, l)), [0, 1, 2]);
  const sparse = parseQwen3MoeConfig(JSON.stringify(configJson(QWEN3_PRESETS.qwen3TinySparse, 'float32')));
  assert.deepEqual([0, 1, 2, 3].filter((l) => isMoeLayer(sparse, l)), [1, 3]);
  const planned = new Set(modelPlan(QWEN3_PRESETS.qwen3TinySparse).map((t) => t.name));
  for (const l of [0, 1, 2, 3]) {
    assert.equal(planned.has(`model.layers.${l}.mlp.gate.weight`), isMoeLayer(sparse, l), `layer ${l}`);
    assert.equal(planned.has(`model.layers.${l}.mlp.down_proj.weight`), !isMoeLayer(sparse, l), `layer ${l}`);
  }
  const step3 = parseQwen3MoeConfig(cfgText({ num_hidden_layers: 6, decoder_sparse_step: 3, mlp_only_layers: [5] }));
  assert.deepEqual([0, 1, 2, 3, 4, 5].filter((l) => isMoeLayer(step3, l)), [2]);
});

test('routing: softmax top-k; norm_topk_prob divides by the sum (no epsilon, also for k = 1); otherwise the raw probabilities', () => {
  const p = [0.1, 0.2, 0.4, 0.3];
  const normed = selectExperts(p, routerSpec(parseQwen3MoeConfig(cfgText({ num_experts: 4 }))));
  assert.deepEqual(normed.ids, [2, 3]);
  assert.deepEqual(normed.weights, [0.4 / 0.7, 0.3 / 0.7]);
  const raw = selectExperts(p, routerSpec(parseQwen3MoeConfig(cfgText({ num_experts: 4, norm_topk_prob: false }))));
  assert.deepEqual(raw.weights, [0.4, 0.3]);
  assert.deepEqual(selectExperts(p, routerSpec(parseQwen3MoeConfig(cfgText({ num_experts: 4, num_experts_per_tok: 1 })))).weights, [1]);
  assert.deepEqual(selectExperts([0.3, 0.3, 0.1, 0.3], routerSpec(parseQwen3MoeConfig(cfgText({ num_experts: 4 })))).ids, [0, 1], 'ties to the lower id');
});

test('tied embeddings: the head is embed_tokens (a tied model equals an untied one whose lm_head copies it)', () => {
  const tied = presetModel('qwen3TinySparse');
  const untied = editedModel(
    tied,
    (ts) => [...ts, { ...ts.find((t) => t.name === 'model.embed_tokens.weight')!, name: 'lm_head.weight' }],
    (cfg) => (cfg.tie_word_embeddings = false),
  );
  const tokens = someTokens(6, 64, 8);
  assert.deepEqual(Qwen3MoeReference.load(untied).forward(tokens).logits, Qwen3MoeReference.load(tied).forward(tokens).logits);
});

test('config keys the reference does not compute are refused by name', () => {
  const refused: [Record<string, unknown>, RegExp][] = [
    [{ model_type: 'qwen2_moe' }, /model_type "qwen2_moe" is not qwen3_moe/],
    [{ use_sliding_window: true }, /use_sliding_window true is not supported/],
    [{ attention_bias: true }, /attention_bias true is not supported/],
    [{ rope_scaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 32768 } }, /rope_scaling .* is not supported/],
    [{ hidden_act: 'gelu' }, /hidden_act "gelu" is not supported/],
    [{ num_key_value_heads: 3 }, /num_key_value_heads 3 must divide num_attention_heads 4/],
    [{ num_key_value_heads: undefined }, /num_key_value_heads must be a number/],
    [{ head_dim: 7 }, /head_dim 7 must be even/],
    [{ mlp_only_layers: 'none' }, /mlp_only_layers "none" must be a list/],
    [{ num_experts_per_tok: 9 }, /num_experts_per_tok 9 must be in \[1, num_experts 8\]/],
  ];
  for (const [overrides, message] of refused) assert.throws(() => parseQwen3MoeConfig(cfgText(overrides)), message, JSON.stringify(overrides));
});
