// Scheduling under pressure with the real engine: a KV cache too small for the
// offered load (preemption and recompute), and adapter residency with fewer
// resident slots than adapters (LRU loads/evictions), both giving the outputs of
// each request run alone; the growth reserve against optimistic admission; removal
// while a request runs; register/remove storms.
import assert from 'node:assert/strict';

import type { Daemon } from '../../lib/server/daemon.js';
import { withAddon } from '../helpers/engine.js';
import { someTokens } from '../helpers/fixtures.js';
import { StreamClient } from '../helpers/ws-client.js';
import { ENGINE, Expected, cases, fixture, start, waitFor, type Case } from './daemon-helpers.js';

const { after, before, describe, test } = withAddon();

async function runAll(url: string, all: Case[]): Promise<{ tokens: number[]; finish: unknown }[]> {
  const clients = await Promise.all([0, 1].map(() => StreamClient.open(url)));
  const out = await Promise.all(
    all.map(async (c, i) => {
      const r = await clients[i % 2].generate({ id: `q${i}`, adapter: c.adapter, prompt: c.prompt, max_tokens: c.maxTokens, temperature: 0 });
      assert.equal(r.end.type, 'done', JSON.stringify(r.end));
      return { tokens: r.tokens, finish: r.end.finish_reason };
    }),
  );
  for (const c of clients) c.close();
  return out;
}

