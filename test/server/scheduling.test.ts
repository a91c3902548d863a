// Scheduling under pressure with the real engine: a KV cache too small for the
// offered load (preemption and recompute), and adapter residency with fewer
// resident slots than adapters (LRU loads/evictions), both giving the outputs of
// each request run alone; removal while a request runs; register/remove storms.
import assert from 'node:assert/strict';

import type { Daemon } from '../../lib/server/daemon.js';
import { withAddon } from '../helpers/engine.js';
import { StreamClient } from '../helpers/ws-client.js';
import { ENGINE, cases, fixture, reference, start, waitFor, type Case } from './daemon-helpers.js';

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

  describe('a KV cache smaller than the load', () => {
    let daemon: Daemon;
    before(async () => {
      daemon = await start(fx.model, { engine: { ...ENGINE, kvCacheTokens: 64 }, adapters: fx.adapters.slice(0, 1) });
    });
    after(() => daemon.close());

    test('preempted sequences recompute and finish exactly as alone', async () => {
      const all = cases(daemon.engine.info.vocabSize, [null, 'law'], 10).map((c) => ({ ...c, maxTokens: c.maxTokens + 8 }));
      const refs: { tokens: number[]; finish: string }[] = [];
      for (const c of all) refs.push(await reference(daemon.engine, c, c.adapter ? daemon.service.adapters.get(c.adapter)!.row! : 0));
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

  describe('more adapters than resident slots', () => {
    let daemon: Daemon;
    before(async () => {
      daemon = await start(fx.model, { adapters: fx.adapters, registry: { maxResident: 1 } });
    });
    after(() => daemon.close());

    async function refFor(c: Case) {
      if (c.adapter === null) return reference(daemon.engine, c, 0);
      const lease = await daemon.service.adapters.acquire(c.adapter);
      try {
        return await reference(daemon.engine, c, lease.row);
      } finally {
        lease.release();
      }
    }

    test('LRU loads and evictions give the same outputs as all resident', async () => {
      const all = cases(daemon.engine.info.vocabSize, ['law', 'math', null, 'code'], 16);
      const refs: { tokens: number[]; finish: string }[] = [];
      for (const c of all) refs.push(await refFor(c));
      const evictionsBefore = daemon.service.adapters.totalEvictions;
      const got = await runAll(`ws://127.0.0.1:${daemon.server.port}/v1/stream`, all);
      got.forEach((g, i) => assert.deepEqual(g.tokens, refs[i].tokens, `request ${i} (${all[i].adapter})`));
      assert.ok(daemon.service.adapters.totalEvictions > evictionsBefore);
      const resident = daemon.service.adapters.list().filter((e) => e.state === 'resident');
      assert.ok(resident.length <= 1);
    });

    test('a request whose adapter is removed while it runs completes on that adapter', async () => {
      const c: Case = { adapter: 'code', prompt: [7, 8, 9, 10], maxTokens: 24 };
      const ref = await refFor(c);
      const client = await StreamClient.open(`ws://127.0.0.1:${daemon.server.port}/v1/stream`);
      client.send({ type: 'generate', id: 'rm', adapter: 'code', prompt: c.prompt, max_tokens: c.maxTokens, temperature: 0 });
      await client.next((f) => f.id === 'rm' && f.type === 'token');
      await daemon.service.adapters.remove('code');
      const refused = await client.generate({ id: 'after', adapter: 'code', prompt: [3], max_tokens: 2 });
      assert.equal(refused.end.code, 'unknown_adapter');
      const end = await client.next((f) => f.id === 'rm' && f.type !== 'token');
      assert.equal(end.type, 'done', JSON.stringify(end));
      assert.equal(end.finish_reason, ref.finish);
      assert.deepEqual(client.frames.filter((f) => f.id === 'rm' && f.type === 'token').map((f) => f.token), ref.tokens);
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
