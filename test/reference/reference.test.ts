// Properties the float64 reference must have, and a hand-computed model, so that the
// native engine is tested against something that is itself checked.
import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

import { TensorStore } from '../../lib/safetensors/reader.js';
import { writeSafetensors, type TensorToWrite } from '../../lib/safetensors/writer.js';
import { makeAdapter } from '../../tools/fixtures/adapter.js';
import { PRESETS, buildConfig, configJson } from '../../tools/fixtures/config.js';
import { presetModel, someTokens } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/tmp.js';
import {
  ReferenceModel,
  applyRope,
  parseRefConfig,
  ropeFrequencies,
  route,
  softmaxScale,
  yarnFindCorrectionRange,
  type RefConfig,
} from './deepseek-v2.js';

const refConfig = (preset: keyof typeof PRESETS) => parseRefConfig(JSON.stringify(configJson(buildConfig(preset), 'float32')));

test('causality: logits at position i do not depend on later tokens', () => {
  for (const preset of ['tiny', 'tinyQLora', 'tinyGrouped'] as const) {
    const ref = ReferenceModel.load(presetModel(preset));
    const a = someTokens(10, 64, 1);
    const b = [...a.slice(0, 6), ...someTokens(4, 64, 2)];
    assert.notDeepEqual(a.slice(6), b.slice(6));
    const la = ref.forward(a).logits;
    const lb = ref.forward(b).logits;
    for (let i = 0; i < 6; i++) assert.deepEqual(la[i], lb[i], `${preset}: position ${i}`);
    assert.notDeepEqual(la[6], lb[6], `${preset}: position 6 sees its own token`);
  }
});

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

test('RoPE: q·k depends only on the position difference; norms scale by the yarn cos/sin factor', () => {
  for (const preset of ['tiny', 'tinyQLora', 'tinyGrouped'] as const) {
    const cfg = refConfig(preset);
    const q = [0.3, -1.2, 0.7, 2.0];
    const k = [1.1, 0.4, -0.9, 0.25];
    const { cosSinScale } = ropeFrequencies(cfg);
    const score = (m: number, n: number) => dot(applyRope(q, m, cfg), applyRope(k, n, cfg));
    for (const [m, n] of [[5, 2], [17, 17], [3, 40], [100, 1]]) {
      for (const shift of [1, 13, 150]) {
        assert.ok(Math.abs(score(m, n) - score(m + shift, n + shift)) < 1e-12, `${preset}: (${m},${n}) shifted by ${shift}`);
      }
    }
    assert.ok(Math.abs(score(5, 2) - score(5, 3)) > 1e-3, `${preset}: the score must change with the distance`);
    assert.ok(Math.abs(Math.hypot(...applyRope(q, 7, cfg)) - cosSinScale * Math.hypot(...q)) < 1e-12);
    // At position 0 RoPE only de-interleaves: (x0, x1, x2, x3) -> (x0, x2, x1, x3).
    const at0 = applyRope(q, 0, cfg);
    [q[0], q[2], q[1], q[3]].forEach((v, i) => assert.ok(Math.abs(at0[i] - v * cosSinScale) < 1e-15, `${preset}: dim ${i}`));
  }
});

test('yarn: correction range, inverse frequencies and softmax scale of DeepSeek-V2-Lite', () => {
  const cfg = refConfig('v2Lite');
  assert.deepEqual(yarnFindCorrectionRange(32, 1, 64, 10000, 4096), [10, 23]);
  const { invFreq, cosSinScale } = ropeFrequencies(cfg);
  const base = (i: number) => 1 / 10000 ** ((2 * i) / 64);
  // Below the range: extrapolated (original) frequencies; above: interpolated (divided by factor 40).
  assert.equal(invFreq[0], 1);
  assert.equal(invFreq[10], base(10));
  assert.ok(Math.abs(invFreq[31] - base(31) / 40) < 1e-20);
  assert.ok(Math.abs(invFreq[23] - base(23) / 40) < 1e-20);
  const ramp = (16 - 10) / 13;
  assert.ok(Math.abs(invFreq[16] - (base(16) / 40) * ramp - base(16) * (1 - ramp)) < 1e-18);
  assert.equal(cosSinScale, 1);
  const m = 0.1 * 0.707 * Math.log(40) + 1;
  assert.ok(Math.abs(softmaxScale(cfg) - (m * m) / Math.sqrt(192)) < 1e-15);
  // Tiny rope dim 4: the range is clamped to [0, dim-1] = [0, 1].
  assert.deepEqual(yarnFindCorrectionRange(32, 1, 4, 10000, 64), [0, 1]);
  assert.equal(softmaxScale(refConfig('tinyGrouped')), 12 ** -0.5);
});

