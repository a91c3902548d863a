// The Mixtral reference against a hand-computed model (block_sparse_moe with w1 = gate,
// w3 = up, w2 = down; softmax top-2 renormalised over the chosen) and the config keys it refuses.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { writeSafetensors, type TensorToWrite } from '../../lib/safetensors/writer.js';
import { presetConfig } from '../../tools/fixtures/families.js';
import { configJson, MIXTRAL_PRESETS } from '../../tools/fixtures/mixtral.js';
import { tempDir } from '../helpers/tmp.js';
import { MixtralReference, parseMixtralConfig, routerSpec } from './mixtral.js';
import { softmax } from './ops.js';
import { selectExperts } from './routing.js';

const cfgText = (overrides: Record<string, unknown> = {}) => JSON.stringify({ ...configJson(MIXTRAL_PRESETS.mixtralTiny, 'float32'), ...overrides });

/** One layer, H=2, vocab 3, one head of head_dim 2, three experts of width 1, top-2. */
function handModel(dir: string): void {
  mkdirSync(dir, { recursive: true });
  const cfg = presetConfig('mixtralTiny', {
    vocab_size: 3, hidden_size: 2, num_hidden_layers: 1, intermediate_size: 1, num_local_experts: 3, num_attention_heads: 1, num_key_value_heads: 1,
  });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(configJson(cfg, 'float32')));
  const t = (name: string, shape: number[], data: number[]): TensorToWrite => ({ name, dtype: 'F32', shape, data });
  const p = 'model.layers.0';
  const e = (i: number, w1: number[], w3: number[], w2: number[]) => [
    t(`${p}.block_sparse_moe.experts.${i}.w1.weight`, [1, 2], w1),
    t(`${p}.block_sparse_moe.experts.${i}.w2.weight`, [2, 1], w2),
    t(`${p}.block_sparse_moe.experts.${i}.w3.weight`, [1, 2], w3),
  ];
  writeSafetensors(join(dir, 'model.safetensors'), [
    t('model.embed_tokens.weight', [3, 2], [1, -1, 3, 4, -2, 0.5]),
    t(`${p}.input_layernorm.weight`, [2], [0.5, 2]),
    t(`${p}.self_attn.q_proj.weight`, [2, 2], [1, 0, 0, 1]),
    t(`${p}.self_attn.k_proj.weight`, [2, 2], [1, 1, 1, -1]),
    t(`${p}.self_attn.v_proj.weight`, [2, 2], [1, 0, 0.5, 2]),
    t(`${p}.self_attn.o_proj.weight`, [2, 2], [1, 0.5, 0, -1]),
    t(`${p}.post_attention_layernorm.weight`, [2], [1, 1]),
    t(`${p}.block_sparse_moe.gate.weight`, [3, 2], [1, 0, 0, 1, -1, 1]),
    ...e(0, [1, 0], [0, 1], [1, -1]),
    ...e(1, [0, 1], [1, 1], [0.5, 2]),
    ...e(2, [1, 1], [1, -1], [-1, 1]),
    t('model.norm.weight', [2], [2, 1]),
    t('lm_head.weight', [3, 2], [1, 0, 0, 1, 1, 1]),
  ]);
}

