// --stream-interval N: a stream's tokens reach its transport in groups (the first token
// at once, then every Nth, the rest with the end), and what a client receives, over
// WebSocket and SSE, is exactly what it receives with every token sent as it is made.
import assert from 'node:assert/strict';
import { join } from 'node:path';

import { startDaemon, type Daemon } from '../../lib/server/daemon.js';
import type { TokenEvent } from '../../lib/scheduler/request.js';
import { withAddon } from '../helpers/engine.js';
import { repoRoot } from '../helpers/paths.js';
import { StreamClient } from '../helpers/ws-client.js';
import { ENGINE } from './daemon-helpers.js';

const { after, before, describe, test } = withAddon();

const EMBEDDED = join(repoRoot(), 'models', 'default');
const ADAPTERS = [{ name: 'shift', dir: join(repoRoot(), 'adapters', 'shift') }];
const INTERVAL = 4;
const PROMPTS = ['The law of the sea', 'def main():', 'Question: 2 + 2 =', 'Once upon a time'];

function daemon(streamInterval: number): Promise<Daemon> {
  return startDaemon({ modelDir: EMBEDDED, adapters: ADAPTERS, engine: { ...ENGINE, maxAdapterSlots: 64 }, server: { port: 0 }, streamInterval });
}

/** Every frame of each request over one WebSocket, all requests at once (one batch). */
async function overWs(d: Daemon, maxTokens: number, extra: Record<string, unknown> = {}): Promise<Record<string, unknown>[][]> {
  const c = await StreamClient.open(`ws://127.0.0.1:${d.server.port}/v1/stream`);
  try {
    return await Promise.all(
      PROMPTS.map(
        (prompt, i) =>
          new Promise<Record<string, unknown>[]>((resolve) => {
            const frames: Record<string, unknown>[] = [];
            c.onFrame(`r${i}`, (f) => {
              frames.push(f);
              if (f.type !== 'token') resolve(frames);
            });
            c.send({ type: 'generate', id: `r${i}`, adapter: i % 2 ? 'shift' : null, prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true, ...extra });
          }),
      ),
    );
  } finally {
    c.close();
  }
}

