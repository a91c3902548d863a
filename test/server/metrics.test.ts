// /metrics against Prometheus' own rules and against hostile clients, over real sockets:
// the exposition passes promlint's checks (those of `promtool check metrics`, also run
// when promtool is installed) except the ':' of the model-server protocol's vllm:* names;
// unknown model names and removed adapters never add series (issue 10 item 3).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';

import type { AdapterEntry, AdapterRegistry } from '../../lib/adapters/adapter-registry.js';
import type { BatchScheduler } from '../../lib/scheduler/batch-scheduler.js';
import type { EnginePort } from '../../lib/scheduler/engine-port.js';
import type { Daemon } from '../../lib/server/daemon.js';
import { Metrics } from '../../lib/server/metrics.js';
import { addon } from '../helpers/engine.js';
import { StreamClient } from '../helpers/ws-client.js';
import { fixture, start } from './daemon-helpers.js';
import { extractEndpointMetrics } from './epp-extractor.js';
import { lintPrometheus, parseFamilies, parsePrometheus } from './prometheus-parser.js';

const native = addon();
const skip = 'skip' in native ? native.skip : false;
const TOKEN = 'metrics-token';
/** The protocol's families: their names must be vLLM's, colons included. */
const PROTOCOL = ['vllm:cache_config_info', 'vllm:kv_cache_usage_perc', 'vllm:lora_requests_info', 'vllm:num_requests_running', 'vllm:num_requests_waiting'];
const promtool = spawnSync('promtool', ['--version'], { stdio: 'ignore' }).status === 0;

/** promtool's findings on `text` (its problem lines, deduplicated and sorted) and its exit code. */
function promtoolCheck(text: string): { status: number | null; problems: string[] } {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: text, encoding: 'utf8' });
  return { status: r.status, problems: [...new Set(r.stderr.split('\n').filter((l) => l !== ''))].sort() };
}

