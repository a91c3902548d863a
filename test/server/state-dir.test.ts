// Adapters registered at run time survive a restart when the daemon has a state dir:
// they come back with their pinning and serve exactly as before; removed ones stay
// removed; one that can no longer load is reported and can still be dropped.
import assert from 'node:assert/strict';
import { cpSync, existsSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';

import { withAddon } from '../helpers/engine.js';
import { tempDir } from '../helpers/tmp.js';
import { StreamClient } from '../helpers/ws-client.js';
import { fixture, start } from './daemon-helpers.js';

const { after, before, describe, test } = withAddon();

const json = { 'content-type': 'application/json' };

describe('--state-dir', () => {
  test('adapters registered at run time come back after a restart; removed ones do not', async () => {
    const fx = fixture();
    const state = tempDir('ew-state-');
    const movable = join(tempDir('ew-movable-'), 'code');
    cpSync(fx.adapters[2].dir, movable, { recursive: true });
    const cmdline = [fx.adapters[0]];
    const greedy = async (port: number, adapter: string) => {
      const c = await StreamClient.open(`ws://127.0.0.1:${port}/v1/stream`);
      const r = await c.generate({ id: 'g', adapter, prompt: [3, 4, 5, 6], max_tokens: 6, temperature: 0 });
      c.close();
      assert.equal(r.end.type, 'done', JSON.stringify(r.end));
      return r.tokens;
    };

    const first = await start(fx.model, { adapters: cmdline, stateDir: state });
    let before: number[];
    try {
      const base = `http://127.0.0.1:${first.server.port}`;
      const add = (name: string, path: string, pinned = false) =>
        fetch(base + '/v1/adapters', { method: 'POST', headers: json, body: JSON.stringify({ name, path, pinned }) });
      assert.equal((await add('math', fx.adapters[1].dir, true)).status, 201);
      assert.equal((await add('code', movable)).status, 201);
      assert.equal((await add('gone', fx.adapters[2].dir)).status, 201);
      assert.equal((await fetch(base + '/v1/adapters/gone', { method: 'DELETE' })).status, 200);
      before = await greedy(first.server.port, 'math');
      // Written atomically: a whole file, no temporary left beside it.
      assert.deepEqual(readdirSync(state), ['adapters.json']);
      const saved = JSON.parse(readFileSync(join(state, 'adapters.json'), 'utf8')) as { adapters: { name: string; pinned: boolean }[] };
      assert.deepEqual(saved.adapters.map((a) => [a.name, a.pinned]), [['math', true], ['code', false]]);
    } finally {
      await first.close();
    }

    rmSync(movable, { recursive: true }); // one adapter's directory is gone by the next start
    const events: [string, Record<string, unknown>][] = [];
    const second = await start(fx.model, { adapters: cmdline, stateDir: state, onProgress: (e, d) => events.push([e, d]) });
    try {
      const names = second.service.adapters.list().map((e) => e.name).sort();
      assert.deepEqual(names, ['law', 'math']);
      assert.equal(second.service.adapters.get('math')!.pinned, true);
      assert.deepEqual(await greedy(second.server.port, 'math'), before);
      const restored = events.filter(([e]) => e === 'adapter_registered').map(([, d]) => [d.adapter, d.source]);
      assert.deepEqual(restored, [['law', 'command line'], ['math', 'state']]);
      const failed = events.find(([e]) => e === 'adapter_restore_failed');
      assert.equal(failed?.[1].adapter, 'code');
      // The operator drops the broken one; it is then gone from the state too.
      const del = await fetch(`http://127.0.0.1:${second.server.port}/v1/adapters/code`, { method: 'DELETE' });
      assert.equal(del.status, 200);
      const saved = JSON.parse(readFileSync(join(state, 'adapters.json'), 'utf8')) as { adapters: { name: string }[] };
      assert.deepEqual(saved.adapters.map((a) => a.name), ['math']);
      assert.ok(!existsSync(join(state, 'adapters.json.tmp')));
    } finally {
      await second.close();
    }
  });
});
