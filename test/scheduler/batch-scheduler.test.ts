// BatchScheduler against a scripted engine (no addon): round-robin admission across
// adapters, the token budget, stop strings over detokenized text, and queue limits.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { KvStats, ModelInfo, StepOutput } from '../../lib/engine/binding.js';
import type { ChunkSpec } from '../../lib/engine/engine.js';
import { BatchScheduler } from '../../lib/scheduler/batch-scheduler.js';
import type { EnginePort } from '../../lib/scheduler/engine-port.js';
import type { DoneEvent, GenerationParams, RequestError, TokenEvent } from '../../lib/scheduler/request.js';

/** Always samples (last token + 1) mod vocab, skipping EOS; records every step's chunks. */
class ScriptedEngine implements EnginePort {
  readonly info = { vocabSize: 50, maxPositionEmbeddings: 128, eosTokenId: 1 } as ModelInfo;
  readonly steps: ChunkSpec[][] = [];
  private readonly lens = new Map<number, number>();
  constructor(private readonly totalBlocks = 1000) {}
  async step(chunks: readonly ChunkSpec[]): Promise<StepOutput> {
    this.steps.push([...chunks]);
    const tokens = new Int32Array(chunks.length);
    chunks.forEach((c, i) => {
      this.lens.set(c.seqId, (this.lens.get(c.seqId) ?? 0) + c.tokens.length);
      const next = (c.tokens[c.tokens.length - 1] + 1) % 50;
      tokens[i] = c.sample === false ? -1 : next === 1 ? 2 : next;
    });
    return { tokens, logprobs: new Float32Array(chunks.length) };
  }
  freeSequence(seqId: number): void {
    this.lens.delete(seqId);
  }
  kvStats(): KvStats {
    let used = 0;
    for (const l of this.lens.values()) used += Math.ceil(l / 4);
    return { blockSize: 4, totalBlocks: this.totalBlocks, freeBlocks: this.totalBlocks - used, sequences: this.lens.size };
  }
}

function params(adapterName: string, promptIds: number[], extra: Partial<GenerationParams> = {}): GenerationParams {
  return { promptIds, adapterRow: 0, adapterName, maxTokens: 3, temperature: 0, topP: 1, topK: 0, seed: 0, logprobs: false, stop: [], ...extra };
}

function collect() {
  const tokens: TokenEvent[] = [];
  let resolve!: (d: DoneEvent) => void;
  const done = new Promise<DoneEvent>((r) => (resolve = r));
  return {
    tokens,
    done,
    sink: { onToken: (t: TokenEvent) => tokens.push(t), onDone: (d: DoneEvent) => resolve(d), onError: (e: RequestError) => assert.fail(e.message) },
  };
}

test('a burst for one adapter does not starve another: admission alternates', async () => {
  const engine = new ScriptedEngine();
  // A budget of 4 tokens admits one 4-token prompt per step.
  const s = new BatchScheduler(engine, { tokenBudget: 4 });
  const runs = [];
  for (let i = 0; i < 6; i++) runs.push(collect());
  const late = collect();
  for (let i = 0; i < 6; i++) s.submit(params('burst', [10, 11, 12, 13 + i]), runs[i].sink);
  s.submit(params('other', [20, 21, 22, 23]), late.sink);
  await Promise.all([...runs.map((r) => r.done), late.done]);
  const firstStepWith = (first: number) => engine.steps.findIndex((st) => st.some((c) => c.tokens[0] === first));
  // Step 0 admits the first burst request; step 1 must start the other adapter's prompt (FIFO would start burst #2).
  assert.equal(firstStepWith(20), 1, 'the other adapter is admitted right after the first burst request');
  for (const st of engine.steps) assert.ok(st.reduce((n, c) => n + c.tokens.length, 0) <= 4, 'token budget per step');
  assert.deepEqual(late.tokens.map((t) => t.token), [24, 25, 26]);
  assert.equal(engine.kvStats().sequences, 0);
});

test('stop strings end generation without emitting the stop text', async () => {
  const engine = new ScriptedEngine();
  const s = new BatchScheduler(engine, { textStream: () => ({ push: (id) => String.fromCharCode(97 + (id % 26)), flush: () => '' }) });
  const r = collect();
  // Tokens 5, 6, 7, 8 ... decode to f, g, h, i ...
  s.submit(params('', [4], { maxTokens: 10, stop: ['hi'] }), r.sink);
  const done = await r.done;
  assert.equal(done.finishReason, 'stop');
  assert.equal(r.tokens.map((t) => t.text).join(''), 'fg');
});

test('queue limits refuse with overloaded; bad prompts with bad_request', () => {
  const engine = new ScriptedEngine();
  const s = new BatchScheduler(engine, { maxWaiting: 2 });
  const sink = collect().sink;
  s.submit(params('', [3]), sink);
  s.submit(params('', [3]), sink);
  assert.throws(() => s.submit(params('', [3]), sink), (e: RequestError) => e.code === 'overloaded');
  assert.throws(() => s.submit(params('', new Array(128).fill(3)), sink), (e: RequestError) => e.code === 'bad_request');
  assert.throws(() => s.submit(params('', [3], { maxTokens: 0 }), sink), (e: RequestError) => e.code === 'bad_request');
  assert.throws(() => s.submit(params('', [50]), sink), (e: RequestError) => e.code === 'bad_request');
  return s.close();
});
