// BatchScheduler's growth reserve, against the scripted engine: admission leaves room for
// what running sequences may still generate, so a small cache runs long requests without
// preempting and recomputing them; a client below its fair share is still admitted on the
// blocks actually free; and one preemption makes admission reserve everything.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import type { ChunkSpec } from '../../lib/engine/engine.js';
import { BatchScheduler } from '../../lib/scheduler/batch-scheduler.js';
import { ScriptedEngine, outcome, params } from './scripted-engine.js';

/** Prompt tokens the engine was given beyond each sequence's first prefill: recompute after preemption. */
function recomputed(engine: ScriptedEngine): number {
  const seen = new Set<number>();
  let n = 0;
  for (const step of engine.steps)
    for (const c of step as ChunkSpec[]) {
      if (c.tokens.length > 1 && seen.has(c.tokens[0])) n += c.tokens.length;
      if (c.tokens.length > 1) seen.add(c.tokens[0]);
    }
  return n;
}

/** Six 4-token prompts generating 40 tokens each in 12 blocks of 4 tokens (one at a time fits, with room). */
async function longRequestsInASmallCache(reserveGrowth: boolean) {
  const engine = new ScriptedEngine(12);
  const s = new BatchScheduler(engine, { reserveGrowth });
  const outs = Array.from({ length: 6 }, () => outcome());
  outs.forEach((o, i) => s.submit(params('', [10 + i, 11, 12, 13], { client: 'hog', maxTokens: 40 }), o.sink));
  const results = await Promise.all(outs.map((o) => o.result));
  return { engine, s, results };
}

test('with the growth reserve, long requests in a small cache run without preemption; optimistic admission thrashes', async () => {
  const reserve = await longRequestsInASmallCache(true);
  const optimistic = await longRequestsInASmallCache(false);
  assert.equal(reserve.s.stats.preemptions, 0);
  assert.equal(recomputed(reserve.engine), 0);
  assert.ok(optimistic.s.stats.preemptions > 0, 'optimistic admission fills the cache and preempts');
  assert.ok(recomputed(optimistic.engine) > 0);
  // Both give every request its exact continuation (the scripted engine's: last + 1, skipping
  // EOS); the reserve in fewer engine tokens.
  const expected: number[] = [];
  for (let t = 13; expected.length < 40; ) expected.push((t = (t + 1) % 50 === 1 ? 2 : (t + 1) % 50));
  for (const [i, r] of reserve.results.entries()) {
    assert.equal(r.done?.finishReason, 'length');
    assert.deepEqual(r.tokens, expected, `request ${i}`);
    assert.deepEqual(optimistic.results[i].tokens, expected);
  }
  const tokens = (e: ScriptedEngine) => e.steps.flat().reduce((n, c) => n + c.tokens.length, 0);
  assert.ok(tokens(reserve.engine) < tokens(optimistic.engine), `${tokens(reserve.engine)} vs ${tokens(optimistic.engine)} tokens`);
});

test("a client below its fair share is admitted on the free blocks the hog's reserve counts on", async () => {
  // 40 blocks: four of the hog's requests reserve them all (4 + 0.7 x 40 tokens each); a fifth waits.
  const engine = new ScriptedEngine(40);
  const s = new BatchScheduler(engine);
  const hog = Array.from({ length: 6 }, () => outcome());
  hog.forEach((o, i) => s.submit(params('', [10 + i, 11, 12, 13], { client: 'hog', maxTokens: 40 }), o.sink));
  let mostRunning = 0;
  const preemptionsAt: number[] = []; // after each step
  const victim = outcome();
  let submittedAt = -1;
  s.onStep(() => {
    preemptionsAt.push(s.stats.preemptions);
    mostRunning = Math.max(mostRunning, s.stats.running);
    if (engine.steps.length !== 4) return;
    submittedAt = engine.steps.length;
    // As long as the hog's: under the reserve it would wait for one of the hog's to end.
    s.submit(params('', [40, 41, 42, 43], { client: 'victim', maxTokens: 40 }), victim.sink);
  });
  const v = await victim.result;
  assert.equal(v.tokens.length, 40);
  const started = engine.steps.findIndex((st) => st.some((c) => c.tokens[0] === 40));
  assert.ok(started <= submittedAt + 1, `the victim started at step ${started}, submitted before step ${submittedAt}`);
  await Promise.all(hog.map((o) => o.result));
  assert.equal(mostRunning, 5, "the reserve holds the hog to four running sequences, beside the victim's");
  assert.equal(preemptionsAt[started], preemptionsAt[submittedAt - 1], 'the victim took free blocks, it preempted nobody');
});

test('one preemption makes admission reserve the whole remaining length', async () => {
  // 80 blocks; three 128-token sequences (32 blocks each) are admitted at the 0.7 reserve
  // and outgrow the cache: one is preempted, and from then on admission reserves it all.
  const run = async (reserveGrowth: boolean) => {
    const engine = new ScriptedEngine(80);
    const s = new BatchScheduler(engine, { reserveGrowth });
    const outs = Array.from({ length: 5 }, () => outcome());
    outs.forEach((o, i) => s.submit(params('', [10 + i, 11, 12, 13], { client: 'c', maxTokens: 124 }), o.sink));
    const results = await Promise.all(outs.map((o) => o.result));
    for (const r of results) assert.equal(r.tokens.length, 124);
    return s.stats.preemptions;
  };
  const withReserve = await run(true);
  const optimistic = await run(false);
  assert.equal(withReserve, 1);
  assert.ok(optimistic > withReserve, `optimistic admission preempted ${optimistic} times`);
});
