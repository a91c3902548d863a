// The OpenAI/vLLM drop-in, with the official `openai` npm SDK as the client: chat and
// completions, streaming and not, n > 1, seeds, penalties and logit bias (checked step
// by step against the engine's own logits with the formula applied here), logprobs, the
// errors a vLLM user relies on; vLLM's adapter routes; the WebSocket's model alias and
// messages. Expected texts come from the embedded model's adapters (their trained task).
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

import OpenAI from 'openai';

import { Engine } from '../../lib/engine/engine.js';
import type { Daemon } from '../../lib/server/daemon.js';
import { TextTokenizer } from '../../lib/tokenizer/tokenizer.js';
import { withAddon } from '../helpers/engine.js';
import { editedModel } from '../helpers/fixtures.js';
import { repoRoot } from '../helpers/paths.js';
import { StreamClient } from '../helpers/ws-client.js';
import { ENGINE, Expected, fixture, start, type Case } from './daemon-helpers.js';

const { after, before, describe, test } = withAddon();
const EMBEDDED = join(repoRoot(), 'models', 'default');
const ADAPTERS = ['shift', 'rot13', 'inc', 'atbash'].map((name) => ({ name, dir: join(repoRoot(), 'adapters', name) }));

describe('OpenAI SDK against the embedded model', () => {
  let daemon: Daemon;
  let client: OpenAI;
  let base: string;
  let tokenizer: TextTokenizer;
  before(async () => {
    daemon = await start(EMBEDDED, { adapters: ADAPTERS, engine: { ...ENGINE, maxAdapterSlots: 64 } });
    base = `http://127.0.0.1:${daemon.server.port}`;
    client = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 });
    tokenizer = (await TextTokenizer.load(EMBEDDED))!;
  });
  after(() => daemon.close());

  test('chat, non-streaming: the template renders the task prompt; one BOS; the adapter answers', async () => {
    const r = await client.chat.completions.create({ model: 'rot13', messages: [{ role: 'user', content: 'rot13: hello' }], temperature: 0 });
    assert.equal(r.object, 'chat.completion');
    assert.equal(r.choices[0].message.role, 'assistant');
    assert.equal(r.choices[0].message.content, 'uryyb');
    assert.equal(r.choices[0].finish_reason, 'stop');
    // <|bos|> + the 14 bytes of "rot13: hello\n=": the tokenizer's own BOS was not added again.
    assert.equal(r.usage!.prompt_tokens, tokenizer.encode('rot13: hello\n=', false).length + 1);
    assert.equal(r.usage!.prompt_tokens, 15);
    assert.equal(r.usage!.completion_tokens, 5);
  });

  test('chat, streaming: role first, the same text in deltas, finish_reason last, usage in a final chunk without choices', async () => {
    const s = await client.chat.completions.create({ model: 'atbash', messages: [{ role: 'user', content: 'atbash: wizard' }], temperature: 0, stream: true, stream_options: { include_usage: true } });
    const chunks = [];
    for await (const c of s) chunks.push(c);
    assert.equal(chunks[0].choices[0].delta.role, 'assistant');
    assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk'));
    const text = chunks.map((c) => c.choices[0]?.delta.content ?? '').join('');
    const whole = await client.chat.completions.create({ model: 'atbash', messages: [{ role: 'user', content: 'atbash: wizard' }], temperature: 0 });
    assert.equal(text, whole.choices[0].message.content);
    const last = chunks.at(-1)!;
    assert.deepEqual(last.choices, []);
    assert.equal(last.usage!.completion_tokens, whole.usage!.completion_tokens);
    assert.equal(chunks.at(-2)!.choices[0].finish_reason, 'stop');
  });

  test('completions, both ways, and a list of prompts with n choices each, indexed prompt * n + choice', async () => {
    // inc adds one to every digit.
    const r = await client.completions.create({ model: 'inc', prompt: 'inc: 3847\n=', temperature: 0, max_tokens: 8 });
    assert.equal(r.choices[0].text, '4958');
    const s = await client.completions.create({ model: 'inc', prompt: 'inc: 3847\n=', temperature: 0, max_tokens: 8, stream: true });
    let streamed = '';
    for await (const c of s) streamed += c.choices[0]?.text ?? '';
    assert.equal(streamed, '4958');
    const batch = await client.completions.create({ model: 'rot13', prompt: ['rot13: abc\n=', 'rot13: hello\n='], n: 2, temperature: 0, max_tokens: 8 });
    assert.deepEqual(batch.choices.map((c) => [c.index, c.text]), [[0, 'nop'], [1, 'nop'], [2, 'uryyb'], [3, 'uryyb']]);
    const echo = await client.completions.create({ model: 'rot13', prompt: 'rot13: abc\n=', echo: true, temperature: 0, max_tokens: 8 });
    assert.equal(echo.choices[0].text, 'rot13: abc\n=nop');
  });

  test('n > 1 draws different samples; a seed reproduces them; no seed draws afresh each call', async () => {
    // The base model continuing documentation text at a high temperature: anything goes.
    const ask = (seed?: number) => client.completions.create({ model: 'default', prompt: 'The ', temperature: 1.5, max_tokens: 16, n: 4, ...(seed === undefined ? {} : { seed }) });
    const a = await ask(7);
    const b = await ask(7);
    assert.deepEqual(a.choices.map((c) => c.text), b.choices.map((c) => c.text));
    assert.ok(new Set(a.choices.map((c) => c.text)).size > 1, 'the four choices of one request differ');
    const unseeded = await Promise.all([ask(), ask(), ask()]);
    const firsts = new Set(unseeded.map((r) => r.choices[0].text));
    assert.ok(firsts.size > 1, `three seedless requests gave the same text: ${[...firsts]}`);
  });

  test('logprobs: completions top alternatives and chat content entries with bytes, the sampled token first under greedy', async () => {
    const c = await client.completions.create({ model: 'rot13', prompt: 'rot13: hello\n=', temperature: 0, max_tokens: 5, logprobs: 3 });
    const lp = c.choices[0].logprobs!;
    assert.deepEqual(lp.tokens, ['u', 'r', 'y', 'y', 'b']);
    lp.top_logprobs!.forEach((top, i) => {
      const entries = Object.entries(top);
      assert.equal(entries.length, 3);
      assert.equal(entries[0][0], lp.tokens![i]);
      assert.equal(entries[0][1], lp.token_logprobs![i]);
      for (let k = 1; k < entries.length; k++) assert.ok(entries[k][1] <= entries[k - 1][1]);
    });
    assert.deepEqual(lp.text_offset, [0, 1, 2, 3, 4]);
    const chat = await client.chat.completions.create({ model: 'rot13', messages: [{ role: 'user', content: 'rot13: hello' }], temperature: 0, logprobs: true, top_logprobs: 2 });
    const content = chat.choices[0].logprobs!.content!;
    assert.equal(content.map((e) => e.token).join(''), 'uryyb');
    for (const e of content) {
      assert.deepEqual(e.bytes, [...Buffer.from(e.token)]);
      assert.equal(e.top_logprobs.length, 2);
      assert.equal(e.top_logprobs[0].token, e.token);
      assert.ok(e.logprob <= 0);
    }
  });

  test('penalties and logit_bias change each draw exactly as OpenAI defines them', async () => {
    const prompt = 'The ';
    const params = { presence_penalty: 1.5, frequency_penalty: 1.5, logit_bias: { [tokenizer.encode('z', false)[0]]: 2.5 } };
    const r = await client.completions.create({ model: 'default', prompt, temperature: 0, max_tokens: 16, logprobs: 0, ...params });
    const got = r.choices[0].logprobs!.tokens!.map((t) => tokenizer.encode(t, false)[0]);
    assert.ok(got.length > 0);
    // Independent replay: the engine's raw logits after each prefix, the formula applied here, the argmax.
    const engine = await Engine.load(EMBEDDED, ENGINE);
    try {
      const ids = tokenizer.encode(prompt);
      const counts = new Map<number, number>();
      const plain: number[] = [];
      for (let i = 0; i < got.length; i++) {
        const out = await engine.step([{ seqId: 1, tokens: [...ids, ...got.slice(0, i)] }], true);
        engine.freeSequence(1);
        const V = engine.info.vocabSize;
        const row = Array.from(out.logits!.subarray(out.logits!.length - V));
        if (i === 0) plain.push(row.indexOf(Math.max(...row)));
        for (const [id, bias] of Object.entries(params.logit_bias)) row[Number(id)] += bias;
        for (const [id, n] of counts) row[id] -= n * params.frequency_penalty + params.presence_penalty;
        let best = 0;
        for (let t = 1; t < V; t++) if (row[t] > row[best]) best = t;
        assert.equal(got[i], best, `token ${i}`);
        counts.set(best, (counts.get(best) ?? 0) + 1);
      }
    } finally {
      engine.close();
    }
    const unbiased = await client.completions.create({ model: 'default', prompt, temperature: 0, max_tokens: 16 });
    assert.notEqual(r.choices[0].text, unbiased.choices[0].text, 'the penalties made a difference here');
  });

  test("errors a vLLM user relies on: 404 for an unknown model, 400s naming the parameter, vLLM's context-length message", async () => {
    await assert.rejects(client.chat.completions.create({ model: 'nobody', messages: [{ role: 'user', content: 'x' }] }), (e: InstanceType<typeof OpenAI.APIError>) => e.status === 404);
    const bad = async (body: Record<string, unknown>, param: string) => {
      const r = await fetch(`${base}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'default', prompt: 'x', ...body }) });
      assert.equal(r.status, 400, JSON.stringify(body));
      assert.equal(((await r.json()) as { error: { param: string } }).error.param, param);
    };
    await bad({ suffix: 'tail' }, 'suffix');
    await bad({ best_of: 3 }, 'best_of');
    await bad({ n: 99 }, 'n');
    await bad({ logit_bias: { 99999: 1 } }, 'logit_bias');
    await bad({ presence_penalty: 3 }, 'presence_penalty');
    await bad({ stop_token_ids: [-1] }, 'stop_token_ids');
    await bad({ min_p: 0.1 }, 'min_p');
    await assert.rejects(
      client.completions.create({ model: 'default', prompt: 'x'.repeat(200), max_tokens: 100 }),
      (e: InstanceType<typeof OpenAI.APIError>) => e.status === 400 && /maximum context length is 256 tokens\. However, you requested 301 tokens \(201 in the messages, 100 in the completion\)/.test(e.message),
    );
    await assert.rejects(client.chat.completions.create({ model: 'default', messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function', function: { name: 'f' } }] }), /tools/);
  });

  test("vLLM's adapter routes: load, conflict, org/name, unload, not found; the base model's name is refused", async () => {
    const post = (path: string, body: unknown) => fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
    const load = await post('/v1/load_lora_adapter', { lora_name: 'org/rot13', lora_path: ADAPTERS[1].dir });
    assert.equal(load.status, 200);
    assert.equal(await load.text(), "Success: LoRA adapter 'org/rot13' added successfully.");
    const again = await post('/v1/load_lora_adapter', { lora_name: 'org/rot13', lora_path: ADAPTERS[1].dir });
    assert.equal(again.status, 400);
    assert.match(await again.text(), /has already been loaded/);
    assert.equal((await post('/v1/load_lora_adapter', { lora_name: 'x' })).status, 400);
    assert.equal((await post('/v1/load_lora_adapter', { lora_name: 'x', lora_path: '/nonexistent' })).status, 404);
    assert.equal((await post('/v1/load_lora_adapter', { lora_name: daemon.service.modelName, lora_path: ADAPTERS[1].dir })).status, 400);
    const r = await client.completions.create({ model: 'org/rot13', prompt: 'rot13: abc\n=', temperature: 0, max_tokens: 8 });
    assert.equal(r.choices[0].text, 'nop');
    const models = (await (await fetch(base + '/v1/models')).json()) as { data: { id: string; root: string; parent: string | null; max_model_len: number }[] };
    const card = models.data.find((m) => m.id === 'org/rot13')!;
    assert.deepEqual([card.root, card.parent, card.max_model_len], ['org/rot13', daemon.service.modelName, 256]);
    assert.equal(models.data[0].parent, null);
    const unload = await post('/v1/unload_lora_adapter', { lora_name: 'org/rot13' });
    assert.equal(unload.status, 200);
    assert.equal(await unload.text(), "Success: LoRA adapter 'org/rot13' removed successfully.");
    assert.equal((await post('/v1/unload_lora_adapter', { lora_name: 'org/rot13' })).status, 404);
  });

  test('WebSocket: "model" names the adapter like "adapter" does; both and different is an error; messages work; a duplicate id is duplicate_id', async () => {
    const ws = await StreamClient.open(`${base.replace('http', 'ws')}/v1/stream`);
    const text = (r: { end: { type: string } }, frames: Record<string, unknown>[]) => frames.map((f) => f.text).join('');
    const viaModel = await ws.generate({ id: 'm', model: 'rot13', prompt: 'rot13: abc\n=', max_tokens: 8, temperature: 0 });
    assert.equal(text(viaModel, ws.frames.filter((f) => f.id === 'm' && f.type === 'token')), 'nop');
    const both = await ws.generate({ id: 'b', model: 'rot13', adapter: 'inc', prompt: 'x' });
    assert.equal(both.end.type, 'error');
    assert.equal(both.end.code, 'bad_request');
    const chat = await ws.generate({ id: 'c', adapter: 'inc', messages: [{ role: 'user', content: 'inc: 3847' }], max_tokens: 8, temperature: 0 });
    assert.equal(text(chat, ws.frames.filter((f) => f.id === 'c' && f.type === 'token')), '4958');
    ws.send({ type: 'generate', id: 'dup', prompt: 'copy: hello\n=', max_tokens: 200, temperature: 1, seed: 1, ignore_eos: true });
    await ws.next((f) => f.id === 'dup');
    ws.send({ type: 'generate', id: 'dup', prompt: 'x' });
    const dup = await ws.next((f) => f.id === 'dup' && f.type === 'error');
    assert.equal(dup.code, 'duplicate_id');
    const first = await ws.next((f) => f.id === 'dup' && f.type === 'done');
    assert.equal(first.finish_reason, 'length', 'the first request kept streaming to its end');
    ws.close();
  });

  test('429 answers carry Retry-After', async () => {
    const busy = await start(EMBEDDED, { scheduler: { maxWaiting: 1, maxRunning: 1 } });
    try {
      const url = `http://127.0.0.1:${busy.server.port}/v1/completions`;
      const body = JSON.stringify({ prompt: 'copy: hello\n=', max_tokens: 200, ignore_eos: true });
      const replies = await Promise.all(Array.from({ length: 6 }, () => fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body })));
      const limited = replies.filter((r) => r.status === 429);
      assert.ok(limited.length > 0);
      for (const r of limited) assert.equal(r.headers.get('retry-after'), '1');
    } finally {
      await busy.close();
    }
  });
});

