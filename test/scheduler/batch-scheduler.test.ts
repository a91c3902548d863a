// BatchScheduler against a scripted engine (no addon): round-robin admission across
// adapters, the token budget, stop strings over detokenized text, and queue limits.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { BatchScheduler } from '../../lib/scheduler/batch-scheduler.js';
import type { DoneEvent, RequestError, TokenEvent } from '../../lib/scheduler/request.js';
import { ScriptedEngine, params } from './scripted-engine.js';

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

/** A sink that records the outcome instead of asserting inside the scheduler. */
function outcome() {
  let resolve!: (r: { done?: DoneEvent; error?: RequestError; tokens: number }) => void;
  const result = new Promise<{ done?: DoneEvent; error?: RequestError; tokens: number }>((r) => (resolve = r));
  let tokens = 0;
  return {
    result,
    sink: {
      onToken: () => void tokens++,
      onDone: (done: DoneEvent) => resolve({ done, tokens }),
      onError: (error: RequestError) => resolve({ error, tokens }),
    },
  };
}

test('preemption passes over sequences of a draining adapter (they could not restart)', async () => {
  // 4 blocks of 4 tokens: two 4-token prompts decoding 8 tokens each run out at kvLen 8
  // (admitted optimistically: the growth reserve would run them one after the other).
  const engine = new ScriptedEngine(4);
  const s = new BatchScheduler(engine, { reserveGrowth: false });
  const base = outcome();
  const leaving = outcome();
  s.submit(params('', [10, 11, 12, 13], { maxTokens: 8 }), base.sink);
  // Admitted last, so the youngest: the one the old rule would preempt.
  s.submit(params('leaving', [20, 21, 22, 23], { adapterRow: 1, maxTokens: 8 }), leaving.sink);
  s.onStep(() => engine.draining.add(1)); // its adapter is removed after the first step
  const [b, l] = await Promise.all([base.result, leaving.result]);
  assert.equal(l.error, undefined, `the draining request failed: ${l.error?.message}`);
  assert.equal(b.error, undefined, `the base request failed: ${b.error?.message}`);
  assert.equal(l.done?.finishReason, 'length');
  assert.equal(l.tokens, 8);
  assert.equal(b.done?.finishReason, 'length');
  assert.equal(b.tokens, 8);
  assert.ok(s.stats.preemptions >= 1, 'the base sequence was preempted instead');
  assert.equal(engine.kvStats().sequences, 0);
});

test('when only draining sequences hold the cache and none can grow, the youngest ends early', async () => {
  const engine = new ScriptedEngine(4);
  const s = new BatchScheduler(engine, { reserveGrowth: false });
  const first = outcome();
  const second = outcome();
  s.submit(params('leaving', [10, 11, 12, 13], { adapterRow: 1, maxTokens: 8 }), first.sink);
  s.submit(params('leaving', [20, 21, 22, 23], { adapterRow: 1, maxTokens: 8 }), second.sink);
  s.onStep(() => engine.draining.add(1));
  const [a, b] = await Promise.all([first.result, second.result]);
  assert.equal(a.error, undefined);
  assert.equal(b.error, undefined);
  // Both fill 2 blocks at kvLen 8; neither can be preempted: the younger stops, the elder finishes.
  assert.equal(b.done?.finishReason, 'length');
  assert.ok(b.tokens < 8, `the younger generated ${b.tokens} tokens`);
  assert.equal(a.tokens, 8);
  assert.equal(s.stats.preemptions, 0);
});

test('requests of a removed adapter that have not started fail alone; the step goes on', async () => {
  const engine = new ScriptedEngine();
  const s = new BatchScheduler(engine, { maxRunning: 1 });
  const running = outcome();
  const queuedA = outcome();
  const queuedB = outcome();
  s.submit(params('', [10], { maxTokens: 4 }), running.sink);
  s.submit(params('gone', [20], { adapterRow: 2 }), queuedA.sink);
  s.submit(params('stale', [30], { adapterRow: 3 }), queuedB.sink);
  s.failWaiting('gone'); // what removal does (Service.removeAdapter)
  engine.draining.add(3); // and a row that drains without it: admission must not start it
  const [r, a, b] = await Promise.all([running.result, queuedA.result, queuedB.result]);
  assert.equal(r.done?.finishReason, 'length');
  assert.equal(r.tokens, 4);
  assert.equal(a.error?.code, 'unknown_adapter');
  assert.equal(b.error?.code, 'unknown_adapter');
  assert.ok(engine.steps.every((st) => st.every((c) => c.adapter === 0)), 'no step carried a removed adapter');
});

test('a prompt that fills the whole cache is admitted once nothing else runs', { timeout: 5000 }, async () => {
  // 4 blocks of 4 tokens: 15 prompt tokens plus one generated fill them exactly.
  const engine = new ScriptedEngine(4);
  const s = new BatchScheduler(engine);
  const r = outcome();
  s.submit(params('', Array.from({ length: 15 }, (_, i) => 10 + i), { maxTokens: 2 }), r.sink);
  const got = await r.result;
  assert.equal(got.error, undefined);
  assert.equal(got.done?.finishReason, 'length');
  assert.equal(got.tokens, 2);
});

test('blocks of a sequence ended for want of cache go to waiting requests in the same pass', { timeout: 5000 }, async () => {
  const engine = new ScriptedEngine(4);
  const s = new BatchScheduler(engine, { maxRunning: 1 });
  const long = outcome();
  const queued = outcome();
  s.submit(params('', [10], { maxTokens: 30 }), long.sink);
  s.submit(params('', [20, 21, 22, 23], { maxTokens: 2 }), queued.sink);
  const [l, q] = await Promise.all([long.result, queued.result]);
  // Alone, it fills the 16 cache slots and ends there; the queued request then runs.
  assert.equal(l.done?.finishReason, 'length');
  assert.equal(l.tokens, 16);
  assert.equal(q.done?.finishReason, 'length');
  assert.equal(q.tokens, 2);
  assert.equal(engine.kvStats().sequences, 0);
});