describe('scheduling under pressure', () => {
  const fx = fixture();
  const expected = new Expected(fx.model, fx.adapters);
  after(() => expected.close());

  describe('a KV cache smaller than the load', () => {
    let daemon: Daemon;
    before(async () => {
      daemon = await start(fx.model, { engine: { ...ENGINE, kvCacheTokens: 64 }, adapters: fx.adapters.slice(0, 1) });
    });
    after(() => daemon.close());

    test('preempted sequences recompute and finish exactly as alone', async () => {
      const all = cases(daemon.engine.info.vocabSize, [null, 'law'], 10).map((c) => ({ ...c, maxTokens: c.maxTokens + 8 }));
      const refs = await expected.all(all);
      const got = await runAll(`ws://127.0.0.1:${daemon.server.port}/v1/stream`, all);
      got.forEach((g, i) => {
        assert.deepEqual(g.tokens, refs[i].tokens, `request ${i}`);
        assert.equal(g.finish, refs[i].finish);
      });
      assert.ok(daemon.service.scheduler.stats.preemptions > 0, 'the load should have forced preemption');
      const kv = daemon.engine.kvStats();
      assert.equal(kv.freeBlocks, kv.totalBlocks);
    });
  });

  test("one client's long requests in a small cache: the growth reserve preempts at most once, optimistic admission over and over; both exactly as alone", async () => {
    const run = async (reserveGrowth: boolean) => {
      const daemon = await start(fx.model, { engine: { ...ENGINE, kvCacheTokens: 64 }, adapters: fx.adapters.slice(0, 1), scheduler: { reserveGrowth } });
      try {
        const all = cases(daemon.engine.info.vocabSize, [null, 'law'], 16).map((c) => ({ ...c, maxTokens: c.maxTokens + 24 }));
        const refs = await expected.all(all);
        const c = await StreamClient.open(`ws://127.0.0.1:${daemon.server.port}/v1/stream`); // one client
        const got = await Promise.all(all.map((x, i) => c.generate({ id: `r${i}`, adapter: x.adapter, prompt: x.prompt, max_tokens: x.maxTokens, temperature: 0 })));
        c.close();
        got.forEach((g, i) => assert.deepEqual(g.tokens, refs[i].tokens, `request ${i}`));
        return daemon.service.scheduler.stats.preemptions;
      } finally {
        await daemon.close();
      }
    };
    const optimistic = await run(false);
    const reserve = await run(true);
    // The reserve starts at 0.7 of what each request may still generate; these use all of it, so
    // the first shortfall may preempt once, and from then on the reserve covers everything.
    assert.ok(reserve <= 1, `with the reserve: ${reserve} preemptions`);
    assert.ok(optimistic > reserve + 1, `optimistic admission: ${optimistic} preemptions, the reserve: ${reserve}`);
  });

  describe('more adapters than resident slots', () => {
    let daemon: Daemon;
    before(async () => {
      daemon = await start(fx.model, { adapters: fx.adapters, registry: { maxResident: 1 } });
    });
    after(() => daemon.close());

    test('LRU loads and evictions give the same outputs as all resident', async () => {
      const all = cases(daemon.engine.info.vocabSize, ['law', 'math', null, 'code'], 16);
      const refs = await expected.all(all);
      const evictionsBefore = daemon.service.adapters.totalEvictions;
      const got = await runAll(`ws://127.0.0.1:${daemon.server.port}/v1/stream`, all);
      got.forEach((g, i) => assert.deepEqual(g.tokens, refs[i].tokens, `request ${i} (${all[i].adapter})`));
      assert.ok(daemon.service.adapters.totalEvictions > evictionsBefore);
      const resident = daemon.service.adapters.list().filter((e) => e.state === 'resident');
      assert.ok(resident.length <= 1);
    });

    test('a request whose adapter is removed while it runs completes on that adapter', async () => {
      // Long enough (checked: no early EOS) that the removal lands while it runs.
      const c: Case = { adapter: 'code', prompt: someTokens(4, daemon.engine.info.vocabSize, 3), maxTokens: 240 };
      const ref = await expected.of(c);
      assert.equal(ref.finish, 'length', 'the fixture must not stop before max_tokens');
      const client = await StreamClient.open(`ws://127.0.0.1:${daemon.server.port}/v1/stream`);
      client.send({ type: 'generate', id: 'rm', adapter: 'code', prompt: c.prompt, max_tokens: c.maxTokens, temperature: 0 });
      const first = await client.next((f) => f.id === 'rm');
      assert.equal(first.type, 'token', JSON.stringify(first));
      const row = daemon.engine.adapters().find((a) => a.dir === fx.adapters[2].dir)?.row;
      assert.ok(row !== undefined, 'the adapter is resident while its request runs');
      await daemon.service.adapters.remove('code');
      // Removed from the registry, but its row lives on (draining) for the running sequence.
      assert.equal(daemon.service.adapters.get('code'), undefined);
      assert.deepEqual(daemon.engine.adapters().filter((a) => a.row === row).map((a) => a.draining), [true], 'the request was no longer running when its adapter was removed');
      assert.equal(client.frames.find((f) => f.id === 'rm' && f.type !== 'token'), undefined, 'the request had ended before the removal');
      const refused = await client.generate({ id: 'after', adapter: 'code', prompt: [3], max_tokens: 2 });
      assert.equal(refused.end.code, 'unknown_adapter');
      const end = await client.next((f) => f.id === 'rm' && f.type !== 'token');
      assert.equal(end.type, 'done', JSON.stringify(end));
      assert.equal(end.finish_reason, ref.finish);
      assert.deepEqual(client.frames.filter((f) => f.id === 'rm' && f.type === 'token').map((f) => f.token), ref.tokens);
      await waitFor(() => !daemon.engine.adapters().some((a) => a.row === row), 'the draining row to be dropped after its last sequence');
      client.close();
    });

    test('register/remove storms leave the registry and the engine consistent', async () => {
      const math = fx.adapters[1];
      for (let round = 0; round < 6; round++) {
        await Promise.allSettled([
          daemon.service.adapters.register('storm', math.dir),
          daemon.service.adapters.remove('storm'),
          daemon.service.adapters.register('storm', math.dir),
          daemon.service.adapters.register('storm', fx.adapters[0].dir),
        ]);
      }
      const rows = daemon.service.adapters.list().filter((e) => e.row !== undefined).map((e) => e.row);
      await waitFor(() => daemon.engine.adapters().filter((a) => !a.draining).length === rows.length, 'engine rows to match');
      const live = daemon.engine.adapters().filter((a) => !a.draining).map((a) => a.row).sort();
      assert.deepEqual(live, [...rows].sort());
      const storm = daemon.service.adapters.get('storm');
      if (storm) assert.equal(storm.dir, math.dir);
    });
  });
});