describe('/metrics', { skip }, () => {
  let daemon: Daemon;
  let base: string;
  let fx: ReturnType<typeof fixture>;

  before(async () => {
    fx = fixture();
    daemon = await start(fx.model, { adapters: fx.adapters.slice(0, 1), server: { port: 0, adminToken: TOKEN } });
    base = `http://127.0.0.1:${daemon.server.port}`;
  });
  after(() => daemon.close());

  // `connection: close`: an idle keep-alive socket would hold the test process for 4 s after the daemon closes.
  const post = (path: string, body: unknown) =>
    fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKEN}`, connection: 'close' }, body: JSON.stringify(body) });
  const scrape = async () => (await fetch(base + '/metrics', { headers: { connection: 'close' } })).text();
  /** Series other than the one whose value is the clock. */
  const series = (text: string) => parsePrometheus(text).filter((s) => s.name !== 'vllm:lora_requests_info');

  test('passes promlint: no findings but the protocol names\' colons (promtool agrees when installed)', async () => {
    assert.equal((await post('/v1/completions', { model: 'law', prompt: [3, 4], max_tokens: 3, temperature: 0 })).status, 200);
    assert.equal((await post('/v1/completions', { model: 'nobody', prompt: [3] })).status, 404);
    const text = await scrape();
    const families = parseFamilies(text);
    for (const t of ['counter', 'gauge', 'histogram']) assert.ok(families.some((f) => f.type === t && f.samples.length > 0), `a ${t} with samples`);
    const expected = PROTOCOL.map((n) => `${n} metric names should not contain ':'`);
    assert.deepEqual(lintPrometheus(text), expected);
    assert.ok(!families.some((f) => f.name === 'expertweave_kv_blocks_total'), 'the KV block gauge is not named like a counter');
    if (promtool) {
      assert.deepEqual(promtoolCheck(text).problems, expected);
      const ours = text.split('\n').filter((l) => !l.includes('vllm:')).join('\n');
      assert.deepEqual(promtoolCheck(ours), { status: 0, problems: [] });
    }
  });

  test('the linter catches what promtool catches', () => {
    const bad = [
      '# HELP ew_kv_blocks_total KV blocks.', '# TYPE ew_kv_blocks_total gauge', 'ew_kv_blocks_total 3',
      '# HELP ew_steps Steps.', '# TYPE ew_steps counter', 'ew_steps 1',
      '# HELP ew_step_milliseconds Step time.', '# TYPE ew_step_milliseconds gauge', 'ew_step_milliseconds{perStep="a"} 1',
      '# TYPE ew_latency_ms gauge', 'ew_latency_ms 2',
      '',
    ].join('\n');
    const found = lintPrometheus(bad);
    assert.deepEqual(found, [
      'ew_kv_blocks_total non-counter metrics should not have "_total" suffix',
      'ew_latency_ms metric names should not contain abbreviated units',
      'ew_latency_ms no help text',
      'ew_step_milliseconds label names should be written in \'snake_case\' not \'camelCase\'',
      'ew_step_milliseconds use base unit "seconds" instead of "milliseconds"',
      'ew_steps counter metrics should have "_total" suffix',
    ]);
    if (promtool) assert.deepEqual(promtoolCheck(bad).problems, found);
    assert.throws(() => parseFamilies('# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x="1"} 2\n'), /not one group/);
    assert.throws(() => parseFamilies('# TYPE a gauge\na 1\na 2\n'), /repeated/);
  });

  test('hundreds of unknown model names add no series and no bytes', async () => {
    const client = await StreamClient.open(base.replace('http', 'ws') + '/v1/stream');
    assert.equal((await client.generate({ id: 'warm', adapter: 'nobody', prompt: [3], max_tokens: 1 })).end.code, 'unknown_adapter');
    const before = await scrape();
    const name = (i: number) => `unknown-${i}-`.padEnd(200, 'z');
    for (let i = 0; i < 300; i++) {
      const res = await post('/v1/completions', { model: name(i), prompt: [3], max_tokens: 1 });
      assert.equal(res.status, 404);
      await res.arrayBuffer();
    }
    for (let i = 300; i < 350; i++) {
      assert.equal((await client.generate({ id: `u${i}`, adapter: name(i), prompt: [3], max_tokens: 1 })).end.code, 'unknown_adapter');
    }
    client.close();
    const afterText = await scrape();
    assert.equal(series(afterText).length, series(before).length);
    assert.ok(!afterText.includes('zzzzzzzzzz'), 'no unknown name reaches the exposition');
    // Only counter digits may grow ("1" -> "351" and the like); each name would add ~1 KB.
    assert.ok(Math.abs(afterText.length - before.length) < 200, `${before.length} -> ${afterText.length} bytes`);
    const refused = parsePrometheus(afterText).find((s) => s.name === 'expertweave_request_errors_total' && s.labels.code === 'unknown_adapter');
    assert.deepEqual(refused?.labels, { adapter: '(unregistered)', code: 'unknown_adapter' });
    assert.equal(refused?.value, 352); // 'nobody' twice (this test and the first), 350 names
  });

  test('series of removed adapters go: register/use/remove under 20 names leaves the series as before', async () => {
    const before = series(await scrape()).length;
    for (let i = 0; i < 20; i++) {
      const name = `tmp-${i}`;
      assert.equal((await post('/v1/adapters', { name, path: fx.adapters[1].dir })).status, 201);
      assert.equal((await post('/v1/completions', { model: name, prompt: [3, 5], max_tokens: 2, temperature: 0 })).status, 200);
      const during = parsePrometheus(await scrape());
      assert.ok(during.some((s) => s.name === 'expertweave_requests_total' && s.labels.adapter === name), 'a registered adapter has its series');
      const del = await fetch(`${base}/v1/adapters/${name}`, { method: 'DELETE', headers: { authorization: `Bearer ${TOKEN}`, connection: 'close' } });
      assert.equal(del.status, 200);
    }
    const text = await scrape();
    assert.ok(!parsePrometheus(text).some((s) => s.labels.adapter?.startsWith('tmp-')), 'no series of a removed adapter');
    assert.equal(series(text).length, before);
  });

  test('the growth reserve gauges: room held for a running request while it runs, none once it is done', async () => {
    const gauge = (text: string, name: string) => parsePrometheus(text).find((x) => x.name === name)?.value;
    const c = await StreamClient.open(`ws://127.0.0.1:${daemon.server.port}/v1/stream`);
    const prompt = [3, 4, 5];
    const maxTokens = daemon.engine.info.maxPositionEmbeddings - prompt.length - 1;
    // A slow stream: the client reads on, but the request has far to go when the scrape lands.
    c.send({ type: 'generate', id: 'long', adapter: null, prompt, max_tokens: maxTokens, temperature: 0, ignore_eos: true });
    await c.next((f) => f.id === 'long' && f.type === 'token');
    const during = await scrape();
    const end = await c.next((f) => f.id === 'long' && (f.type === 'done' || f.type === 'error'));
    c.close();
    assert.equal(end.type, 'done', JSON.stringify(end));
    const ratio = gauge(during, 'expertweave_kv_growth_reserve_ratio')!;
    const blocks = gauge(during, 'expertweave_kv_growth_reserve_blocks')!;
    assert.ok(ratio >= 0.7 * 0.14 && ratio <= 1, `ratio ${ratio}`);
    // It still had nearly all of maxTokens to go: at least the ratio's share of that, in blocks.
    const { blockSize, totalBlocks } = daemon.engine.kvStats();
    assert.ok(blocks >= Math.floor((ratio * (maxTokens - 40)) / blockSize) && blocks <= totalBlocks, `reserve ${blocks} blocks at ratio ${ratio}`);
    const after = await scrape();
    assert.equal(gauge(after, 'expertweave_kv_growth_reserve_blocks'), 0);
  });

  test('the protocol gauges read as the endpoint picker reads them', async () => {
    const m = extractEndpointMetrics(await scrape(), {
      name: 'vllm',
      queuedRequestsSpec: 'vllm:num_requests_waiting',
      runningRequestsSpec: 'vllm:num_requests_running',
      kvUsageSpec: 'vllm:kv_cache_usage_perc',
      loraSpec: 'vllm:lora_requests_info',
      cacheInfoSpec: 'vllm:cache_config_info',
    });
    const kv = daemon.engine.kvStats();
    assert.deepEqual(m, {
      waitingQueueSize: 0,
      runningRequestsSize: 0,
      kvCacheUsagePercent: 0,
      activeModels: new Set(),
      waitingModels: new Set(),
      maxActiveModels: 8, // the engine's adapter rows (ENGINE.maxAdapters): no residency limit is set
      cacheBlockSize: kv.blockSize,
      cacheNumBlocks: kv.totalBlocks,
    });
  });
});