test('a hand-computed 1-layer Mixtral: experts w2·(silu(w1·x) * (w3·x)), softmax top-2 renormalised', () => {
  const dir = join(tempDir(), 'hand');
  handModel(dir);
  const eps = 1e-5;
  const rmsNorm = ([a, b]: number[], [wa, wb]: number[]) => {
    const r = Math.sqrt((a * a + b * b) / 2 + eps);
    return [(wa * a) / r, (wb * b) / r];
  };
  const silu = (x: number) => x / (1 + Math.exp(-x));
  const experts = [
    { w1: [1, 0], w3: [0, 1], w2: [1, -1] },
    { w1: [0, 1], w3: [1, 1], w2: [0.5, 2] },
    { w1: [1, 1], w3: [1, -1], w2: [-1, 1] },
  ];
  const dot = (a: number[], b: number[]) => a[0] * b[0] + a[1] * b[1];
  const embed = [[1, -1], [3, 4], [-2, 0.5]];
  const model = MixtralReference.load(dir);
  const chosen = new Set<number>();
  for (const tok of [0, 1, 2]) {
    // One position: attention returns v (RoPE at position 0 is the identity).
    const x = embed[tok];
    const [n0, n1] = rmsNorm(x, [0.5, 2]);
    const v = [n0, 0.5 * n0 + 2 * n1];
    const h = [x[0] + v[0] + 0.5 * v[1], x[1] - v[1]];
    const m = rmsNorm(h, [1, 1]);
    const logits = [m[0], m[1], -m[0] + m[1]];
    const z = logits.map((l) => Math.exp(l));
    const order = [0, 1, 2].sort((a, b) => z[b] - z[a]).slice(0, 2);
    order.forEach((i) => chosen.add(i));
    const sum = z[order[0]] + z[order[1]];
    const moe = [0, 0];
    for (const i of order) {
      const a = silu(dot(experts[i].w1, m)) * dot(experts[i].w3, m);
      for (const d of [0, 1]) moe[d] += (z[i] / sum) * experts[i].w2[d] * a;
    }
    const [f0, f1] = rmsNorm([h[0] + moe[0], h[1] + moe[1]], [2, 1]);
    const got = model.forward([tok]).logits[0];
    [f0, f1, f0 + f1].forEach((want, i) => assert.ok(Math.abs(got[i] - want) < 1e-12, `token ${tok} logit ${i}: ${got[i]} vs ${want}`));
  }
  assert.equal(chosen.size, 3, 'the three tokens together route to every expert');
});

test('routing: top-2 of the softmax, renormalised over the two (weights sum to 1, ratio kept), ties to the lower id', () => {
  const s = routerSpec(parseMixtralConfig(cfgText()));
  const p = softmax([0.5, 2.0, -1.0, 1.5, 0.0, 0.2, 1.9, -0.3]);
  const r = selectExperts(p, s);
  assert.deepEqual(r.ids, [1, 6]);
  assert.ok(Math.abs(r.weights[0] + r.weights[1] - 1) < 1e-15);
  assert.ok(Math.abs(r.weights[0] / r.weights[1] - Math.exp(0.1)) < 1e-12);
  assert.deepEqual(selectExperts([0.25, 0.25, 0.25, 0.25], { ...s }).ids, [0, 1]);
  const top1 = selectExperts(p, routerSpec(parseMixtralConfig(cfgText({ num_experts_per_tok: 1 }))));
  assert.deepEqual(top1.weights, [1]);
});

test('config keys the Mixtral reference does not compute are refused by name', () => {
  const refused: [Record<string, unknown>, RegExp][] = [
    [{ model_type: 'mistral' }, /model_type "mistral" is not mixtral/],
    [{ sliding_window: 4096 }, /sliding_window 4096 is not supported/],
    [{ rope_scaling: { type: 'linear', factor: 2 } }, /rope_scaling .* is not supported/],
    [{ num_local_experts: undefined }, /num_local_experts must be a number/],
    [{ num_key_value_heads: 3 }, /num_key_value_heads 3 must divide num_attention_heads 4/],
    [{ num_experts_per_tok: 9 }, /num_experts_per_tok 9 exceeds num_local_experts 8/],
    [{ hidden_act: 'gelu' }, /hidden_act "gelu" is not supported/],
  ];
  for (const [overrides, message] of refused) assert.throws(() => parseMixtralConfig(cfgText(overrides)), message, JSON.stringify(overrides));
  assert.equal(parseMixtralConfig(cfgText({ head_dim: 12 })).headDim, 12);
  assert.equal(parseMixtralConfig(cfgText()).headDim, 8);
});