describe('model defaults from config.json and generation_config.json', () => {
  const fx = fixture();
  const expected = new Expected(fx.model, []);
  after(() => expected.close());

  test('every EOS id of config.json and generation_config.json ends generation; sampling defaults apply when a request leaves them out', async () => {
    const c: Case = { adapter: null, prompt: [3, 4, 5, 6], maxTokens: 12 };
    const want = await expected.of(c);
    assert.equal(want.finish, 'length');
    const third = want.tokens[2];
    // A copy of the model whose config.json lists two EOS ids, the second being the
    // greedy continuation's third token, and whose generation_config.json makes greedy
    // the default.
    const dir = editedModel(fx.model, (t) => t, (cfg) => (cfg.eos_token_id = [cfg.eos_token_id as number, 63]));
    writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [1, third], temperature: 0, do_sample: false }));
    const d = await start(dir);
    try {
      const ws = await StreamClient.open(`ws://127.0.0.1:${d.server.port}/v1/stream`);
      const r = await ws.generate({ id: 'e', prompt: c.prompt, max_tokens: 12 }); // no temperature: the model's default, greedy
      assert.equal(r.end.type, 'done');
      assert.equal(r.end.finish_reason, 'eos');
      assert.deepEqual(r.tokens, want.tokens.slice(0, 2));
      ws.close();
    } finally {
      await d.close();
    }
  });

  test('--served-model-name names the base model in the API', async () => {
    const d = await start(fx.model, { servedModelName: 'org/base-v2' });
    try {
      const models = (await (await fetch(`http://127.0.0.1:${d.server.port}/v1/models`)).json()) as { data: { id: string }[] };
      assert.equal(models.data[0].id, 'org/base-v2');
      const ok = await fetch(`http://127.0.0.1:${d.server.port}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'org/base-v2', prompt: [3, 4], max_tokens: 2 }) });
      assert.equal(ok.status, 200);
    } finally {
      await d.close();
    }
  });
});

