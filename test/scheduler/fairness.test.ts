// BatchScheduler fairness across clients, against the scripted engine: one client's
// burst, preemptions or full queue never lock out another client's request, and a
// chunk the engine refuses fails only its own request.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { BatchScheduler } from '../../lib/scheduler/batch-scheduler.js';
import type { RequestError } from '../../lib/scheduler/request.js';
import { ScriptedEngine, outcome, params } from './scripted-engine.js';

const stepOf = (engine: ScriptedEngine, first: number) => engine.steps.findIndex((st) => st.some((c) => c.tokens[0] === first));

test("one client's burst on the same adapter delays another client's request by one turn", async () => {
  const engine = new ScriptedEngine();
  // Each 4-token prompt fits a client's share of a step (longPrefillTokens) whole.
  const s = new BatchScheduler(engine, { tokenBudget: 4, longPrefillTokens: 4 });
  const burst = Array.from({ length: 8 }, () => outcome());
  burst.forEach((o, i) => s.submit(params('', [10, 11, 12, 13 + i], { client: 'hog' }), o.sink));
  const victim = outcome();
  s.submit(params('', [30, 31, 32, 33], { client: 'victim' }), victim.sink);
  await Promise.all([...burst.map((o) => o.result), victim.result]);
  assert.equal(stepOf(engine, 30), 1, 'the victim starts right after the first burst request');
  assert.deepEqual((await victim.result).tokens, [34, 35, 36]);
});

test("a client holding every running slot gives one up to a client below its share", async () => {
  const engine = new ScriptedEngine();
  const s = new BatchScheduler(engine, { maxRunning: 4 });
  const hog = Array.from({ length: 4 }, () => outcome());
  hog.forEach((o, i) => s.submit(params('', [10 + i], { client: 'hog', maxTokens: 30 }), o.sink));
  const victim = outcome();
  let submittedAt = -1;
  s.onStep(() => {
    if (engine.steps.length !== 3) return; // the hog's four are running
    submittedAt = engine.steps.length;
    s.submit(params('', [40], { client: 'victim', maxTokens: 3 }), victim.sink);
  });
  const v = await victim.result;
  assert.deepEqual(v.tokens, [41, 42, 43]);
  assert.ok(stepOf(engine, 40) <= submittedAt + 1, `the victim started at step ${stepOf(engine, 40)}, submitted before step ${submittedAt}`);
  assert.ok(s.stats.preemptions >= 1, "one of the hog's sequences made room");
  // The preempted one recomputes and still gives its exact continuation.
  for (const [i, o] of hog.entries()) {
    const r = await o.result;
    assert.equal(r.done?.finishReason, 'length');
    assert.deepEqual(r.tokens, Array.from({ length: 30 }, (_, k) => (10 + i + k + 1) % 50), `hog request ${i}`);
  }
});

test('preempted sequences of one client do not starve a new request of another', { timeout: 10_000 }, async () => {
  // 12 blocks of 4 tokens: the hog's six long requests keep running out and preempting
  // (admitted optimistically; the growth reserve would keep them from it).
  const engine = new ScriptedEngine(12);
  const s = new BatchScheduler(engine, { reserveGrowth: false });
  const hog = Array.from({ length: 6 }, () => outcome());
  hog.forEach((o, i) => s.submit(params('', [10 + i, 11, 12, 13], { client: 'hog', maxTokens: 40 }), o.sink));
  const victim = outcome();
  let submittedAt = -1;
  s.onStep(() => {
    if (submittedAt !== -1 || s.stats.preemptions === 0) return;
    submittedAt = engine.steps.length;
    s.submit(params('', [44], { client: 'victim', maxTokens: 2 }), victim.sink);
  });
  const v = await victim.result;
  assert.equal(v.done?.finishReason, 'length');
  assert.ok(stepOf(engine, 44) - submittedAt <= 2, `the victim waited ${stepOf(engine, 44) - submittedAt} steps`);
  for (const o of hog) assert.equal((await o.result).done?.finishReason, 'length');
});

