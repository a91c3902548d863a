// Hostile and unlucky clients against a real daemon over real sockets: no request's
// values, connection, prompt size or reading speed may fail, stall or bloat another
// client's request. Each test names the case of the hostile-clients issue it covers.
import assert from 'node:assert/strict';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { connect } from 'node:net';

import type { Daemon } from '../../lib/server/daemon.js';
import { withAddon } from '../helpers/engine.js';
import { repoRoot } from '../helpers/paths.js';
import { tempDir } from '../helpers/tmp.js';
import { StreamClient } from '../helpers/ws-client.js';
import { ENGINE, Expected, cases, fixture, start, waitFor, type Case } from './daemon-helpers.js';

const { after, before, describe, test } = withAddon();

const post = (base: string, path: string, body: unknown) =>
  fetch(base + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });

/** Sends `c` greedily on `client` and resolves with its tokens and end frame. */
const run = (client: StreamClient, id: string, c: Case) =>
  client.generate({ id, adapter: c.adapter, prompt: c.prompt, max_tokens: c.maxTokens, temperature: 0 });

describe('hostile clients', () => {
  const fx = fixture();
  const expected = new Expected(fx.model, fx.adapters);
  after(() => expected.close());

  describe('one daemon, defaults', () => {
    let daemon: Daemon;
    let base: string;
    let ws: string;
    before(async () => {
      daemon = await start(fx.model, { adapters: fx.adapters.slice(0, 2) });
      base = `http://127.0.0.1:${daemon.server.port}`;
      ws = `ws://127.0.0.1:${daemon.server.port}/v1/stream`;
    });
    after(() => daemon.close());

    test('1: values the engine cannot take are the request\'s own 400; requests in flight finish unharmed', async () => {
      const all = cases(daemon.engine.info.vocabSize, [null, 'law', 'math'], 12).map((c) => ({ ...c, maxTokens: 40 }));
      const refs: { tokens: number[] }[] = [];
      for (const c of all) refs.push(await expected.of(c));
      const [a, b] = await Promise.all([StreamClient.open(ws), StreamClient.open(ws)]);
      const inFlight = all.map((c, i) => run(i % 2 ? a : b, `ok${i}`, c));
      await a.next((f) => f.type === 'token');
      // Finite in JSON, infinite (or zero) as the engine's float32.
      const badFrames: Record<string, unknown>[] = [
        { temperature: 1e308 },
        { top_p: 1e-50 },
        { temperature: 3.5e38 },
      ];
      const bad = await Promise.all(badFrames.map((f, i) => a.generate({ id: `bad${i}`, prompt: [3, 4], max_tokens: 4, ...f })));
      for (const [i, r] of bad.entries()) {
        assert.equal(r.end.type, 'error', JSON.stringify(badFrames[i]));
        assert.equal(r.end.code, 'bad_request');
        assert.match(r.end.message as string, new RegExp(`"${Object.keys(badFrames[i])[0]}"`));
      }
      const http = await post(base, '/v1/completions', { prompt: [3, 4], max_tokens: 4, temperature: 1e308 });
      assert.equal(http.status, 400);
      const results = await Promise.all(inFlight);
      results.forEach((r, i) => {
        assert.equal(r.end.type, 'done', `request ${i}: ${JSON.stringify(r.end)}`);
        assert.deepEqual(r.tokens, refs[i].tokens, `request ${i}`);
      });
      a.close();
      b.close();
    });

    test('8: a deeply nested value and a malformed path are 400s, not 500s', async () => {
      const nested = '['.repeat(100_000) + ']'.repeat(100_000);
      const r = await post(base, '/v1/completions', `{"prompt": [3, 4], "max_tokens": ${nested}}`);
      assert.equal(r.status, 400);
      assert.match(((await r.json()) as { error: { message: string } }).error.message, /"max_tokens" must be an integer >= 1, got an array of 1/);
      const del = await fetch(base + '/v1/adapters/%E0%A4%A', { method: 'DELETE' });
      assert.equal(del.status, 400);
      assert.match(await del.text(), /percent-encoding/);
    });

    test('5: an oversized body is refused with 413 after a pause and its connection closed; others are answered meanwhile', async () => {
      // Raw TCP: a Content-Length no limit allows, then body bytes that are never read.
      const port = daemon.server.port;
      const refusal = new Promise<{ ms: number; head: string; closed: boolean; at: number }>((resolve, reject) => {
        const t0 = performance.now();
        let got = '';
        let firstAt = 0;
        const sock = connect(port, '127.0.0.1', () => {
          sock.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${64 << 20}\r\n\r\n`);
          sock.write(Buffer.alloc(1 << 20, 0x20));
        });
        sock.on('data', (d: Buffer) => {
          if (!firstAt) firstAt = performance.now();
          got += d.toString('latin1');
        });
        sock.on('error', () => {}); // the server may reset a connection whose body it never read
        sock.on('close', () => resolve({ ms: firstAt - t0, head: got, closed: true, at: firstAt }));
        setTimeout(() => reject(new Error('no answer to an oversized body within 10 s')), 10_000).unref();
      });
      // Another client's request, sent right after: answered before the refusal's pause ends.
      const health = fetch(base + '/health').then(async (r) => ({ status: r.status, at: performance.now() }));
      const [r, h] = await Promise.all([refusal, health]);
      assert.match(r.head, /^HTTP\/1\.1 413 Payload Too Large/);
      assert.match(r.head, /the request body is over \d+ bytes/);
      assert.ok(r.ms >= 40, `answered after ${r.ms.toFixed(1)} ms (the refusal waits 50)`);
      assert.equal(r.closed, true);
      assert.equal(h.status, 200);
      assert.ok(h.at < r.at, 'the other request waited for the refusal');
    });

    test('8: /v1/models names adapters without telling anyone where they live on disk', async () => {
      const body = await (await fetch(base + '/v1/models')).text();
      assert.match(body, /"law"/);
      for (const a of fx.adapters) assert.ok(!body.includes(a.dir), `the body shows ${a.dir}`);
    });

    test('4: 256 long requests on one connection do not hold back another connection\'s request', { timeout: 60_000 }, async () => {
      const vocab = daemon.engine.info.vocabSize;
      const hog = await StreamClient.open(ws);
      let hogDone = 0;
      for (let i = 0; i < 256; i++) {
        hog.onFrame(`h${i}`, (f) => {
          if (f.type !== 'token') hogDone++;
        });
        hog.send({ type: 'generate', id: `h${i}`, prompt: cases(vocab, [null], 1)[0].prompt, max_tokens: 200, temperature: 0 });
      }
      await waitFor(() => daemon.service.scheduler.stats.running > 0, 'the hog to run');
      const victim = await StreamClient.open(ws);
      const c: Case = { adapter: null, prompt: [5, 6, 7], maxTokens: 4 };
      const want = await expected.of(c);
      const started = performance.now();
      const got = await run(victim, 'v', c);
      const ms = performance.now() - started;
      assert.equal(got.end.type, 'done');
      assert.deepEqual(got.tokens, want.tokens);
      // FIFO behind the hog (and its preempted sequences, which used to go first) would
      // finish the victim after most of the hog's 51,200 tokens.
      assert.ok(hogDone < 32, `the victim finished after ${hogDone} of the hog's requests (${ms.toFixed(0)} ms)`);
      hog.close();
      victim.close();
      await waitFor(() => daemon.service.scheduler.stats.running === 0, 'the hog\'s requests to be cancelled');
    });
  });

  describe('small limits', () => {
    let daemon: Daemon;
    let ws: string;
    before(async () => {
      daemon = await start(fx.model, {
        adapters: fx.adapters.slice(0, 1),
        engine: { ...ENGINE, kvCacheTokens: 1 << 16 },
        server: { port: 0, maxBodyBytes: 4096, maxBufferedBytes: 16 << 10 },
      });
      ws = `ws://127.0.0.1:${daemon.server.port}/v1/stream`;
    });
    after(() => daemon.close());

    test('8: a frame over the limit closes its connection with 1009 after a pause; its requests end, later frames are ignored', async () => {
      const vocab = daemon.engine.info.vocabSize;
      const c = await StreamClient.open(ws);
      c.send({ type: 'generate', id: 'long', prompt: cases(vocab, [null], 1)[0].prompt, max_tokens: 200, temperature: 1, seed: 3, ignore_eos: true });
      assert.equal((await c.next((f) => f.id === 'long')).type, 'token');
      const t0 = performance.now();
      c.send({ type: 'generate', id: 'big', prompt: 'x'.repeat(6000) });
      c.send({ type: 'generate', id: 'after', prompt: [3, 4], max_tokens: 2 });
      const closed = await c.closed;
      const ms = performance.now() - t0;
      assert.equal(closed.code, 1009);
      assert.match(closed.reason, /limit is 4096/);
      assert.ok(ms >= 40, `closed after ${ms.toFixed(1)} ms (the cut-off waits 50)`);
      assert.ok(!c.frames.some((f) => f.id === 'after' || f.id === 'big'), 'frames after the oversized one were not read');
      assert.ok(!c.frames.some((f) => f.id === 'long' && f.type === 'done'), 'the running request did not finish');
      await waitFor(() => daemon.service.scheduler.stats.running === 0 && daemon.service.scheduler.stats.waiting === 0, 'the cut-off connection\'s request to be cancelled');
    });

    test('4: a client that stops reading is cut off with 1008 after whole frames; others are not slowed', { timeout: 30_000 }, async () => {
      const vocab = daemon.engine.info.vocabSize;
      const vcases = cases(vocab, [null, 'law'], 6);
      const refs: { tokens: number[] }[] = [];
      for (const c of vcases) refs.push(await expected.of(c));
      const slow = await StreamClient.open(ws);
      slow.socket.pause();
      // Loopback kernel buffers take ~4 MB a reader never reads before the server's own
      // buffer grows at all: 256 streams of 100 tokens, each frame carrying a 250-character
      // id, overflow them.
      for (let i = 0; i < 256; i++) {
        slow.send({ type: 'generate', id: `s${i}-`.padEnd(250, 'x'), prompt: cases(vocab, [null], 1)[0].prompt, max_tokens: 100, temperature: 1, seed: i, ignore_eos: true });
      }
      // Meanwhile another client's requests run and give their exact outputs.
      const victim = await StreamClient.open(ws);
      const got = await Promise.all(vcases.map((c, i) => run(victim, `v${i}`, c)));
      got.forEach((g, i) => assert.deepEqual(g.tokens, refs[i].tokens, `victim request ${i}`));
      // The slow client's requests are cancelled once its unsent bytes pass the budget.
      await waitFor(() => daemon.service.scheduler.stats.running === 0 && daemon.service.scheduler.stats.waiting === 0, 'the slow client\'s requests to end', 15_000);
      slow.socket.resume();
      const closed = await slow.closed;
      assert.equal(closed.code, 1008);
      assert.match(closed.reason, /not reading/);
      // Every frame it did get is whole, and each stream is a gap-free prefix.
      const next = new Map<string, number>();
      for (const f of slow.frames) {
        if (f.type !== 'token') continue;
        assert.equal(f.index, next.get(f.id!) ?? 0, `stream ${f.id}`);
        next.set(f.id!, (f.index as number) + 1);
      }
      assert.ok(next.size > 0, 'the slow client got some frames first');
      victim.close();
    });
  });

  describe('long prompts (the embedded model: it has a tokenizer)', () => {
    const embedded = join(repoRoot(), 'models', 'default');
    const text = 'the quick brown fox jumps over the lazy dog. '.repeat(7_000); // ~300 KB

    test('5: long prompts within the byte bound are tokenized off the event loop', { timeout: 60_000 }, async () => {
      const daemon = await start(embedded, { server: { port: 0, maxBodyBytes: 4 << 20 }, maxPromptBytes: 4 << 20 });
      try {
        const base = `http://127.0.0.1:${daemon.server.port}`;
        const order: string[] = [];
        const big = [0, 1, 2].map((i) =>
          post(base, '/v1/completions', { prompt: text, max_tokens: 1 }).then(async (r) => {
            order.push(`big${i}`);
            assert.equal(r.status, 400);
            assert.match(await r.text(), /prompt has \d+ tokens; the model's context is 256/);
          }),
        );
        // Each big prompt takes the tokenizer a third of a second or more; a small request meanwhile is answered at once.
        await new Promise((r) => setTimeout(r, 50));
        const small = await post(base, '/v1/completions', { prompt: 'rot13: abc\n=', max_tokens: 2, temperature: 0 });
        order.push('small');
        assert.equal(small.status, 200);
        await Promise.all(big);
        assert.equal(order[0], 'small', `answered in the order ${order.join(', ')}`);
      } finally {
        await daemon.close();
      }
    });

    test('5: by default a prompt the context could never hold is refused before any tokenization', async () => {
      const daemon = await start(embedded);
      try {
        const started = performance.now();
        const r = await post(`http://127.0.0.1:${daemon.server.port}`, '/v1/completions', { prompt: text, max_tokens: 1 });
        assert.equal(r.status, 400);
        assert.match(await r.text(), /315000 bytes of text; at most 65536/);
        assert.ok(performance.now() - started < 500);
      } finally {
        await daemon.close();
      }
    });
  });

  describe('adapter directories a client names', () => {
    let daemon: Daemon;
    let base: string;
    const root = tempDir('ew-hostile-adapters-');
    const bad = (name: string, cfg: (p: string) => void) => {
      const dir = join(root, name);
      mkdirSync(dir);
      cfg(join(dir, 'expert_cfg.json'));
      return dir;
    };
    before(async () => {
      daemon = await start(fx.model);
      base = `http://127.0.0.1:${daemon.server.port}`;
    });
    after(() => daemon.close());

    test('6: a FIFO, a device or a secret file is refused fast, names the file, quotes nothing, and never stalls generation', { timeout: 20_000 }, async () => {
      const fifos = [0, 1, 2, 3].map((i) => bad(`fifo${i}`, (p) => execFileSync('mkfifo', [p])));
      const zero = bad('zero', (p) => symlinkSync('/dev/zero', p));
      const secret = bad('secret', (p) => writeFileSync(p, 'root:x:0:0:root:/root:/bin/bash\n'));
      const huge = bad('huge', (p) => writeFileSync(p, `{"experts": {}, "pad": "${'x'.repeat(2 << 20)}"}`));
      const started = performance.now();
      const answers = await Promise.all(
        [...fifos, zero, secret, huge].map((dir, i) => post(base, '/v1/adapters', { name: `bad${i}`, path: dir }).then(async (r) => ({ status: r.status, body: await r.text() }))),
      );
      for (const a of answers) {
        assert.equal(a.status, 400, a.body);
        assert.match(a.body, /expert_cfg\.json/);
        assert.ok(!a.body.includes('root:'), a.body);
      }
      assert.match(answers[0].body, /not a regular file/);
      assert.match(answers[4].body, /not a regular file/);
      assert.match(answers[6].body, /more than the 1048576/);
      assert.ok(performance.now() - started < 5000);
      // Generation was never held up.
      const c = await StreamClient.open(`ws://127.0.0.1:${daemon.server.port}/v1/stream`);
      const r = await c.generate({ id: 'g', prompt: [3, 4, 5], max_tokens: 4, temperature: 0 });
      assert.equal(r.end.type, 'done');
      c.close();
    });
  });

  describe('the listening socket', () => {
    test('7: a second daemon on a port already served fails to start, saying the address is in use', async () => {
      const first = await start(fx.model);
      try {
        await assert.rejects(start(fx.model, { server: { port: first.server.port } }), /address in use/);
        // The first one still answers every request.
        for (let i = 0; i < 5; i++) assert.equal((await fetch(`http://127.0.0.1:${first.server.port}/health`)).status, 200);
      } finally {
        await first.close();
      }
    });

    test('8: beyond loopback without an admin token, the admin routes are closed (and open on request)', async () => {
      const events: string[] = [];
      const d = await start(fx.model, { server: { host: '0.0.0.0', port: 0, onEvent: (e) => events.push(e) } });
      try {
        const r = await fetch(`http://127.0.0.1:${d.server.port}/v1/adapters`);
        assert.equal(r.status, 403);
        assert.match(await r.text(), /--admin-token/);
        assert.deepEqual(events, ['admin_routes_closed']);
        assert.equal((await fetch(`http://127.0.0.1:${d.server.port}/health`)).status, 200);
      } finally {
        await d.close();
      }
      const open = await start(fx.model, { server: { host: '0.0.0.0', port: 0, allowOpenAdmin: true } });
      try {
        assert.equal((await fetch(`http://127.0.0.1:${open.server.port}/v1/adapters`)).status, 200);
      } finally {
        await open.close();
      }
    });
  });
});

