// The native engine against the independent float64 reference (test/reference):
// logits of prefill and of cached decode, batch independence, greedy generation and
// the adapter contract (served adapter == merged model), on the tiny presets.
import assert from 'node:assert/strict';
import { join } from 'node:path';

import type { NativeEngine } from '../../lib/engine/binding.js';
import { packStepRequest, type ChunkSpec } from '../../lib/engine/engine.js';
import { makeAdapter } from '../../tools/fixtures/adapter.js';
import { buildConfig, isMoeLayer, type PresetName } from '../../tools/fixtures/config.js';
import { makeModel, type FixtureDType } from '../../tools/fixtures/model.js';
import { CPU_ENGINE, addon, logitRows, relativeError, withAddon } from '../helpers/engine.js';
import { comparable, tolerance } from '../helpers/tolerance.js';
import { editedModel, mergedModel, presetModel, someTokens } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/tmp.js';
import { ReferenceModel, argmax } from '../reference/deepseek-v2.js';

const native = addon();
const { after, before, describe, test } = withAddon();
const loadEngine = (dir: string, opts = CPU_ENGINE) => {
  if ('skip' in native) throw new Error(native.skip);
  return native.binding.loadEngine(dir, opts);
};

/** Runs one step that returns logits; rows in token order. */
async function stepRows(engine: NativeEngine, chunks: ChunkSpec[]): Promise<{ rows: Float32Array[]; tokens: Int32Array }> {
  const out = await engine.step(packStepRequest(chunks, true));
  return { rows: logitRows(out.logits, engine.info().vocabSize), tokens: out.tokens };
}

/** Index of the first value whose bits differ, or -1 (bitwise equality, NaN and -0 included). */
function firstBitDifference(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  const ua = new Uint32Array(Float32Array.from(a).buffer);
  const ub = new Uint32Array(Float32Array.from(b).buffer);
  return ua.findIndex((v, i) => v !== ub[i]);
}

function assertBitwise(a: Float32Array, b: Float32Array, what: string): void {
  const i = firstBitDifference(a, b);
  assert.equal(i, -1, `${what}: differs at ${i} (${a[i]} vs ${b[i]})`);
}

const PRESETS: PresetName[] = ['tiny', 'tinyQLora', 'tinyGrouped'];
const DTYPES: FixtureDType[] = ['f32', 'bf16', 'f16'];
const CASES = (['bf16', 'f32'] as const).flatMap((kvCacheDtype) =>
  PRESETS.flatMap((preset) => DTYPES.map((dtype) => ({ preset, dtype, kvCacheDtype }))),
);

