// The daemon over real sockets with the real engine: WebSocket streaming of many
// concurrent requests (several connections, adapters), equal to each request run
// alone; malformed frames; limits; cancellation and disconnects freeing KV blocks.
import assert from 'node:assert/strict';

import type { Daemon } from '../../lib/server/daemon.js';
import { withAddon } from '../helpers/engine.js';
import { someTokens } from '../helpers/fixtures.js';
import { StreamClient } from '../helpers/ws-client.js';
import { Expected, cases, fixture, start, waitFor, type Case, type Continuation } from './daemon-helpers.js';

const { after, before, describe, test } = withAddon();

describe('WebSocket /v1/stream', () => {
  let daemon: Daemon;
  let url: string;
  const refs = new Map<Case, Continuation>();
  let all: Case[];
  let expected: Expected;

  before(async () => {
    const fx = fixture();
    daemon = await start(fx.model, { adapters: fx.adapters.slice(0, 2) });
    url = `ws://127.0.0.1:${daemon.server.port}/v1/stream`;
    all = cases(daemon.engine.info.vocabSize, [null, 'law', 'math'], 18);
    expected = new Expected(fx.model, fx.adapters);
    for (const c of all) refs.set(c, await expected.of(c));
  });
  after(async () => {
    await daemon.close();
    await expected.close();
  });

  const kvFull = () => {
    const kv = daemon.engine.kvStats();
    return kv.freeBlocks === kv.totalBlocks && kv.sequences === 0;
  };

  test('adapters change the continuation (the comparison below can tell them apart)', () => {
    const byAdapter = (a: string | null) => all.filter((c) => c.adapter === a).map((c) => refs.get(c)!.tokens.join(','));
    assert.notDeepEqual(byAdapter('law'), byAdapter(null));
  });

  test('many concurrent requests over several connections equal each run alone', async () => {
    const clients = await Promise.all([0, 1, 2].map(() => StreamClient.open(url)));
    const results = await Promise.all(
      all.map((c, i) =>
        clients[i % 3].generate({ id: `r${i}`, adapter: c.adapter, prompt: c.prompt, max_tokens: c.maxTokens, temperature: 0, logprobs: true }),
      ),
    );
    results.forEach((r, i) => {
      const ref = refs.get(all[i])!;
      assert.equal(r.end.type, 'done', JSON.stringify(r.end));
      assert.deepEqual(r.tokens, ref.tokens, `request ${i} (${all[i].adapter})`);
      assert.equal(r.end.finish_reason, ref.finish);
      assert.deepEqual(r.end.usage, { prompt_tokens: all[i].prompt.length, completion_tokens: ref.tokens.length });
      const frames = clients[i % 3].frames.filter((f) => f.id === `r${i}` && f.type === 'token');
      assert.deepEqual(frames.map((f) => f.index), frames.map((_, k) => k));
      for (const f of frames) assert.ok(typeof f.logprob === 'number' && (f.logprob as number) <= 0);
    });
    assert.ok(daemon.service.scheduler.stats.steps > 0);
    await waitFor(kvFull, 'KV blocks back to full');
    for (const c of clients) c.close();
  });

  test('every malformed frame gets an error and the connection keeps serving', async () => {
    const c = await StreamClient.open(url);
    const bad: [string | object, string, string | null][] = [
      ['not json', 'bad_request', null],
      ['[1,2]', 'bad_request', null],
      [{ type: 'generate', prompt: [3] }, 'bad_request', null],
      [{ type: 'nope', id: 'x1' }, 'bad_request', 'x1'],
      [{ type: 'generate', id: 'x2', prompt: [] }, 'bad_request', 'x2'],
      [{ type: 'generate', id: 'x3', prompt: [3, 4], max_tokens: 0 }, 'bad_request', 'x3'],
      [{ type: 'generate', id: 'x4', prompt: [3, 4], temperature: -1 }, 'bad_request', 'x4'],
      [{ type: 'generate', id: 'x5', prompt: [3, 99999] }, 'bad_request', 'x5'],
      [{ type: 'generate', id: 'x6', prompt: 'text needs a tokenizer' }, 'bad_request', 'x6'],
      [{ type: 'generate', id: 'x7', prompt: [3], adapter: 'nobody' }, 'unknown_adapter', 'x7'],
      [{ type: 'generate', id: 'x8', prompt: [3], adapter: 5 }, 'bad_request', 'x8'],
      [{ type: 'generate', id: 'x9', prompt: new Array(256).fill(3) }, 'bad_request', 'x9'],
      [{ type: 'generate', id: 'x10', prompt: [3], max_tokens: 100000 }, 'bad_request', 'x10'],
    ];
    for (const [frame, code, id] of bad) {
      const before = c.frames.length;
      c.send(frame);
      const err = await c.next((f) => c.frames.indexOf(f) >= before && f.type === 'error');
      assert.equal(err.code, code, JSON.stringify(frame));
      assert.equal(err.id, id);
      assert.ok(typeof err.message === 'string' && err.message.length > 10);
    }
    const ok = all[0];
    const r = await c.generate({ id: 'ok', adapter: ok.adapter, prompt: ok.prompt, max_tokens: ok.maxTokens, temperature: 0 });
    assert.deepEqual(r.tokens, refs.get(ok)!.tokens);
    c.close();
  });

  /** Greedy runs known to last their full max_tokens (checked), so only a cancel or a disconnect ends them early. */
  async function longRuns(salts: number[]): Promise<{ c: Case; want: Continuation }[]> {
    const runs = [];
    for (const salt of salts) {
      const c: Case = { adapter: null, prompt: someTokens(5, daemon.engine.info.vocabSize, salt), maxTokens: 240 };
      const want = await expected.of(c);
      assert.equal(want.finish, 'length', `the fixture (salt ${salt}) must not stop before max_tokens`);
      runs.push({ c, want });
    }
    return runs;
  }

  test('cancel ends a running request with "cancelled" and frees its KV blocks', async () => {
    const [{ c: long, want }] = await longRuns([4]);
    const c = await StreamClient.open(url);
    c.send({ type: 'generate', id: 'long', prompt: long.prompt, max_tokens: long.maxTokens, temperature: 0 });
    const first = await c.next((f) => f.id === 'long');
    assert.equal(first.type, 'token', JSON.stringify(first));
    c.send({ type: 'cancel', id: 'long' });
    const done = await c.next((f) => f.id === 'long' && f.type !== 'token');
    assert.equal(done.type, 'done', JSON.stringify(done));
    assert.equal(done.finish_reason, 'cancelled');
    const got = c.frames.filter((f) => f.id === 'long' && f.type === 'token').map((f) => f.token as number);
    assert.ok(got.length < long.maxTokens, `all ${got.length} tokens were generated before the cancel landed`);
    assert.deepEqual(got, want.tokens.slice(0, got.length), 'the tokens before the cancel are the continuation');
    assert.deepEqual(done.usage, { prompt_tokens: long.prompt.length, completion_tokens: got.length });
    await waitFor(kvFull, 'KV blocks back to full after cancel');
    c.close();
  });

  test('a client that disconnects mid-stream frees its sequences', async () => {
    const runs = await longRuns([8, 13, 14, 18]);
    const c = await StreamClient.open(url);
    runs.forEach(({ c: r }, i) => c.send({ type: 'generate', id: `d${i}`, prompt: r.prompt, max_tokens: r.maxTokens, temperature: 0 }));
    const first = await c.next((f) => typeof f.id === 'string' && /^d\d$/.test(f.id));
    assert.equal(first.type, 'token', JSON.stringify(first));
    const running = daemon.engine.kvStats().sequences;
    c.socket.terminate();
    assert.ok(running > 0, 'no request was running when the client went away');
    await waitFor(kvFull, 'KV blocks back to full after a disconnect');
    // The server keeps serving others.
    const other = await StreamClient.open(url);
    const r = await other.generate({ id: 'after', prompt: all[1].prompt, adapter: all[1].adapter, max_tokens: all[1].maxTokens, temperature: 0 });
    assert.deepEqual(r.tokens, refs.get(all[1])!.tokens);
    other.close();
  });
});