test("a full queue refuses the newest request of the client holding most of it, not a newcomer", () => {
  const engine = new ScriptedEngine();
  const s = new BatchScheduler(engine, { maxWaiting: 4 });
  const hog = Array.from({ length: 4 }, () => outcome());
  hog.forEach((o) => s.submit(params('', [3], { client: 'hog' }), o.sink));
  const victim = outcome();
  s.submit(params('', [3], { client: 'victim' }), victim.sink);
  assert.equal(s.stats.waiting, 4);
  // The hog's newest was refused for the victim; the hog itself is refused outright now.
  assert.throws(() => s.submit(params('', [3], { client: 'hog' }), outcome().sink), (e: RequestError) => e.code === 'overloaded');
  return Promise.all([hog[3].result.then((r) => assert.equal(r.error?.code, 'overloaded')), victim.result.then((r) => assert.equal(r.done?.finishReason, 'length'))]).then(() => s.close());
});

test('a chunk the engine refuses fails its own request only; the rest of the step goes on', async () => {
  const engine = new ScriptedEngine();
  engine.refuse = (c) => (c.tokens[0] === 33 ? 'step: chunk 1 (sequence 2): temperature inf must be a finite number >= 0' : undefined);
  const s = new BatchScheduler(engine);
  const good = outcome();
  const bad = outcome();
  const other = outcome();
  s.submit(params('', [10], { maxTokens: 4 }), good.sink);
  s.submit(params('', [33], { maxTokens: 4 }), bad.sink);
  s.submit(params('x', [20], { maxTokens: 4, adapterRow: 1 }), other.sink);
  const [g, b, o] = await Promise.all([good.result, bad.result, other.result]);
  assert.deepEqual(g.tokens, [11, 12, 13, 14]);
  assert.deepEqual(o.tokens, [21, 22, 23, 24]);
  assert.equal(b.error?.code, 'internal');
  assert.match(b.error!.message, /temperature inf/);
  assert.equal(engine.kvStats().sequences, 0);
});

test('a long prompt prefills in slices while others wait, so they are admitted every step', async () => {
  const engine = new ScriptedEngine();
  const s = new BatchScheduler(engine, { tokenBudget: 16, longPrefillTokens: 4 });
  const long = outcome();
  s.submit(params('', Array.from({ length: 40 }, (_, i) => 2 + (i % 40)), { client: 'a', maxTokens: 1 }), long.sink);
  const shorts = Array.from({ length: 3 }, () => outcome());
  shorts.forEach((o, i) => s.submit(params('', [45 + i], { client: `b${i}`, maxTokens: 1 }), o.sink));
  await Promise.all([long.result, ...shorts.map((o) => o.result)]);
  // Step 0 gives the long prompt the whole budget (it alone was waiting when it ran? no: all four were queued).
  for (const i of [0, 1, 2]) assert.ok(stepOf(engine, 45 + i) <= 1, `short request ${i} started at step ${stepOf(engine, 45 + i)}`);
});

test("a newcomer's first prompt runs in a step of its own; running sequences still advance every other step", async () => {
  const engine = new ScriptedEngine();
  const s = new BatchScheduler(engine);
  const hog = Array.from({ length: 8 }, () => outcome());
  hog.forEach((o, i) => s.submit(params('', [10 + i], { client: 'hog', maxTokens: 24 }), o.sink));
  // From step 2 on, a new client arrives before every step: each would like a step of its own.
  const newcomers: ReturnType<typeof outcome>[] = [];
  s.onStep(() => {
    if (engine.steps.length < 2 || newcomers.length >= 10) return;
    const o = outcome();
    newcomers.push(o);
    s.submit(params('', [30 + newcomers.length], { client: `new-${newcomers.length}`, maxTokens: 2 }), o.sink);
  });
  await Promise.all(hog.map((o) => o.result));
  await Promise.all(newcomers.map((o) => o.result));
  const hogSeqs = new Set(engine.steps[0].map((c) => c.seqId));
  const first = newcomers.map((_, k) => engine.steps.findIndex((st) => st.some((c) => c.tokens.length === 1 && c.tokens[0] === 31 + k && !hogSeqs.has(c.seqId))));
  // The first newcomer arrives while the hog decodes: its prompt goes alone, without the hog's decodes.
  assert.deepEqual(engine.steps[first[0]].map((c) => c.tokens), [[31]], 'the first newcomer prefills in a step of its own');
  // However many arrive, the hog's sequences are in at least every other step until they finish.
  const hogIn = engine.steps.map((st) => st.some((c) => hogSeqs.has(c.seqId)));
  const lastHog = hogIn.lastIndexOf(true);
  for (let k = 1; k <= lastHog; k++) assert.ok(hogIn[k] || hogIn[k - 1], `steps ${k - 1} and ${k} both without the hog's decodes`);
  for (const o of hog) assert.equal((await o.result).tokens.length, 24);
});

