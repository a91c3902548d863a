// The native engine on the families beyond DeepSeek-V2 (Qwen3-MoE, DeepSeek-V3 routing as
// in V3/R1 and in Moonlight / Kimi-K2, Mixtral) against their independent float64
// references (test/reference, loadReference), with an f32 and a bf16 KV cache: prefill logits
// and cached decode within the tolerances of test/helpers/tolerance.ts (1e-5 relative with an
// f32 cache, 1e-4 with bf16, the reference rounding what it caches alike), decode == prefill bitwise, a mixed batch of the base and three ESFT
// adapters equal to each merged checkpoint (bitwise) and to the merged reference, and
// config errors that name the key. Each case prints its measured maximum error.
import assert from 'node:assert/strict';
import { join } from 'node:path';

import type { NativeEngine } from '../../lib/engine/binding.js';
import { packStepRequest, type ChunkSpec } from '../../lib/engine/engine.js';
import { fitSelection, loadEsftSelection, makeAdapter } from '../../tools/fixtures/adapter.js';
import { moeLayers, presetConfig, type AnyPresetName } from '../../tools/fixtures/families.js';
import type { FixtureDType } from '../../tools/fixtures/model.js';
import { CPU_ENGINE, addon, logitRows, relativeError, withAddon } from '../helpers/engine.js';
import { editedModel, mergedModel, presetModel, someTokens } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/tmp.js';
import { comparable, tolerance } from '../helpers/tolerance.js';
import { loadReference } from '../reference/load.js';

const native = addon();
const { after, before, describe, test } = withAddon();
const loadEngine = (dir: string, opts = CPU_ENGINE) => {
  if ('skip' in native) throw new Error(native.skip);
  return native.binding.loadEngine(dir, opts);
};


interface Case {
  preset: AnyPresetName;
  family: string;
  attention: 'mla' | 'gqa';
  /** KV cache elements per token per layer the preset implies. */
  kvWidth: number;
}
const CASES: Case[] = [
  { preset: 'qwen3Tiny', family: 'qwen3_moe', attention: 'gqa', kvWidth: 2 * 2 * 16 },
  { preset: 'qwen3TinySparse', family: 'qwen3_moe', attention: 'gqa', kvWidth: 2 * 1 * 8 },
  { preset: 'v3Tiny', family: 'deepseek_v3', attention: 'mla', kvWidth: 16 + 4 },
  { preset: 'v3TinyMoonlight', family: 'deepseek_v3', attention: 'mla', kvWidth: 16 + 4 },
  { preset: 'mixtralTiny', family: 'mixtral', attention: 'gqa', kvWidth: 2 * 2 * 8 },
];
const DTYPES: FixtureDType[] = ['f32', 'bf16'];
const KV_DTYPES = ['f32', 'bf16'] as const;
const ADAPTER_TASKS = ['law', 'summary', 'translation'];

const measured: string[] = [];
after(() => {
  if (measured.length > 0) console.log(`family-reference: max relative error vs the float64 reference\n  ${measured.join('\n  ')}`);
});

async function stepRows(engine: NativeEngine, chunks: ChunkSpec[]): Promise<Float32Array[]> {
  const out = await engine.step(packStepRequest(chunks, true));
  return logitRows(out.logits, engine.info().vocabSize);
}

function assertBitwise(a: Float32Array, b: Float32Array, what: string): void {
  const ua = new Uint32Array(Float32Array.from(a).buffer);
  const ub = new Uint32Array(Float32Array.from(b).buffer);
  const i = a.length !== b.length ? 0 : ua.findIndex((v, j) => v !== ub[j]);
  assert.equal(i, -1, `${what}: differs at ${i} (${a[i]} vs ${b[i]})`);
}

