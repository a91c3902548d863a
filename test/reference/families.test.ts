// Properties every family's float64 reference must have, on each family's tiny presets:
// causality, prefill == chunked decode through the reference's own KV cache, O(1)
// activations with routing far from ties, the merged-adapter view of an ESFT adapter
// fitted from the real selections, and GQA's head sharing against MHA with repeated heads.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';

import { fitSelection, loadEsftSelection, makeAdapter } from '../../tools/fixtures/adapter.js';
import { presetConfig, type AnyPresetName } from '../../tools/fixtures/families.js';
import { editedModel, mergedModel, presetModel, someTokens } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/tmp.js';
import { loadReference } from './load.js';
import { ropeFrequencies, rotateHalf } from './rope.js';

const NEW_PRESETS: AnyPresetName[] = ['qwen3Tiny', 'qwen3TinySparse', 'v3Tiny', 'v3TinyMoonlight', 'mixtralTiny'];

test('causality: logits at position i do not depend on later tokens', () => {
  for (const preset of NEW_PRESETS) {
    const ref = loadReference(presetModel(preset));
    const a = someTokens(10, 64, 1);
    const b = [...a.slice(0, 6), ...someTokens(4, 64, 2)];
    const la = ref.forward(a).logits;
    const lb = ref.forward(b).logits;
    for (let i = 0; i < 6; i++) assert.deepEqual(la[i], lb[i], `${preset}: position ${i}`);
    assert.notDeepEqual(la[6], lb[6], `${preset}: position 6 sees its own token`);
  }
});

test('prefill == prefill of a prefix then decode one token at a time, then a chunk (the KV cache)', () => {
  for (const preset of ['tiny', 'tinyQLora', ...NEW_PRESETS] as AnyPresetName[]) {
    const ref = loadReference(presetModel(preset));
    const tokens = someTokens(12, 64, 5);
    const whole = ref.forward(tokens);
    const s = ref.session();
    const parts = [s.extend(tokens.slice(0, 5)), ...[5, 6, 7, 8].map((i) => s.extend([tokens[i]])), s.extend(tokens.slice(9))];
    assert.equal(s.length, 12);
    assert.deepEqual(parts.flatMap((p) => p.logits), whole.logits, preset);
    assert.equal(Math.min(...parts.map((p) => p.minRouterMargin)), whole.minRouterMargin, preset);
  }
});

test('activations stay O(1) and routing stays far from ties on every preset', () => {
  for (const preset of NEW_PRESETS) {
    const out = loadReference(presetModel(preset)).forward(someTokens(16, 64, 4));
    const maxAbs = Math.max(...out.logits.map((l) => Math.max(...l.map(Math.abs))));
    assert.ok(maxAbs > 0.1 && maxAbs < 50, `${preset}: max |logit| ${maxAbs}`);
    assert.ok(out.minRouterMargin > 1e-5 && out.minRouterMargin < Infinity, `${preset}: routing margin ${out.minRouterMargin}`);
  }
});

test('bf16 and f16 fixtures: the reference reads the rounded weights (logits near the f32 ones, not equal)', () => {
  for (const preset of NEW_PRESETS) {
    const tokens = someTokens(8, 64, 6);
    const f32 = loadReference(presetModel(preset)).forward(tokens).logits;
    for (const dtype of ['bf16', 'f16'] as const) {
      const low = loadReference(presetModel(preset, dtype)).forward(tokens).logits;
      const scale = Math.max(...f32.flatMap((r) => [...r].map(Math.abs)));
      const err = Math.max(...f32.flatMap((r, t) => [...r].map((v, i) => Math.abs(v - low[t][i]))));
      assert.ok(err > 0 && err / scale < (dtype === 'bf16' ? 0.1 : 0.01), `${preset} ${dtype}: relative error ${err / scale}`);
    }
  }
});

test('merged adapter view (every family): an adapter fitted from the real "law" selection equals the base with its experts copied in, and differs from the base', () => {
  const root = tempDir();
  for (const preset of NEW_PRESETS) {
    const base = presetModel(preset);
    const selection = fitSelection(presetConfig(preset), loadEsftSelection('law'));
    assert.ok(Object.keys(selection).length > 0, preset);
    const dir = join(root, preset);
    makeAdapter(dir, base, selection, { seed: 3 });
    makeAdapter(`${dir}-legacy`, base, selection, { seed: 3, omitModelPrefix: true });
    const tokens = someTokens(12, 64, 3);
    const viaAdapter = loadReference(base, { adapterDir: dir }).forward(tokens).logits;
    assert.deepEqual(viaAdapter, loadReference(mergedModel(base, dir)).forward(tokens).logits, preset);
    assert.deepEqual(loadReference(base, { adapterDir: `${dir}-legacy` }).forward(tokens).logits, viaAdapter, `${preset}: legacy names`);
    assert.notDeepEqual(loadReference(base).forward(tokens).logits, viaAdapter, `${preset}: the adapter must change the output`);
    makeAdapter(`${dir}-shared`, base, selection, { sharedExperts: true });
    assert.throws(() => loadReference(base, { adapterDir: `${dir}-shared` }), /changes shared weights/);
  }
});