for (const { preset, dtype, kvCacheDtype } of CASES) {
  describe(`${preset} ${dtype}, ${kvCacheDtype} KV cache`, () => {
    let engine: NativeEngine;
    let ref: ReferenceModel;
    let tol: number;
    const dir = () => presetModel(preset, dtype);
    before(async () => {
      engine = await loadEngine(dir(), { ...CPU_ENGINE, kvCacheDtype });
      ref = ReferenceModel.load(dir(), { kvCacheDtype });
      tol = tolerance(engine, dtype);
    });
    after(() => engine?.close());

    test('info() describes the loaded model', () => {
      const cfg = buildConfig(preset);
      const info = engine.info();
      assert.equal(info.modelType, 'deepseek_v2');
      assert.equal(info.vocabSize, cfg.vocab_size);
      assert.equal(info.hiddenSize, cfg.hidden_size);
      assert.equal(info.numLayers, cfg.num_hidden_layers);
      assert.equal(info.numMoeLayers, Array.from({ length: cfg.num_hidden_layers }, (_, l) => l).filter((l) => isMoeLayer(cfg, l)).length);
      assert.equal(info.nRoutedExperts, cfg.n_routed_experts);
      assert.equal(info.numExpertsPerTok, cfg.num_experts_per_tok);
      assert.equal(info.moeIntermediateSize, cfg.moe_intermediate_size);
      assert.equal(info.maxPositionEmbeddings, cfg.max_position_embeddings);
      assert.equal(info.bosTokenId, cfg.bos_token_id);
      assert.equal(info.eosTokenId, cfg.eos_token_id);
      assert.equal(info.expertDtype, dtype);
    });

    test('prefill logits of every position match the reference', async () => {
      const tokens = someTokens(13, 64, 1);
      const want = ref.forward(tokens);
      const { rows } = await stepRows(engine, [{ seqId: 1, tokens, sample: false }]);
      assert.equal(rows.length, tokens.length);
      rows.slice(0, comparable(engine, dtype, want)).forEach((row, i) => {
        const err = relativeError(row, want.logits[i]);
        assert.ok(err <= tol, `position ${i}: relative error ${err} > ${tol} (reference routing margin ${want.routerMargins[i]})`);
      });
      assert.equal(engine.sequenceLength(1), tokens.length);
      engine.freeSequence(1);
      assert.equal(engine.sequenceLength(1), -1);
    });

    test('decode token by token with the cache: matches the reference and, bitwise, a prefill', async () => {
      const tokens = someTokens(10, 64, 2);
      const want = ref.forward(tokens);
      const prefill = (await stepRows(engine, [{ seqId: 2, tokens, sample: false }])).rows;
      engine.freeSequence(2);
      for (let i = 0; i < tokens.length; i++) {
        const [row] = (await stepRows(engine, [{ seqId: 3, tokens: [tokens[i]], sample: false }])).rows;
        const err = relativeError(row, want.logits[i]);
        if (i < comparable(engine, dtype, want)) assert.ok(err <= tol, `position ${i}: relative error ${err} > ${tol}`);
        assertBitwise(row, prefill[i], `position ${i}: decode vs prefill`);
      }
      assert.equal(engine.sequenceLength(3), tokens.length);
      engine.freeSequence(3);
    });

    test('a mixed batch (prefill, decode and continued chunks) equals each sequence alone, bitwise', async () => {
      const a = someTokens(7, 64, 3);
      const b = someTokens(6, 64, 4);
      const c = someTokens(7, 64, 5);
      const d = someTokens(1, 64, 6);
      // Each sequence alone: b decodes after 5 tokens, c continues with 4 after 3.
      const alone = async (seqId: number, history: number[], chunk: number[]) => {
        if (history.length > 0) await engine.step(packStepRequest([{ seqId, tokens: history, sample: false }]));
        const r = await stepRows(engine, [{ seqId, tokens: chunk }]);
        engine.freeSequence(seqId);
        return r;
      };
      const soloA = await alone(10, [], a);
      const soloB = await alone(11, b.slice(0, 5), b.slice(5));
      const soloC = await alone(12, c.slice(0, 3), c.slice(3));
      const soloD = await alone(13, [], d);

      await engine.step(packStepRequest([{ seqId: 21, tokens: b.slice(0, 5), sample: false }, { seqId: 22, tokens: c.slice(0, 3), sample: false }]));
      const mixed = await stepRows(engine, [
        { seqId: 20, tokens: a },
        { seqId: 21, tokens: b.slice(5) },
        { seqId: 22, tokens: c.slice(3) },
        { seqId: 23, tokens: d },
      ]);
      const solo = [soloA, soloB, soloC, soloD];
      let at = 0;
      solo.forEach((s, k) => {
        s.rows.forEach((row, i) => assertBitwise(mixed.rows[at + i], row, `chunk ${k} token ${i}`));
        at += s.rows.length;
        assert.equal(mixed.tokens[k], s.tokens[0], `chunk ${k}: sampled token`);
      });
      // And the batch is still right, not merely self-consistent.
      const wantC = ref.forward(c);
      const upTo = comparable(engine, dtype, wantC);
      mixed.rows.slice(8, 12).forEach((row, i) => {
        if (3 + i < upTo) assert.ok(relativeError(row, wantC.logits[3 + i]) <= tol, `chunk 2 token ${i}`);
      });
      for (const id of [20, 21, 22, 23]) engine.freeSequence(id);
    });

    test('greedy generation follows the argmax of the reference step by step', async () => {
      const seq = someTokens(5, 64, 7);
      let out = await engine.step(packStepRequest([{ seqId: 30, tokens: seq, temperature: 0 }]));
      for (let n = 0; n < 8; n++) {
        const token = out.tokens[0];
        const want = ref.forward(seq);
        if (comparable(engine, dtype, want) < seq.length) break; // a routing near-tie the bf16 rounding may flip
        const logits = want.logits[seq.length - 1];
        const best = argmax(logits);
        const sorted = [...logits].sort((x, y) => y - x);
        const scale = Math.max(...logits.map(Math.abs));
        // Only a near-tie within the tolerance may go either way.
        if (sorted[0] - sorted[1] > 2 * tol * scale) assert.equal(token, best, `generated token ${n}`);
        else assert.ok(logits[token] >= sorted[1], `generated token ${n}: ${token} is not one of the tied best`);
        seq.push(token);
        out = await engine.step(packStepRequest([{ seqId: 30, tokens: [token], temperature: 0 }]));
      }
      engine.freeSequence(30);
    });
  });
}

describe('sharded checkpoints', () => {
  test('a sharded model gives the same logits as the single-file one, bitwise', async () => {
    const dir = join(tempDir(), 'sharded');
    makeModel(dir, buildConfig('tiny'), { dtype: 'f32', seed: 1, maxShardBytes: 20_000 });
    const tokens = someTokens(6, 64, 8);
    const results: Float32Array[][] = [];
    for (const d of [presetModel('tiny'), dir]) {
      const engine = await loadEngine(d);
      results.push((await stepRows(engine, [{ seqId: 0, tokens, sample: false }])).rows);
      engine.close();
    }
    results[0].forEach((row, i) => assertBitwise(results[1][i], row, `position ${i}`));
  });
});