for (const c of CASES) {
  for (const dtype of DTYPES) for (const kvCacheDtype of KV_DTYPES) {
    describe(`${c.preset} (${c.family}) ${dtype}, ${kvCacheDtype} KV cache`, () => {
      const cfg = presetConfig(c.preset);
      const vocab = cfg.vocab_size;
      let dir: string;
      let engine: NativeEngine;
      let maxErr = 0;
      let tol: number;
      const engineOpts = { ...CPU_ENGINE, kvCacheDtype };
      const reference = (opts: { adapterDir?: string } = {}) => loadReference(dir, { ...opts, kvCacheDtype });
      const track = (err: number) => (maxErr = Math.max(maxErr, err));
      before(async () => {
        dir = presetModel(c.preset, dtype);
        engine = await loadEngine(dir, { ...engineOpts, maxAdapterSlots: 48, maxAdapters: 4 });
        tol = tolerance(engine, dtype);
      });
      after(() => {
        engine?.close();
        measured.push(`${c.preset} ${dtype}, ${kvCacheDtype} cache: ${maxErr.toExponential(2)} (bound ${tol})`);
      });

      test('info() and the KV cache describe the family', () => {
        const info = engine.info();
        assert.equal(info.modelType, c.family);
        assert.equal(info.attention, c.attention);
        assert.equal(info.numLayers, cfg.num_hidden_layers);
        assert.equal(info.numMoeLayers, moeLayers(cfg).length);
        assert.equal(info.expertDtype, dtype);
        assert.equal(info.kvCacheDtype, kvCacheDtype);
        assert.equal(info.kvBytesPerTokenPerLayer, c.kvWidth * (kvCacheDtype === 'f32' ? 4 : 2));
      });

      test('prefill logits match the reference; token-by-token decode matches it and, bitwise, the prefill', async () => {
        const tokens = someTokens(12, vocab, 1);
        const want = reference().forward(tokens);
        const prefill = await stepRows(engine, [{ seqId: 1, tokens, sample: false }]);
        prefill.slice(0, comparable(engine, dtype, want)).forEach((row, i) => {
          const err = track(relativeError(row, want.logits[i]));
          assert.ok(err <= tol, `position ${i}: relative error ${err} > ${tol} (reference routing margin ${want.routerMargins[i]})`);
        });
        engine.freeSequence(1);
        for (let i = 0; i < tokens.length; i++) {
          const [row] = await stepRows(engine, [{ seqId: 2, tokens: [tokens[i]], sample: false }]);
          assertBitwise(row, prefill[i], `position ${i}: decode vs prefill`);
        }
        engine.freeSequence(2);
      });

      test('a mixed batch of the base and three adapters equals each merged model', async () => {
        const adapters = ADAPTER_TASKS.map((task, i) => {
          const adapterDir = join(tempDir(), `${c.preset}-${task}`);
          makeAdapter(adapterDir, dir, fitSelection(cfg, loadEsftSelection(task)), { seed: 40 + i });
          return adapterDir;
        });
        const rows = [0];
        for (const a of adapters) rows.push((await engine.registerAdapter(a)).row);
        const prompts = rows.map((_, i) => someTokens(6 + i, vocab, 10 + i));
        // One step: every prompt as a prefill chunk on its row.
        const mixed = await stepRows(
          engine,
          rows.map((adapter, i) => ({ seqId: 100 + i, adapter, tokens: prompts[i], sample: false })),
        );
        let at = 0;
        for (let i = 0; i < rows.length; i++) {
          const modelDir = i === 0 ? dir : mergedModel(dir, adapters[i - 1]);
          const alone = await loadEngine(modelDir, engineOpts);
          try {
            const want = await stepRows(alone, [{ seqId: 1, tokens: prompts[i], sample: false }]);
            const wantOut = reference(i === 0 ? {} : { adapterDir: adapters[i - 1] }).forward(prompts[i]);
            const wantRef = wantOut.logits;
            const upTo = comparable(engine, dtype, wantOut);
            want.forEach((row, j) => {
              assertBitwise(mixed[at + j], row, `row ${rows[i]} token ${j} vs ${i === 0 ? 'the base' : 'its merged checkpoint'}`);
              if (j >= upTo) return;
              const err = track(relativeError(mixed[at + j], wantRef[j]));
              assert.ok(err <= tol, `row ${rows[i]} token ${j}: relative error ${err} vs the merged reference`);
            });
            if (i > 0) {
              // The adapter must change the answer, or serving the base for it would pass.
              const base = reference().forward(prompts[i]).logits;
              const change = Math.max(...wantRef.map((row, j) => relativeError(row, base[j])));
              assert.ok(change > 1e-3, `adapter ${i}: changes the reference logits by only ${change}`);
            }
          } finally {
            alone.close();
          }
          at += prompts[i].length;
        }
        for (let i = 0; i < rows.length; i++) engine.freeSequence(100 + i);
        for (const r of rows.slice(1)) engine.unregisterAdapter(r);
      });
    });
  }
}

describe('config errors name the key and the value, per family', () => {
  const refuses = async (preset: AnyPresetName, edit: (cfg: Record<string, unknown>) => void, ...patterns: RegExp[]) => {
    const dir = editedModel(presetModel(preset), undefined, edit);
    await assert.rejects(loadEngine(dir), (e: unknown) => {
      assert.ok(e instanceof Error);
      for (const p of patterns) assert.match(e.message, p);
      return true;
    });
    // The reference refuses it too: the two read the same published keys.
    assert.throws(() => loadReference(dir));
  };
  test('qwen3_moe', async () => {
    await refuses('qwen3Tiny', (c) => (c.use_sliding_window = true), /use_sliding_window/, /true/);
    await refuses('qwen3Tiny', (c) => (c.attention_bias = true), /attention_bias/, /true/);
    await refuses('qwen3Tiny', (c) => (c.rope_scaling = { rope_type: 'yarn', factor: 4 }), /rope_scaling/);
    await refuses('qwen3Tiny', (c) => (c.num_key_value_heads = 3), /num_key_value_heads \(3\)/);
    await refuses('qwen3Tiny', (c) => (c.head_dim = 15), /head_dim/, /15/);
    await refuses('qwen3Tiny', (c) => (c.hidden_act = 'gelu'), /hidden_act/, /gelu/);
    await refuses('qwen3Tiny', (c) => delete c.num_key_value_heads, /num_key_value_heads/);
  });
  test('deepseek_v3', async () => {
    await refuses('v3Tiny', (c) => (c.scoring_func = 'softmax'), /scoring_func/, /softmax/);
    await refuses('v3Tiny', (c) => (c.topk_method = 'greedy'), /topk_method/, /greedy/);
    await refuses('v3Tiny', (c) => (c.n_group = 16), /n_group \(16\)/, /groups of at least 2/);
    await refuses('v3Tiny', (c) => (c.topk_group = 5), /topk_group \(5\)/);
    await refuses('v3Tiny', (c) => (c.rope_interleave = false), /rope_interleave/, /false/);
  });
  test('mixtral', async () => {
    await refuses('mixtralTiny', (c) => (c.sliding_window = 4096), /sliding_window/, /4096/);
    await refuses('mixtralTiny', (c) => (c.rope_scaling = { type: 'linear', factor: 2 }), /rope_scaling/);
    await refuses('mixtralTiny', (c) => (c.num_experts_per_tok = 9), /num_experts_per_tok \(9\)/);
  });
});
