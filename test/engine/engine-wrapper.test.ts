// lib/engine/engine.ts over the real addon and a tiny random model: generate()'s
// stopping rules and cleanup, and the boundary's behaviour on bad input and misuse.
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import type { StepRequest } from '../../lib/engine/binding.js';
import { Engine, packStepRequest, type ChunkSpec } from '../../lib/engine/engine.js';
import { CPU_ENGINE, withAddon } from '../helpers/engine.js';
import { presetModel } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/tmp.js';

const { after, before, describe, test } = withAddon();

describe('Engine over the addon (tiny random model)', () => {
  let dir: string;
  let engine: Engine;

  before(async () => {
    dir = presetModel('tiny');
    engine = await Engine.load(dir, CPU_ENGINE);
  });
  after(() => engine.close());

  const PROMPT = [3, 14, 15, 9, 2, 6, 5, 3, 5];

  async function greedy(e: Engine, maxTokens: number, extra: Partial<Parameters<Engine['generate']>[1]> = {}) {
    const tokens: number[] = [];
    const result = await e.generate(PROMPT, { maxTokens, ...extra }, ({ token, index }) => {
      assert.equal(index, tokens.length);
      tokens.push(token);
    });
    return { tokens, result };
  }

  /** The first position whose token did not occur before it (so a stop on it ends there). */
  function firstNewTokenAfterStart(tokens: number[]): number {
    for (let j = 1; j < tokens.length; j++) if (!tokens.slice(0, j).includes(tokens[j])) return j;
    return 0;
  }

  test('generate stops at maxTokens and frees its sequence', async () => {
    const { tokens, result } = await greedy(engine, 6);
    assert.equal(result.finishReason, 'length');
    assert.equal(tokens.length, 6);
    assert.equal(result.completionTokens, 6);
    assert.equal(result.promptTokens, PROMPT.length);
    assert.equal(engine.sequenceLength(0), -1);
    assert.equal(engine.kvStats().sequences, 0);
  });

  test('prefill in chunks of one token gives the same greedy continuation', async () => {
    const whole = await greedy(engine, 5);
    const chunked = await greedy(engine, 5, { prefillChunk: 1 });
    assert.deepEqual(chunked.tokens, whole.tokens);
  });

  test('a stop token ends generation before it is emitted', async () => {
    const { tokens } = await greedy(engine, 8);
    const j = firstNewTokenAfterStart(tokens);
    const stopped = await greedy(engine, 8, { stop: [tokens[j]] });
    assert.equal(stopped.result.finishReason, 'stop');
    assert.deepEqual(stopped.tokens, tokens.slice(0, j));
  });

  test('EOS (from config.json) ends generation', async () => {
    const { tokens } = await greedy(engine, 8);
    const j = firstNewTokenAfterStart(tokens);
    // Same weights, eos_token_id set to the token greedy decoding reaches at position j.
    const copy = tempDir('ew-eos-');
    for (const f of readdirSync(dir)) if (f !== 'config.json') symlinkSync(join(dir, f), join(copy, f));
    const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8'));
    writeFileSync(join(copy, 'config.json'), JSON.stringify({ ...config, eos_token_id: tokens[j] }));
    const e = await Engine.load(copy, CPU_ENGINE);
    try {
      const r = await greedy(e, 8);
      assert.equal(r.result.finishReason, 'eos');
      assert.deepEqual(r.tokens, tokens.slice(0, j));
    } finally {
      e.close();
    }
  });

  test('generation stops at the end of the model context', async () => {
    const max = engine.info.maxPositionEmbeddings;
    const prompt = Array.from({ length: max - 3 }, (_, i) => 2 + (i % 7));
    const r = await engine.generate(prompt, { maxTokens: 50 });
    assert.equal(r.finishReason, 'length');
    assert.equal(r.completionTokens, 3);
    await assert.rejects(engine.generate(Array(max).fill(2), { maxTokens: 1 }), /context is/);
  });

  test('an error in onToken still frees the sequence', async () => {
    await assert.rejects(
      engine.generate(PROMPT, { maxTokens: 4, seqId: 3 }, () => {
        throw new Error('consumer failed');
      }),
      /consumer failed/,
    );
    assert.equal(engine.sequenceLength(3), -1);
  });

  test('malformed step requests reject with TypeError/RangeError and the engine keeps working', async () => {
    const good = packStepRequest([{ seqId: 40, tokens: [1, 2] }]);
    const bad: [unknown, RegExp, string][] = [
      [undefined, /expected a StepRequest object/, 'TypeError'],
      [{}, /step: seqIds must be an Int32Array/, 'TypeError'],
      [{ ...good, seqIds: [40] }, /seqIds must be an Int32Array/, 'TypeError'],
      [{ ...good, adapters: new Int32Array(2) }, /adapters must be an Int32Array of length 1 \(got an Int32Array of length 2\)/, 'TypeError'],
      [{ ...good, tokens: Int32Array.of(1) }, /tokens must be an Int32Array of length 2/, 'TypeError'],
      [{ ...good, sample: new Int32Array(1) }, /sample must be a Uint8Array of length 1/, 'TypeError'],
      [{ ...good, nTokens: Int32Array.of(0), tokens: new Int32Array(0) }, /nTokens\[0\] must be >= 1/, 'RangeError'],
      [{ ...good, returnLogits: 'yes' }, /returnLogits must be a boolean/, 'TypeError'],
    ];
    for (const [req, message, name] of bad) {
      await assert.rejects(engine.stepPacked(req as StepRequest), { name, message }, JSON.stringify(req));
    }
    const out = await engine.stepPacked(good);
    assert.equal(out.tokens.length, 1);
    assert.equal(out.errors, undefined);
    engine.freeSequence(40);
  });

  test('a chunk whose own values cannot run fails alone; the chunks beside it run as alone', async () => {
    const alone = await engine.step([{ seqId: 42, tokens: PROMPT }], true);
    engine.freeSequence(42);
    const bad: [Partial<ChunkSpec>, RegExp][] = [
      [{ tokens: [engine.info.vocabSize + 5] }, /outside the vocabulary/],
      [{ seed: -1 }, /seeds\[1\] must be an integer in \[0, 2\^53\]/],
      [{ topP: 0 }, /top_p 0 must be in \(0, 1\]/],
      [{ temperature: Infinity }, /temperature inf must be a finite number/],
      [{ adapter: 7 }, /adapter row 7/],
    ];
    for (const [spec, message] of bad) {
      const out = await engine.step([{ seqId: 42, tokens: PROMPT }, { seqId: 43, tokens: [5], ...spec }], true);
      assert.ok(out.errors, JSON.stringify(spec));
      assert.equal(out.errors[0], null);
      assert.match(out.errors[1]!, message);
      assert.equal(out.tokens[1], -1);
      assert.equal(out.tokens[0], alone.tokens[0]);
      assert.deepEqual(out.logits!.subarray(0, alone.logits!.length), alone.logits);
      assert.equal(engine.sequenceLength(42), PROMPT.length);
      assert.equal(engine.sequenceLength(43), -1);
      engine.freeSequence(42);
    }
  });

  test('a second step while one runs is rejected; the first completes', async () => {
    const first = engine.step([{ seqId: 50, tokens: PROMPT }]);
    await assert.rejects(engine.step([{ seqId: 51, tokens: [1] }]), /another step is still running/);
    const out = await first;
    assert.equal(out.tokens.length, 1);
    assert.equal(engine.sequenceLength(50), PROMPT.length);
    assert.equal(engine.sequenceLength(51), -1);
    engine.freeSequence(50);
  });

  test('unknown sequence ids: length -1, free is a no-op', () => {
    assert.equal(engine.sequenceLength(987654), -1);
    engine.freeSequence(987654);
    assert.throws(() => engine.freeSequence(-1), RangeError);
    assert.throws(() => engine.sequenceLength(1.5), TypeError);
  });

  test('during a step: freeSequence is deferred, sequenceLength throws, stats are the pre-step ones', async () => {
    const before = engine.kvStats();
    const running = engine.step([{ seqId: 60, tokens: PROMPT }]);
    engine.freeSequence(60);
    assert.throws(() => engine.sequenceLength(60), /a step is running/);
    assert.deepEqual(engine.kvStats(), before);
    await running;
    assert.equal(engine.sequenceLength(60), -1);
    assert.deepEqual(engine.kvStats(), before);
  });

  test('close during a step lets the step finish; later calls fail cleanly', async () => {
    const e = await Engine.load(dir, CPU_ENGINE);
    const running = e.step([{ seqId: 1, tokens: PROMPT }]);
    e.close();
    const out = await running;
    assert.equal(out.tokens.length, 1);
    assert.throws(() => e.kvStats(), /the engine is closed/);
    await assert.rejects(e.step([{ seqId: 1, tokens: [1] }]), /the engine is closed/);
  });

  test('loading a directory that is not a model rejects with the reason', async () => {
    const empty = tempDir('ew-empty-');
    await assert.rejects(Engine.load(empty), /config\.json/);
    await assert.rejects(Engine.load(empty, { device: 'tpu' as never }), { name: 'TypeError', message: /device must be/ });
  });

  test('the KV cache dtype and CPU path options: defaults, explicit values, refusals', async () => {
    const dir = presetModel('tiny');
    const { cpuPaths, cpuPath } = (await import('../../lib/engine/binding.js')).loadBinding().buildInfo();
    assert.equal(cpuPaths[0], 'portable');
    assert.ok(cpuPaths.includes(cpuPath));
    const byDefault = await Engine.load(dir, CPU_ENGINE);
    try {
      assert.equal(byDefault.info.kvCacheDtype, 'bf16', 'the CPU default halves the cache bytes');
      assert.equal(byDefault.info.cpuPath, cpuPath);
    } finally {
      byDefault.close();
    }
    const exact = await Engine.load(dir, { ...CPU_ENGINE, kvCacheDtype: 'f32', cpuPath: 'portable' });
    try {
      assert.equal(exact.info.kvCacheDtype, 'f32');
      assert.equal(exact.info.cpuPath, 'portable');
    } finally {
      exact.close();
    }
    await assert.rejects(Engine.load(dir, { ...CPU_ENGINE, kvCacheDtype: 'f16' as never }), { name: 'TypeError', message: /kvCacheDtype must be one of 'f32', 'bf16'/ });
    await assert.rejects(Engine.load(dir, { ...CPU_ENGINE, cpuPath: 'sse' as never }), { name: 'TypeError', message: /cpuPath must be one of/ });
    if (!cpuPaths.includes('amx')) await assert.rejects(Engine.load(dir, { ...CPU_ENGINE, cpuPath: 'amx' }), /CPU path amx: /);
  });
});