describe('adapters: a served adapter equals the merged model', () => {
  test('adapter rows match the merged reference and, bitwise, a merged checkpoint; base rows are untouched', async () => {
    const base = presetModel('tiny');
    const adapterDir = join(tempDir(), 'adapter');
    makeAdapter(adapterDir, base, { 1: [0, 3, 6], 2: [1, 2] }, { seed: 5 });
    const merged = mergedModel(base, adapterDir);
    const tokens = someTokens(9, 64, 9);
    // The engines below keep the CPU default, a bf16 latent cache.
    const want = ReferenceModel.load(base, { adapterDir, kvCacheDtype: 'bf16' }).forward(tokens).logits;
    const wantBase = ReferenceModel.load(base, { kvCacheDtype: 'bf16' }).forward(tokens).logits;
    // The adapter must change the answer, or serving the base for it would pass.
    const change = Math.max(...tokens.map((_, i) => relativeError(want[i], wantBase[i])));
    assert.ok(change > 1e-2, `the adapter changes the reference logits by only ${change}`);
    const perLayer = [1, 2].map((l) => {
      const dir = join(tempDir(), `adapter-layer-${l}`);
      makeAdapter(dir, base, { [l]: l === 1 ? [0, 3, 6] : [1, 2] }, { seed: 5 });
      return Math.max(...ReferenceModel.load(base, { adapterDir: dir }).forward(tokens).logits.map((row, i) => relativeError(row, wantBase[i])));
    });
    for (const [k, c] of perLayer.entries()) assert.ok(c > 1e-2, `the adapter's layer ${k + 1} experts change the logits by only ${c}`);

    const engine = await loadEngine(base, { ...CPU_ENGINE, maxAdapterSlots: 8, maxAdapters: 4 });
    const mergedEngine = await loadEngine(merged);
    try {
      const { row } = await engine.registerAdapter(adapterDir);
      assert.ok(row > 0, 'row 0 is the base model');
      const both = await stepRows(engine, [
        { seqId: 1, adapter: row, tokens, sample: false },
        { seqId: 2, adapter: 0, tokens, sample: false },
      ]);
      const viaMerged = (await stepRows(mergedEngine, [{ seqId: 1, tokens, sample: false }])).rows;
      const baseAlone = (await stepRows(engine, [{ seqId: 3, tokens, sample: false }])).rows;
      tokens.forEach((_, i) => {
        assert.ok(relativeError(both.rows[i], want[i]) <= tolerance(engine, 'f32'), `adapter position ${i} vs merged reference`);
        assertBitwise(both.rows[i], viaMerged[i], `adapter position ${i} vs merged checkpoint`);
        assert.ok(relativeError(both.rows[tokens.length + i], wantBase[i]) <= tolerance(engine, 'f32'), `base position ${i} vs reference`);
        assertBitwise(both.rows[tokens.length + i], baseAlone[i], `base position ${i} beside an adapter vs alone`);
      });
    } finally {
      engine.close();
      mergedEngine.close();
    }
  });
});

describe('router ties go to the lower expert id, as in the reference', () => {
  // Exact ties: a MoE layer whose router is all zeros (every expert, and every group,
  // ties for every token) and one where two experts' router rows are equal.
  for (const preset of ['tiny', 'tinyGrouped'] as const) {
    test(`${preset}: a zeroed router and duplicated router rows`, async () => {
      const cfg = buildConfig(preset);
      const moeLayers = Array.from({ length: cfg.num_hidden_layers }, (_, l) => l).filter((l) => isMoeLayer(cfg, l));
      const H = cfg.hidden_size;
      const dir = editedModel(presetModel(preset), (tensors) =>
        tensors.map((t) => {
          const m = /^model\.layers\.(\d+)\.mlp\.gate\.weight$/.exec(t.name);
          if (!m) return t;
          const data = Float64Array.from(t.data as ArrayLike<number>);
          if (Number(m[1]) === moeLayers[0]) data.fill(0);
          else data.copyWithin(3 * H, 1 * H, 2 * H); // expert 3's row = expert 1's
          return { ...t, data };
        }),
      );
      const tokens = someTokens(9, cfg.vocab_size, 10);
      const want = ReferenceModel.load(dir, { kvCacheDtype: 'bf16' }).forward(tokens);
      assert.equal(want.minRouterMargin, 0, 'the fixture has exact ties at the top-k boundary');
      const engine = await loadEngine(dir);
      try {
        const { rows } = await stepRows(engine, [{ seqId: 1, tokens, sample: false }]);
        rows.forEach((row, i) => {
          const err = relativeError(row, want.logits[i]);
          const tol = tolerance(engine, 'f32');
          assert.ok(err <= tol, `position ${i}: relative error ${err} > ${tol} (a tie broken another way)`);
        });
      } finally {
        engine.close();
      }
    });
  }
});