test('routing: greedy ties go to the lower id; group-limited; normalisation and scaling', () => {
  const base: RefConfig = { ...refConfig('tiny'), nRouted: 4, topK: 2, routedScalingFactor: 1.5 };
  assert.deepEqual(route([0.1, 0.3, 0.3, 0.3], base).ids, [1, 2]);
  const r = route([0.1, 0.2, 0.4, 0.3], base);
  assert.deepEqual(r.ids, [2, 3]);
  assert.deepEqual(r.weights, [0.4 * 1.5, 0.3 * 1.5]);
  const normed = route([0.1, 0.2, 0.4, 0.3], { ...base, normTopkProb: true });
  assert.ok(Math.abs(normed.weights[0] - 0.4 / 0.7) < 1e-15);
  // HF normalises only when top_k > 1; otherwise it scales.
  assert.deepEqual(route([0.1, 0.2, 0.4, 0.3], { ...base, topK: 1, normTopkProb: true }).weights, [0.4 * 1.5]);
  // Groups {0,1} and {2,3}: group 0 holds the single best expert, so only it is open.
  const grouped = { ...base, topkMethod: 'group_limited_greedy' as const, nGroup: 2, topkGroup: 1 };
  const g = route([0.35, 0.05, 0.3, 0.3], grouped);
  assert.deepEqual(g.ids, [0, 1]);
  assert.ok(Math.abs(g.margin - 0.05) < 1e-15);
});

/**
 * A 1-layer model small enough to compute by hand: H=2, vocab 3, one head with
 * nope=1, rope=2, v=1, kv_lora_rank=2, dense MLP of width 1, no rope scaling.
 */
function handModel(dir: string): void {
  mkdirSync(dir, { recursive: true });
  const cfg = buildConfig('tiny', {
    vocab_size: 3, hidden_size: 2, num_hidden_layers: 1, intermediate_size: 1, first_k_dense_replace: 1,
    num_attention_heads: 1, num_key_value_heads: 1, kv_lora_rank: 2, qk_nope_head_dim: 1, qk_rope_head_dim: 2,
    v_head_dim: 1, rope_scaling: null,
  });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(configJson(cfg, 'float32')));
  const t = (name: string, shape: number[], data: number[]): TensorToWrite => ({ name, dtype: 'F32', shape, data });
  const p = 'model.layers.0';
  writeSafetensors(join(dir, 'model.safetensors'), [
    t('model.embed_tokens.weight', [3, 2], [1, -1, 3, 4, -2, 0.5]),
    t(`${p}.input_layernorm.weight`, [2], [0.5, 2]),
    t(`${p}.self_attn.q_proj.weight`, [3, 2], [1, 0, 0, 1, 1, 0]),
    t(`${p}.self_attn.kv_a_proj_with_mqa.weight`, [4, 2], [1, 0, 0, 1, 1, 1, 1, -1]),
    t(`${p}.self_attn.kv_a_layernorm.weight`, [2], [1, 1]),
    t(`${p}.self_attn.kv_b_proj.weight`, [2, 2], [1, 0, 0, 2]),
    t(`${p}.self_attn.o_proj.weight`, [2, 1], [1, 0.5]),
    t(`${p}.post_attention_layernorm.weight`, [2], [1, 1]),
    t(`${p}.mlp.gate_proj.weight`, [1, 2], [1, 0]),
    t(`${p}.mlp.up_proj.weight`, [1, 2], [0, 1]),
    t(`${p}.mlp.down_proj.weight`, [2, 1], [1, -1]),
    t('model.norm.weight', [2], [2, 1]),
    t('lm_head.weight', [3, 2], [1, 0, 0, 1, 1, 1]),
  ]);
}