/**
 * The model with one K/V projection block per query head: head h gets the rows of KV head
 * `kvOf(h)`. With the repeat_kv mapping (h / group) this is the same model as the GQA one.
 */
function expandedKv(src: string, kvOf: (h: number, heads: number, kv: number) => number): string {
  let heads = 0;
  let kv = 0;
  let headDim = 0;
  return editedModel(
    src,
    (tensors) =>
      tensors.map((t) => {
        if (!/\.self_attn\.[kv]_proj\.weight$/.test(t.name)) return t;
        const [rows, cols] = t.shape;
        const data = Array.from(t.data as ArrayLike<number>);
        const out: number[] = [];
        for (let h = 0; h < heads; h++) out.push(...data.slice(kvOf(h, heads, kv) * headDim * cols, (kvOf(h, heads, kv) + 1) * headDim * cols));
        assert.equal(rows, kv * headDim);
        return { ...t, shape: [heads * headDim, cols], data: out };
      }),
    (cfg) => {
      heads = cfg.num_attention_heads as number;
      kv = cfg.num_key_value_heads as number;
      headDim = (cfg.head_dim as number | undefined) ?? (cfg.hidden_size as number) / heads;
      cfg.num_key_value_heads = heads;
    },
  );
}

test('GQA: 2 KV heads for 4 query heads, and 1 KV head (MQA), equal MHA with each KV head repeated for its consecutive query heads', () => {
  for (const preset of ['qwen3Tiny', 'qwen3TinySparse', 'mixtralTiny'] as const) {
    const gqa = presetModel(preset);
    const kv = presetConfig(preset).num_key_value_heads;
    const tokens = someTokens(9, 64, 7);
    const got = loadReference(gqa).forward(tokens).logits;
    const mha = expandedKv(gqa, (h, heads, n) => Math.floor(h / (heads / n)));
    assert.deepEqual(loadReference(mha).forward(tokens).logits, got, `${preset} (${kv} KV heads)`);
    if (kv > 1) {
      // The interleaved assignment (h mod kv) is a different model: the check can fail.
      const wrong = expandedKv(gqa, (h, _heads, n) => h % n);
      assert.notDeepEqual(loadReference(wrong).forward(tokens).logits, got, `${preset}: interleaved KV heads`);
    }
  }
});

test('rotate_half RoPE: q·k depends only on the position difference and norms are kept', () => {
  const t = ropeFrequencies({ dim: 8, theta: 1e6, scaling: null });
  const q = [0.3, -1.2, 0.7, 2.0, 0.1, -0.4, 1.1, 0.9];
  const k = [1.1, 0.4, -0.9, 0.25, -0.6, 0.2, 0.3, -1.4];
  const dot = (a: ArrayLike<number>, b: ArrayLike<number>) => Array.from(a).reduce((s, v, i) => s + v * b[i], 0);
  const score = (m: number, n: number) => dot(rotateHalf(q, m, t), rotateHalf(k, n, t));
  for (const [m, n] of [[5, 2], [3, 40], [100, 1]]) {
    assert.ok(Math.abs(score(m, n) - score(m + 17, n + 17)) < 1e-12, `(${m},${n})`);
  }
  assert.ok(Math.abs(score(5, 2) - score(5, 3)) > 1e-3);
  assert.ok(Math.abs(Math.hypot(...rotateHalf(q, 7, t)) - Math.hypot(...q)) < 1e-12);
  // Pair j is (x[j], x[j + 4]): at position 1 dims 0 and 4 rotate by 1 radian (inv_freq[0] = 1).
  const r = rotateHalf([1, 0, 0, 0, 0, 0, 0, 0], 1, t);
  assert.ok(Math.abs(r[0] - Math.cos(1)) < 1e-15 && Math.abs(r[4] - Math.sin(1)) < 1e-15 && r[1] === 0);
});