/** The SSE events of a streamed completion or chat, without the fields that differ per response (id, created). */
async function overSse(d: Daemon, route: 'completions' | 'chat/completions', body: Record<string, unknown>): Promise<unknown[]> {
  const res = await fetch(`http://127.0.0.1:${d.server.port}/v1/${route}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'shift', temperature: 0, stream: true, stream_options: { include_usage: true }, ignore_eos: true, ...body }),
  });
  assert.equal(res.status, 200);
  const events = (await res.text()).split('\n\n').filter((e) => e !== '');
  assert.equal(events.at(-1), 'data: [DONE]');
  return events.slice(0, -1).map((e) => {
    const { id: _id, created: _created, ...rest } = JSON.parse(e.slice('data: '.length)) as Record<string, unknown>;
    return rest;
  });
}

describe('stream interval', () => {
  let every: Daemon;
  let grouped: Daemon;
  before(async () => {
    [every, grouped] = await Promise.all([daemon(1), daemon(INTERVAL)]);
  });
  after(async () => {
    await Promise.all([every?.close(), grouped?.close()]);
  });

  test(`tokens reach the transport first at once, then ${INTERVAL} at a time, the rest with the end`, async () => {
    const maxTokens = 15;
    const runs = await Promise.all(
      PROMPTS.map(
        (prompt, i) =>
          new Promise<{ index: number; step: number }[][]>((resolve, reject) => {
            // Deliveries: the events handed over in one go (same tick, same finished step count).
            const deliveries: { index: number; step: number }[][] = [];
            let lastTick: object | undefined;
            let tick: object = {};
            const onToken = (ev: TokenEvent) => {
              if (lastTick !== tick) {
                deliveries.push([]);
                lastTick = tick;
                queueMicrotask(() => (tick = {}));
              }
              deliveries.at(-1)!.push({ index: ev.index, step: grouped.service.scheduler.stats.steps });
            };
            grouped.service.start(
              { prompt, adapter: i % 2 ? 'shift' : null, client: `c${i}`, maxTokens, temperature: 0, topP: 1, topK: 0, seed: 0, stop: [], logprobs: false, ignoreEos: true },
              { onToken, onDone: () => resolve(deliveries), onError: reject },
            );
          }),
      ),
    );
    for (const deliveries of runs) {
      assert.deepEqual(deliveries.map((d) => d.length), [1, 4, 4, 4, 2]);
      assert.deepEqual(deliveries.flat().map((t) => t.index), Array.from({ length: maxTokens }, (_, i) => i));
      // A group leaves when its last token's step has finished, not before or later.
      for (const d of deliveries) assert.equal(new Set(d.map((t) => t.step)).size, 1, JSON.stringify(d));
      const steps = deliveries.map((d) => d[0].step);
      assert.deepEqual([...steps].sort((a, b) => a - b), steps);
      assert.equal(new Set(steps).size, steps.length);
    }
  });

  test('WebSocket frames are the same as with every token sent at once', async () => {
    for (const maxTokens of [1, 6, 17]) {
      const [a, b] = await Promise.all([overWs(every, maxTokens), overWs(grouped, maxTokens)]);
      assert.deepEqual(b, a, `max_tokens ${maxTokens}`);
      for (const frames of a) assert.equal(frames.filter((f) => f.type === 'token').length, maxTokens);
    }
  });

  test('with stop strings too (text held back, the stop not emitted), the frames are the same', async () => {
    // Stop strings from the text interval 1 makes, so some requests do stop early.
    const plain = await overWs(every, 24);
    const stop = [...new Set(plain.map((f) => String(f[6]?.text ?? '')).filter((t) => t.trim() !== ''))].slice(0, 2);
    assert.ok(stop.length > 0, JSON.stringify(plain[0]));
    const [a, b] = await Promise.all([overWs(every, 24, { stop }), overWs(grouped, 24, { stop })]);
    assert.deepEqual(b, a);
    assert.ok(a.some((frames) => frames.at(-1)!.finish_reason === 'stop'), JSON.stringify(a.map((f) => f.at(-1))));
  });

  test('SSE events, completions and chat, are the same as with every token sent at once', async () => {
    for (const maxTokens of [1, 7]) {
      const body = { prompt: PROMPTS[0], max_tokens: maxTokens };
      const [a, b] = await Promise.all([overSse(every, 'completions', body), overSse(grouped, 'completions', body)]);
      assert.deepEqual(b, a, `max_tokens ${maxTokens}`);
      assert.ok(a.length >= maxTokens + 1, JSON.stringify(a));
    }
    const chat = { messages: [{ role: 'user', content: 'Say something' }], max_tokens: 9 };
    const [a, b] = await Promise.all([overSse(every, 'chat/completions', chat), overSse(grouped, 'chat/completions', chat)]);
    assert.deepEqual(b, a);
    assert.equal((a[0] as { choices: { delta: { role?: string } }[] }).choices[0].delta.role, 'assistant');
  });

  test('a cancelled stream still gets the tokens it was made, then its done frame', async () => {
    const c = await StreamClient.open(`ws://127.0.0.1:${grouped.server.port}/v1/stream`);
    try {
      const frames: Record<string, unknown>[] = [];
      const done = new Promise<void>((resolve) =>
        c.onFrame('x', (f) => {
          frames.push(f);
          if (f.type === 'token' && f.index === 0) c.send({ type: 'cancel', id: 'x' });
          if (f.type !== 'token') resolve();
        }),
      );
      c.send({ type: 'generate', id: 'x', prompt: PROMPTS[1], max_tokens: 200, temperature: 0, ignore_eos: true });
      await done;
      const end = frames.at(-1)!;
      assert.equal(end.type, 'done', JSON.stringify(end));
      assert.equal(end.finish_reason, 'cancelled');
      const tokens = frames.filter((f) => f.type === 'token');
      assert.deepEqual(tokens.map((f) => f.index), tokens.map((_, i) => i));
      assert.ok(tokens.length < 200);
      assert.equal((end.usage as { completion_tokens: number }).completion_tokens, tokens.length);
    } finally {
      c.close();
    }
  });
});
