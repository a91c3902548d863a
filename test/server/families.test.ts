// The daemon serving each family beyond DeepSeek-V2 end to end (qwen3_moe, deepseek_v3,
// mixtral), with three ESFT adapters fitted from the real ESFT selections: WebSocket
// streams and OpenAI HTTP completions (the official SDK) of the base and the adapters,
// concurrently, each equal to the greedy continuation of the base or merged checkpoint
// run alone; /health names the model type and the KV cache's bytes per token.
import assert from 'node:assert/strict';
import { join } from 'node:path';

import OpenAI from 'openai';

import type { Daemon } from '../../lib/server/daemon.js';
import { fitSelection, loadEsftSelection, makeAdapter } from '../../tools/fixtures/adapter.js';
import { presetConfig, type AnyPresetName } from '../../tools/fixtures/families.js';
import { withAddon } from '../helpers/engine.js';
import { presetModel } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/tmp.js';
import { StreamClient } from '../helpers/ws-client.js';
import { ENGINE, Expected, cases, start, waitFor, type Case, type Continuation } from './daemon-helpers.js';

const { after, before, describe, test } = withAddon();

const FAMILIES: { preset: AnyPresetName; modelType: string; attention: string; kvBytes: number }[] = [
  // KV bytes per token per layer with the CPU default, a bf16 cache.
  { preset: 'qwen3Tiny', modelType: 'qwen3_moe', attention: 'gqa', kvBytes: 2 * 2 * 16 * 2 },
  { preset: 'v3Tiny', modelType: 'deepseek_v3', attention: 'mla', kvBytes: (16 + 4) * 2 },
  { preset: 'mixtralTiny', modelType: 'mixtral', attention: 'gqa', kvBytes: 2 * 2 * 8 * 2 },
];

for (const fam of FAMILIES) {
  describe(`daemon serving ${fam.preset} (${fam.modelType})`, () => {
    const engine = { ...ENGINE, maxAdapterSlots: 48 };
    let daemon: Daemon;
    let base: string;
    let expected: Expected;
    let all: Case[];
    const refs = new Map<Case, Continuation>();

    before(async () => {
      const model = presetModel(fam.preset);
      const cfg = presetConfig(fam.preset);
      const root = tempDir('ew-family-adapters-');
      const adapters = ['law', 'summary', 'translation'].map((task, i) => {
        const dir = join(root, task);
        makeAdapter(dir, model, fitSelection(cfg, loadEsftSelection(task)), { seed: 60 + i });
        return { name: task, dir };
      });
      daemon = await start(model, { adapters, engine });
      base = `http://127.0.0.1:${daemon.server.port}`;
      all = cases(daemon.engine.info.vocabSize, [null, 'law', 'summary', 'translation'], 8);
      expected = new Expected(model, adapters, engine);
      for (const c of all) refs.set(c, await expected.of(c));
    });
    after(async () => {
      await daemon?.close();
      await expected?.close();
    });

    test('the adapters change the continuations (the comparisons below can tell them apart)', () => {
      const of = (a: string | null) => all.filter((c) => c.adapter === a).map((c) => refs.get(c)!.tokens.join(','));
      for (const a of ['law', 'summary', 'translation']) assert.notDeepEqual(of(a), of(null), a);
    });

    test('GET /health names the family and its KV bytes per token per layer', async () => {
      const health = (await (await fetch(base + '/health')).json()) as { model_type: string; kv_cache: Record<string, unknown> };
      assert.equal(health.model_type, fam.modelType);
      assert.deepEqual(health.kv_cache, { attention: fam.attention, dtype: 'bf16', bytes_per_token_per_layer: fam.kvBytes, layers: presetConfig(fam.preset).num_hidden_layers });
    });

    test('WebSocket streams and OpenAI completions, concurrently, equal each request run alone', async () => {
      const ws = await StreamClient.open(`ws://127.0.0.1:${daemon.server.port}/v1/stream`);
      const client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 });
      const results = await Promise.all(
        all.map(async (c, i) => {
          if (i % 2 === 0) {
            const r = await ws.generate({ id: `r${i}`, adapter: c.adapter, prompt: c.prompt, max_tokens: c.maxTokens, temperature: 0 });
            assert.equal(r.end.type, 'done', JSON.stringify(r.end));
            return { tokens: r.tokens, finish: r.end.finish_reason as string };
          }
          const r = await client.completions.create({ model: c.adapter ?? daemon.service.modelName, prompt: c.prompt, max_tokens: c.maxTokens, temperature: 0, logprobs: 1 });
          // No tokenizer in the fixture: tokens come back in vLLM's token_id form.
          const tokens = r.choices[0].logprobs!.tokens!.map((t) => Number(t.replace('token_id:', '')));
          const finish = r.choices[0].finish_reason === 'stop' ? 'eos' : r.choices[0].finish_reason;
          return { tokens, finish };
        }),
      );
      results.forEach((r, i) => {
        const ref = refs.get(all[i])!;
        assert.deepEqual(r.tokens, ref.tokens, `request ${i} (${all[i].adapter ?? 'base'}, ${i % 2 === 0 ? 'WebSocket' : 'HTTP'})`);
        assert.equal(r.finish, ref.finish, `request ${i}`);
      });
      ws.close();
      await waitFor(() => daemon.engine.kvStats().sequences === 0, 'every sequence freed');
    });
  });
}
