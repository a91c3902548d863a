// Preemption meets adapter removal, with the real engine: a KV cache too small for
// the load forces preemption while an adapter is draining (removed with requests
// still running on it). A sequence of a draining adapter cannot restart (the engine
// refuses new sequences on the row, or has already dropped it), so the scheduler
// must choose other victims, or, when only such sequences hold the cache, end one.
import assert from 'node:assert/strict';

import type { Daemon } from '../../lib/server/daemon.js';
import type { DoneEvent, RequestError } from '../../lib/scheduler/request.js';
import { withAddon } from '../helpers/engine.js';
import { someTokens } from '../helpers/fixtures.js';
import { ENGINE, Expected, fixture, start, waitFor, type Case, type Continuation } from './daemon-helpers.js';

const { after, before, describe, test } = withAddon();

interface Outcome {
  tokens: number[];
  done?: DoneEvent;
  error?: RequestError;
}

describe('preemption while an adapter drains', () => {
  const fx = fixture();
  const expected = new Expected(fx.model, fx.adapters);
  let daemon: Daemon;
  before(async () => {
    // 8 blocks of 4 tokens: two 8-token prompts generating 16 tokens each need 12 blocks
    // (admitted optimistically: the growth reserve would run them one after the other).
    daemon = await start(fx.model, { engine: { ...ENGINE, kvCacheTokens: 32 }, scheduler: { reserveGrowth: false } });
  });
  after(async () => {
    await daemon.close();
    await expected.close();
  });

  /**
   * Runs `cases` at once through the service; the first token of request `removeAt`
   * removes adapter 'law' (the admin route's path), so the rest runs while it drains.
   */
  async function runRemovingLaw(all: Case[], removeAt: number): Promise<Outcome[]> {
    return Promise.all(
      all.map(
        (c, i) =>
          new Promise<Outcome>((resolve) => {
            const out: Outcome = { tokens: [] };
            daemon.service.start(
              { adapter: c.adapter, prompt: c.prompt, client: 't', maxTokens: c.maxTokens, temperature: 0, topP: 1, topK: 0, seed: 0, logprobs: false, stop: [] },
              {
                onToken: (ev) => {
                  if (i === removeAt && ev.index === 0) void daemon.service.removeAdapter('law');
                  out.tokens.push(ev.token);
                },
                onDone: (done) => resolve({ ...out, done }),
                onError: (error) => resolve({ ...out, error }),
              },
            );
          }),
      ),
    );
  }

  test('a base request is preempted instead of the draining one; both finish as alone', async () => {
    await daemon.service.adapters.register('law', fx.adapters[0].dir);
    const vocab = daemon.engine.info.vocabSize;
    // The adapter request is admitted last: the youngest, the victim the plain rule picks.
    const all: Case[] = [
      { adapter: null, prompt: someTokens(8, vocab, 3), maxTokens: 16 },
      { adapter: 'law', prompt: someTokens(8, vocab, 5), maxTokens: 16 },
    ];
    const want = await expected.all(all);
    for (const r of want) assert.equal(r.finish, 'length', 'the fixture must not stop early: the load would not fill the cache');
    const preemptions = daemon.service.scheduler.stats.preemptions;
    const got = await runRemovingLaw(all, 1);
    got.forEach((g, i) => {
      assert.equal(g.error, undefined, `request ${i} failed: ${g.error?.code} ${g.error?.message}`);
      assert.equal(g.done?.finishReason, 'length');
      assert.deepEqual(g.tokens, want[i].tokens, `request ${i}`);
    });
    assert.ok(daemon.service.scheduler.stats.preemptions > preemptions, 'the load should have forced preemption');
    assert.equal(daemon.service.adapters.get('law'), undefined);
    assert.deepEqual(daemon.engine.adapters(), [], 'the draining row is dropped after its last sequence');
    const kv = daemon.engine.kvStats();
    assert.equal(kv.freeBlocks, kv.totalBlocks);
  });

  test('when only draining sequences fill the cache, the youngest ends early and the elder completes', async () => {
    await daemon.service.adapters.register('law', fx.adapters[0].dir);
    const vocab = daemon.engine.info.vocabSize;
    const all: Case[] = [
      { adapter: 'law', prompt: someTokens(8, vocab, 8), maxTokens: 16 },
      { adapter: 'law', prompt: someTokens(8, vocab, 9), maxTokens: 16 },
    ];
    const want = await expected.all(all);
    for (const r of want) assert.equal(r.finish, 'length', 'the fixture must not stop early: the load would not fill the cache');
    const preemptions = daemon.service.scheduler.stats.preemptions;
    const [elder, younger] = await runRemovingLaw(all, 0);
    for (const g of [elder, younger]) assert.equal(g.error, undefined, `${g.error?.code} ${g.error?.message}`);
    assert.deepEqual(elder.tokens, want[0].tokens);
    assert.equal(elder.done?.finishReason, 'length');
    // Cut short where the cache ran out, but what it produced is the continuation.
    assert.equal(younger.done?.finishReason, 'length');
    assert.ok(younger.tokens.length < want[1].tokens.length, `the younger produced all ${younger.tokens.length} tokens`);
    assert.deepEqual(younger.tokens, want[1].tokens.slice(0, younger.tokens.length));
    assert.equal(daemon.service.scheduler.stats.preemptions, preemptions, 'a draining sequence was preempted');
    assert.deepEqual(daemon.engine.adapters(), []);
    const kv = daemon.engine.kvStats();
    assert.equal(kv.freeBlocks, kv.totalBlocks);
  });
});