test('requests awaiting their adapter\'s load wait, and list it as waiting', () => {
  const entry = (name: string, row: number | undefined, active: number): AdapterEntry =>
    ({ name, dir: '/a/' + name, row, state: row === undefined ? 'loading' : 'resident', experts: 1, bytes: 10, pinned: false, active, loads: 1, evictions: 0 });
  const entries = [entry('law', 1, 1), entry('math', undefined, 2), entry('idle', undefined, 0)];
  const registry = { get: (n: string) => entries.find((e) => e.name === n), list: () => entries, residentBytes: () => 10 } as unknown as AdapterRegistry;
  const scheduler = {
    activity: () => ({ running: 1, waiting: 1, runningAdapters: new Set(['law']), waitingAdapters: new Set(['', 'gone']) }),
    stats: { preemptions: 0 },
    growthReserve: () => ({ ratio: 0.7, blocks: 2 }),
  } as unknown as BatchScheduler;
  const engine = { kvStats: () => ({ blockSize: 4, totalBlocks: 10, freeBlocks: 6, sequences: 1 }) } as unknown as EnginePort;
  const m = extractEndpointMetrics(new Metrics(registry, { maxLora: 3 }).render(engine, scheduler, 'base'), {
    name: 'vllm',
    queuedRequestsSpec: 'vllm:num_requests_waiting',
    runningRequestsSpec: 'vllm:num_requests_running',
    kvUsageSpec: 'vllm:kv_cache_usage_perc',
    loraSpec: 'vllm:lora_requests_info',
  });
  // One queued base request ('' is never listed), one of a removed adapter ('gone': not listed),
  // two awaiting math's load.
  assert.equal(m.waitingQueueSize, 3);
  assert.deepEqual(m.waitingModels, new Set(['math']));
  assert.deepEqual(m.activeModels, new Set(['law']));
  assert.equal(m.kvCacheUsagePercent, 0.4);
  assert.equal(m.maxActiveModels, 3);
});