test("while another client has work, one client's prompts take at most longPrefillTokens of a step; alone, the whole budget", async () => {
  // Budget 64: a client's prompt tokens per step are at most 16 while another client is present.
  const promptTokens = (engine: ScriptedEngine, skipSeq: number) =>
    engine.steps.map((st) => st.filter((c) => c.tokens.length > 1 && c.seqId !== skipSeq).reduce((n, c) => n + c.tokens.length, 0));
  const prompts = [...Array.from({ length: 5 }, () => Array.from({ length: 10 }, (_, k) => 10 + k)), Array.from({ length: 40 }, (_, k) => 10 + k)];

  const alone = new ScriptedEngine();
  const a = new BatchScheduler(alone, { tokenBudget: 64 });
  await Promise.all(prompts.map((p) => { const o = outcome(); a.submit(params('', p, { client: 'hog' }), o.sink); return o.result; }));
  assert.equal(promptTokens(alone, -1)[0], 64, 'alone, the first step is all prompts');

  const engine = new ScriptedEngine();
  const s = new BatchScheduler(engine, { tokenBudget: 64 });
  const other = outcome();
  s.submit(params('', [5], { client: 'other', maxTokens: 30 }), other.sink);
  const hog = prompts.map(() => outcome());
  s.onStep(() => {
    if (engine.steps.length === 1) prompts.forEach((p, i) => s.submit(params('', p, { client: 'hog' }), hog[i].sink));
  });
  const results = await Promise.all(hog.map((o) => o.result));
  await other.result;
  const otherSeq = engine.steps[0][0].seqId;
  const perStep = promptTokens(engine, otherSeq);
  assert.ok(Math.max(...perStep) <= 16, `the hog's prompt tokens per step: ${perStep.join(',')}`);
  assert.equal(perStep.reduce((x, y) => x + y, 0), 5 * 10 + 40, 'every prompt token prefilled once');
  // The 40-token prompt, cut into slices, still continues exactly (49 -> 0, then 2: 1 is EOS).
  assert.deepEqual(results[5].tokens, [0, 2, 3]);
});

test("a client that sent a request within presenceMs still counts: another's prompts stay capped until it is gone", async () => {
  const engine = new ScriptedEngine();
  const s = new BatchScheduler(engine, { tokenBudget: 64, presenceMs: 300 });
  const burst = async () => {
    const from = engine.steps.length;
    await Promise.all(Array.from({ length: 6 }, (_, i) => { const o = outcome(); s.submit(params('', Array.from({ length: 10 }, (_, k) => 10 + k), { client: 'hog', maxTokens: 1 + i }), o.sink); return o.result; }));
    return engine.steps.slice(from).map((st) => st.filter((c) => c.tokens.length > 1).reduce((n, c) => n + c.tokens.length, 0));
  };
  const o = outcome();
  s.submit(params('', [5], { client: 'other', maxTokens: 1 }), o.sink);
  await o.result; // 'other' has no work now, but was just here
  const capped = await burst();
  assert.ok(Math.max(...capped) <= 16, `prompt tokens per step while 'other' is present: ${capped.join(',')}`);
  await new Promise((r) => setTimeout(r, 400)); // past presenceMs (and the hog's own requests are done)
  const free = await burst();
  assert.equal(free[0], 60, `alone again, the first step takes every prompt: ${free.join(',')}`);
});
