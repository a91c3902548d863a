// The daemon's HTTP side over real sockets with the real engine: OpenAI completions
// (streaming and not) equal to the base or merged checkpoint's greedy continuation, /v1/models, /health, the admin
// adapter routes with a bearer token, and /metrics as strict Prometheus text.
import assert from 'node:assert/strict';

import type { Daemon } from '../../lib/server/daemon.js';
import { withAddon } from '../helpers/engine.js';
import { tempDir } from '../helpers/tmp.js';
import { Expected, cases, fixture, start, type Case, type Continuation } from './daemon-helpers.js';
import { parsePrometheus } from './prometheus-parser.js';

const { after, before, describe, test } = withAddon();
const TOKEN = 's3cret';

describe('HTTP routes', () => {
  let daemon: Daemon;
  let base: string;
  let fx: ReturnType<typeof fixture>;
  let c0: Case;
  let c1: Case;
  let ref0: Continuation;
  let ref1: Continuation;

  before(async () => {
    fx = fixture();
    daemon = await start(fx.model, { adapters: fx.adapters.slice(0, 1), server: { port: 0, adminToken: TOKEN } });
    base = `http://127.0.0.1:${daemon.server.port}`;
    [c0, c1] = cases(daemon.engine.info.vocabSize, [null, 'law'], 2);
    const expected = new Expected(fx.model, fx.adapters);
    [ref0, ref1] = await expected.all([c0, c1]);
    await expected.close();
  });
  after(() => daemon.close());

  const post = (path: string, body: unknown, headers: Record<string, string> = {}) =>
    fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const auth = { authorization: `Bearer ${TOKEN}` };

  test('GET /health and /v1/models', async () => {
    const health = (await (await fetch(base + '/health')).json()) as Record<string, unknown>;
    assert.equal(health.status, 'ok');
    assert.equal(health.device, 'cpu');
    const models = (await (await fetch(base + '/v1/models')).json()) as { data: { id: string }[] };
    assert.deepEqual(models.data.map((m) => m.id), [daemon.service.modelName, 'law']);
  });

  test('POST /v1/completions without streaming equals the merged checkpoint', async () => {
    const res = await post('/v1/completions', { model: 'law', prompt: c1.prompt, max_tokens: c1.maxTokens, temperature: 0, logprobs: 1 });
    assert.equal(res.status, 200);
    const body = (await res.json()) as { choices: { logprobs: { tokens: string[] }; finish_reason: string }[]; usage: Record<string, number> };
    assert.deepEqual(body.choices[0].logprobs.tokens, ref1.tokens.map((t) => `token_id:${t}`)); // no tokenizer: vLLM's id form
    assert.equal(body.choices[0].finish_reason, ref1.finish === 'eos' ? 'stop' : ref1.finish);
    assert.equal(body.usage.completion_tokens, ref1.tokens.length);
  });

  test('POST /v1/completions with stream:true sends SSE chunks ending in [DONE]', async () => {
    const res = await post('/v1/completions', { model: daemon.service.modelName, prompt: c0.prompt, max_tokens: c0.maxTokens, temperature: 0, stream: true, logprobs: 1 });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/event-stream/);
    const text = await res.text();
    const events = text.split('\n\n').filter((e) => e !== '');
    for (const e of events) assert.ok(e.startsWith('data: '), e);
    assert.equal(events.at(-1), 'data: [DONE]');
    const chunks = events.slice(0, -1).map((e) => JSON.parse(e.slice(6)) as { choices: { logprobs: { tokens: string[] } | null; finish_reason: string | null }[] });
    const tokens = chunks.filter((c) => c.choices[0].finish_reason === null).map((c) => Number(c.choices[0].logprobs!.tokens[0].replace('token_id:', '')));
    assert.deepEqual(tokens, ref0.tokens);
    assert.notEqual(chunks.at(-1)!.choices[0].finish_reason, null);
  });

  test('completions errors: bad JSON, unknown model, over-long prompt', async () => {
    assert.equal((await post('/v1/completions', '{nope')).status, 400);
    const unknown = await post('/v1/completions', { model: 'nobody', prompt: [3] });
    assert.equal(unknown.status, 404);
    assert.equal(((await unknown.json()) as { error: { code: string } }).error.code, 'unknown_adapter');
    assert.equal((await post('/v1/completions', { prompt: new Array(300).fill(3) })).status, 400);
    assert.equal((await post('/v1/completions', { prompt: [3], max_tokens: -2 })).status, 400);
  });

  test('admin routes need the bearer token; register is idempotent, conflicts are 409, bad dirs 400', async () => {
    const math = fx.adapters[1];
    assert.equal((await post('/v1/adapters', { name: 'math', path: math.dir })).status, 401);
    assert.equal((await post('/v1/adapters', { name: 'math', path: math.dir }, { authorization: 'Bearer wrong' })).status, 401);
    assert.equal((await fetch(base + '/v1/adapters')).status, 401);
    const created = await post('/v1/adapters', { name: 'math', path: math.dir }, auth);
    assert.equal(created.status, 201);
    const info = (await created.json()) as { experts: number; bytes: number };
    assert.equal(info.experts, 4);
    assert.ok(info.bytes > 0);
    assert.equal((await post('/v1/adapters', { name: 'math', path: math.dir }, auth)).status, 200);
    assert.equal((await post('/v1/adapters', { name: 'math', path: fx.adapters[2].dir }, auth)).status, 409);
    const empty = tempDir();
    const bad = await post('/v1/adapters', { name: 'empty', path: empty }, auth);
    assert.equal(bad.status, 400);
    assert.match(((await bad.json()) as { error: { message: string } }).error.message, /expert_cfg\.json/);
    const list = (await (await fetch(base + '/v1/adapters', { headers: auth })).json()) as { data: { name: string }[] };
    assert.deepEqual(list.data.map((a) => a.name).sort(), ['law', 'math']);
    assert.equal((await fetch(base + '/v1/adapters/math', { method: 'DELETE' })).status, 401);
    assert.equal((await fetch(base + '/v1/adapters/math', { method: 'DELETE', headers: auth })).status, 200);
    assert.equal((await fetch(base + '/v1/adapters/math', { method: 'DELETE', headers: auth })).status, 404);
    assert.equal((await post('/v1/completions', { model: 'math', prompt: [3] })).status, 404);
  });

  test('GET /metrics is valid Prometheus text with per-adapter counters', async () => {
    await post('/v1/completions', { model: 'law', prompt: [3, 4], max_tokens: 2, temperature: 0 });
    const res = await fetch(base + '/metrics');
    assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
    const samples = parsePrometheus(await res.text());
    const law = samples.filter((s) => s.name === 'expertweave_completion_tokens_total' && s.labels.adapter === 'law');
    assert.equal(law.length, 1);
    assert.ok(law[0].value >= 2);
    assert.ok(samples.some((s) => s.name === 'expertweave_adapter_residency' && s.labels.adapter === 'law' && s.value === 2));
    assert.ok(samples.some((s) => s.name === 'expertweave_kv_blocks' && s.value > 0));
    assert.ok(samples.some((s) => s.name === 'expertweave_step_duration_seconds_count' && s.value > 0));
  });
});
