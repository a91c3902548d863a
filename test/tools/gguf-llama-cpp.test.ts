// llama.cpp itself reads what tools/gguf writes and computes what ExpertWeave does:
// runs only where `npm run bench:peers` has built llama.cpp (bench/.peers/, git-ignored),
// skipped elsewhere (CI never builds it).
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';

import { llamaCppReady, loadLlamaCpp } from '../../bench/peers/llama-cpp.js';
import { bestFp32Path, loadBinding, type CpuPath } from '../../lib/engine/binding.js';
import { Engine } from '../../lib/engine/engine.js';
import { buildConfig } from '../../tools/fixtures/config.js';
import { makeModel } from '../../tools/fixtures/model.js';
import { convertDeepseekV2 } from '../../tools/gguf/deepseek2.js';
import { someTokens } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/tmp.js';

const skip = llamaCppReady() ? false : 'llama.cpp is not built here (npm run bench:peers builds it)';

async function llamaCppTokens(gguf: string, prompt: number[], n: number, expect: { bos: number; eos: number }): Promise<number[]> {
  const llama = await loadLlamaCpp(1);
  const model = await llama.loadModel({ modelPath: gguf, gpuLayers: 0 });
  const context = await model.createContext({ contextSize: 256, batchSize: 256, sequences: 1, threads: { ideal: 1, min: 1 } });
  const tokens: number[] = [];
  try {
    assert.equal(model.tokens.bos, expect.bos);
    assert.equal(model.tokens.eos, expect.eos);
    const it = context.getSequence().evaluate(prompt, { temperature: 0, yieldEogToken: true });
    for (let i = 0; i < n; i++) {
      const r = await it.next();
      assert.ok(!r.done);
      tokens.push(r.value);
    }
    await it.return();
  } finally {
    await context.dispose();
    await model.dispose();
    await llama.dispose();
  }
  return tokens;
}

/** The best CPU path with fp32 activations (the process default may be a bf16 one under EW_CPU_PATH). */
function exactCpuPath(): CpuPath {
  return bestFp32Path(loadBinding().buildInfo().cpuPaths);
}

test('llama.cpp runs the GGUF of a yarn + q_lora_rank-null model: greedy tokens equal ExpertWeave\'s', { skip }, async () => {
  const root = tempDir();
  const cfg = buildConfig('tiny', { vocab_size: 512, hidden_size: 128, moe_intermediate_size: 32, kv_lora_rank: 32 });
  makeModel(join(root, 'm'), cfg, { dtype: 'bf16', seed: 5 });
  // Exact equality needs the same arithmetic: llama.cpp rounds activations to bf16 before a
  // bf16 matmul, ExpertWeave keeps them f32, so the check runs on the weights widened to F32.
  convertDeepseekV2(join(root, 'm'), join(root, 'f32.gguf'), { widenToF32: true });
  convertDeepseekV2(join(root, 'm'), join(root, 'bf16.gguf'));
  const prompt = someTokens(24, cfg.vocab_size);
  const generate = 16;

  // An f32 latent cache and fp32 activations (avx512 or below): the arithmetic the F32 file gets.
  const engine = await Engine.load(join(root, 'm'), { device: 'cpu', threads: 1, kvCacheDtype: 'f32', cpuPath: exactCpuPath() });
  const ours: number[] = [];
  try {
    let out = await engine.step([{ seqId: 1, tokens: prompt }]);
    ours.push(out.tokens[0]);
    for (let i = 0; i < generate; i++) {
      out = await engine.step([{ seqId: 1, tokens: [ours[ours.length - 1]] }]);
      ours.push(out.tokens[0]);
    }
  } finally {
    engine.close();
  }

  const expect = { bos: cfg.bos_token_id, eos: cfg.eos_token_id };
  assert.deepEqual(await llamaCppTokens(join(root, 'f32.gguf'), prompt, generate + 1, expect), ours);
  // The bf16 file (bf16 attn_k_b/attn_v_b, the one the benchmark times) loads and runs.
  const bf16 = await llamaCppTokens(join(root, 'bf16.gguf'), prompt, generate + 1, expect);
  assert.ok(bf16.every((t) => Number.isInteger(t) && t >= 0 && t < cfg.vocab_size));
});