describe('requests queued for an adapter that is removed', () => {
  const fx = fixture();
  const expected = new Expected(fx.model, fx.adapters);
  let daemon: Daemon;
  before(async () => {
    daemon = await start(fx.model, { scheduler: { maxRunning: 1 } }); // one runs, the rest queue
  });
  after(async () => {
    await daemon.close();
    await expected.close();
  });

  test('fail with unknown_adapter, even when the freed row is re-registered for another adapter at once', async () => {
    const vocab = daemon.engine.info.vocabSize;
    await daemon.service.adapters.register('law', fx.adapters[0].dir);
    const lawRow = daemon.service.adapters.get('law')!.row!;
    // A base request that runs its full length (no early EOS), so its first token comes mid-way.
    const running: Case = { adapter: null, prompt: someTokens(6, vocab, 22), maxTokens: 8 };
    const want: Continuation = await expected.of(running);
    assert.equal(want.finish, 'length', 'the fixture must not stop before max_tokens');
    const params = (c: Case) => ({ adapter: c.adapter, prompt: c.prompt, client: 't', maxTokens: c.maxTokens, temperature: 0, topP: 1, topK: 0, seed: 0, logprobs: false, stop: [], ignoreEos: false });
    let swapped: Promise<void> | undefined;
    const run = (c: Case, onFirst?: () => void) =>
      new Promise<Outcome>((resolve) => {
        const out: Outcome = { tokens: [] };
        daemon.service.start(params(c), {
          onToken: (ev) => {
            if (ev.index === 0 && onFirst) onFirst();
            out.tokens.push(ev.token);
          },
          onDone: (done) => resolve({ ...out, done }),
          onError: (error) => resolve({ ...out, error }),
        });
      });
    const first = run(running, () => {
      // While 'law' requests wait: remove it and register another adapter, which takes the freed row.
      // The engine frees the row once no step in flight can still start a sequence on it
      // (a removal during a step applies when that step ends): wait for that, so the new
      // adapter really takes the old row.
      swapped = daemon.service.removeAdapter('law').then(async () => {
        await waitFor(() => !daemon.engine.adapters().some((a) => a.row === lawRow), 'the row to be freed');
        await daemon.service.adapters.register('math', fx.adapters[1].dir);
      });
    });
    const queued = [run({ adapter: 'law', prompt: someTokens(5, vocab, 22), maxTokens: 4 }), run({ adapter: 'law', prompt: someTokens(7, vocab, 23), maxTokens: 4 })];
    const [r0, ...rest] = await Promise.all([first, ...queued]);
    assert.ok(swapped, 'the running request produced no token');
    await swapped;
    assert.equal(daemon.service.adapters.get('math')?.row, lawRow, 'the new adapter reuses the freed row');
    assert.deepEqual(r0.tokens, want.tokens);
    for (const r of rest) {
      assert.equal(r.error?.code, 'unknown_adapter', `a queued request ran (${r.tokens.length} tokens) on a row that now holds another adapter`);
      assert.deepEqual(r.tokens, []);
    }
    const kv = daemon.engine.kvStats();
    assert.equal(kv.freeBlocks, kv.totalBlocks);
  });
});