test('a hand-computed 1-layer model: two tokens, RoPE, causal softmax, dense MLP', () => {
  const dir = join(tempDir(), 'hand');
  handModel(dir);
  const eps = 1e-6;
  const rms = (a: number, b: number) => Math.sqrt((a * a + b * b) / 2 + eps);
  const rot = ([a, b]: number[], angle: number) => [a * Math.cos(angle) - b * Math.sin(angle), b * Math.cos(angle) + a * Math.sin(angle)];
  const embed = [[1, -1], [3, 4], [-2, 0.5]];
  const tokens = [2, 1];
  // Per position: normed input n, q = (n0 | pe: n1, n0), kv_a = (c: n0, n1 | k_pe: n0+n1, n0-n1).
  const pos = tokens.map((tok, t) => {
    const [x0, x1] = embed[tok];
    const n0 = (0.5 * x0) / rms(x0, x1);
    const n1 = (2 * x1) / rms(x0, x1);
    const cn0 = n0 / rms(n0, n1);
    const cn1 = n1 / rms(n0, n1);
    return { x: [x0, x1], qNope: n0, qPe: rot([n1, n0], t), kNope: cn0, v: 2 * cn1, kPe: rot([n0 + n1, n0 - n1], t) };
  });
  const expected = pos.map((me, t) => {
    const scores = pos.slice(0, t + 1).map((o) => (me.qNope * o.kNope + me.qPe[0] * o.kPe[0] + me.qPe[1] * o.kPe[1]) / Math.sqrt(3));
    const z = scores.map((s) => Math.exp(s - Math.max(...scores)));
    const attnV = z.reduce((s, zi, j) => s + (zi / z.reduce((a, b) => a + b)) * pos[j].v, 0);
    const h = [me.x[0] + attnV, me.x[1] + 0.5 * attnV];
    const m0 = h[0] / rms(h[0], h[1]);
    const m1 = h[1] / rms(h[0], h[1]);
    const a = (m0 / (1 + Math.exp(-m0))) * m1;
    const out = [h[0] + a, h[1] - a];
    const f0 = (2 * out[0]) / rms(out[0], out[1]);
    const f1 = out[1] / rms(out[0], out[1]);
    return [f0, f1, f0 + f1];
  });
  const got = ReferenceModel.load(dir).forward(tokens).logits;
  for (let t = 0; t < 2; t++) {
    for (let i = 0; i < 3; i++) assert.ok(Math.abs(got[t][i] - expected[t][i]) < 1e-12, `position ${t} logit ${i}: ${got[t][i]} vs ${expected[t][i]}`);
  }
});

test('merged adapter view: equals a base model with the experts copied in, old names too', () => {
  const base = presetModel('tiny');
  const root = tempDir();
  const selection = { 1: [0, 5], 2: [3] };
  makeAdapter(join(root, 'a'), base, selection, { seed: 7 });
  makeAdapter(join(root, 'legacy'), base, selection, { seed: 7, omitModelPrefix: true });

  // Build the merged checkpoint by hand: every base tensor, with the adapter's replacing its own.
  const baseStore = TensorStore.openDir(base);
  const adapterStore = TensorStore.openDir(join(root, 'a'));
  const merged = join(root, 'merged');
  mkdirSync(merged);
  writeFileSync(join(merged, 'config.json'), JSON.stringify(configJson(buildConfig('tiny'), 'float32')));
  writeSafetensors(
    join(merged, 'model.safetensors'),
    baseStore.names().map((name) => {
      const from = adapterStore.has(name) ? adapterStore : baseStore;
      return { name, dtype: 'F32' as const, shape: from.info(name).shape, data: from.readF64(name) };
    }),
  );

  const tokens = someTokens(12, 64, 3);
  const viaAdapter = ReferenceModel.load(base, { adapterDir: join(root, 'a') }).forward(tokens).logits;
  assert.deepEqual(viaAdapter, ReferenceModel.load(merged).forward(tokens).logits);
  assert.deepEqual(ReferenceModel.load(base, { adapterDir: join(root, 'legacy') }).forward(tokens).logits, viaAdapter);
  assert.notDeepEqual(ReferenceModel.load(base).forward(tokens).logits, viaAdapter, 'the adapter must change the output');

  makeAdapter(join(root, 'shared'), base, selection, { sharedExperts: true });
  assert.throws(() => ReferenceModel.load(base, { adapterDir: join(root, 'shared') }), /changes shared weights/);
});

test('activations stay O(1): logits of every preset are finite and of moderate size', () => {
  for (const preset of ['tiny', 'tinyQLora', 'tinyGrouped'] as const) {
    const out = ReferenceModel.load(presetModel(preset)).forward(someTokens(16, 64, 4));
    const maxAbs = Math.max(...out.logits.map((l) => Math.max(...l.map(Math.abs))));
    assert.ok(maxAbs > 0.1 && maxAbs < 50, `${preset}: max |logit| ${maxAbs}`);
    assert.ok(out.minRouterMargin > 1e-5, `${preset}: routing margin ${out.minRouterMargin}`);
  }
});
