// Registering and removing one adapter over and over while other adapters and the
// base model serve steady traffic: no step may ever see that adapter's row between
// states, so none of the other requests may fail or change (hostile-clients case 2).
import assert from 'node:assert/strict';

import type { Daemon } from '../../lib/server/daemon.js';
import { withAddon } from '../helpers/engine.js';
import { StreamClient } from '../helpers/ws-client.js';
import { Expected, cases, fixture, start, type Case } from './daemon-helpers.js';

const { after, before, describe, test } = withAddon();

describe('register/remove storm', () => {
  const fx = fixture();
  let daemon: Daemon;
  before(async () => {
    daemon = await start(fx.model, { adapters: fx.adapters.slice(0, 2) });
  });
  after(() => daemon.close());

  test('200 cycles of one adapter against steady traffic on others: zero failures of the others', { timeout: 120_000 }, async () => {
    const base = `http://127.0.0.1:${daemon.server.port}`;
    const vocab = daemon.engine.info.vocabSize;
    const steady = cases(vocab, [null, 'law', 'math'], 9);
    const refs = new Map<Case, number[]>();
    const expected = new Expected(fx.model, fx.adapters);
    for (const c of steady) refs.set(c, (await expected.of(c)).tokens);
    await expected.close();
    const churned = fx.adapters[2];

    let stop = false;
    const failures: string[] = [];
    let served = 0;
    let churnedOutcomes = 0;
    const clients = await Promise.all([0, 1, 2].map(() => StreamClient.open(`ws://127.0.0.1:${daemon.server.port}/v1/stream`)));
    const traffic = clients.map(async (client, k) => {
      for (let n = 0; !stop; n++) {
        const c = steady[(n * 3 + k) % steady.length];
        const id = `${k}-${n}`;
        // Requests for the churned adapter ride along: they may fail (it comes and goes), the others may not.
        client.send({ type: 'generate', id: `${id}-churn`, adapter: churned.name, prompt: c.prompt, max_tokens: 3, temperature: 0 });
        const r = await client.generate({ id, adapter: c.adapter, prompt: c.prompt, max_tokens: c.maxTokens, temperature: 0 });
        if (r.end.type !== 'done') failures.push(`${c.adapter ?? 'base'}: ${JSON.stringify(r.end)}`);
        else if (JSON.stringify(r.tokens) !== JSON.stringify(refs.get(c))) failures.push(`${c.adapter ?? 'base'}: tokens ${r.tokens} != ${refs.get(c)}`);
        else served++;
        const churn = await client.next((f) => f.id === `${id}-churn` && (f.type === 'done' || f.type === 'error'));
        if (churn.type === 'error' && churn.code !== 'unknown_adapter') failures.push(`${churned.name}: ${JSON.stringify(churn)}`);
        churnedOutcomes++;
      }
    });
    for (let cycle = 0; cycle < 200; cycle++) {
      const add = await fetch(base + '/v1/adapters', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: churned.name, path: churned.dir }) });
      assert.equal(add.status, 201, await add.text());
      if (cycle % 2 === 0) await new Promise((r) => setTimeout(r, 1)); // let some of its requests start
      const del = await fetch(base + '/v1/adapters/' + churned.name, { method: 'DELETE' });
      assert.equal(del.status, 200, await del.text());
    }
    stop = true;
    await Promise.all(traffic);
    for (const c of clients) c.close();
    assert.deepEqual(failures, []);
    assert.ok(served > 50, `only ${served} requests were served during the storm`);
    assert.ok(churnedOutcomes > 50);
    // Nothing leaked: every row but the two steady adapters is free again.
    assert.deepEqual(daemon.engine.adapters().map((a) => a.row).length, 2);
    const kv = daemon.engine.kvStats();
    assert.equal(kv.freeBlocks, kv.totalBlocks);
  });
});
