// The benchmarks' lean SSE client: its response parser on every split of a byte stream
// (chunk sizes, chunks cut inside a character and inside an event's blank line,
// multi-line data), bodies without chunked framing, refusals; and against the real
// daemon, the same text and usage as the official openai SDK streaming the same requests.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test } from 'node:test';

import OpenAI from 'openai';

import { SseResponseParser, postSse } from '../../bench/lib/lean-sse.js';
import { startDaemon } from '../../lib/server/daemon.js';
import { withAddon } from '../helpers/engine.js';
import { repoRoot } from '../helpers/paths.js';

const EVENTS_TEXT = 'data: {"text":"héllo 世界"}\n\n: a comment line\ndata: line one\ndata: line two\n\ndata:no-space\n\ndata: [DONE]\n\n';
const WANT = ['{"text":"héllo 世界"}', 'line one\nline two', 'no-space', '[DONE]'];

/** The events text as a chunked HTTP response, in chunks of the given sizes (cycled). */
function chunkedResponse(sizes: number[]): Buffer {
  const body = Buffer.from(EVENTS_TEXT);
  const parts = [Buffer.from('HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n')];
  for (let at = 0, k = 0; at < body.length; k++) {
    const n = Math.min(sizes[k % sizes.length], body.length - at);
    parts.push(Buffer.from(`${n.toString(16)}\r\n`), body.subarray(at, at + n), Buffer.from('\r\n'));
    at += n;
  }
  parts.push(Buffer.from('0\r\n\r\n'));
  return Buffer.concat(parts);
}

function parse(reads: Buffer[], closeAfter = false): { events: string[]; ended: boolean; err?: Error } {
  const out: { events: string[]; ended: boolean; err?: Error } = { events: [], ended: false };
  const p = new SseResponseParser({ onEvent: (d) => out.events.push(d), onEnd: (err) => ((out.ended = true), (out.err = err)) });
  for (const r of reads) p.push(r);
  if (closeAfter) p.close();
  return out;
}

describe('lean-sse response parser', () => {
  // Chunks of 1 byte, of 7 (cutting 'é', '世' and the blank lines), and all in one.
  for (const sizes of [[1], [7], [3, 11, 2], [1 << 20]]) {
    test(`chunks of ${sizes.join('/')} bytes: one read, every two-way split, byte by byte`, () => {
      const stream = chunkedResponse(sizes);
      assert.deepEqual(parse([stream]), { events: WANT, ended: true, err: undefined });
      for (let cut = 1; cut < stream.length; cut++) {
        assert.deepEqual(parse([stream.subarray(0, cut), stream.subarray(cut)]).events, WANT, `split at ${cut}`);
      }
      const bytes = [...stream].map((b) => Buffer.from([b]));
      assert.deepEqual(parse(bytes), { events: WANT, ended: true, err: undefined });
    });
  }

  test('a body without chunked framing ends with the connection; a cut chunked one is an error', () => {
    const plain = Buffer.concat([Buffer.from('HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n'), Buffer.from(EVENTS_TEXT)]);
    assert.deepEqual(parse([plain], true), { events: WANT, ended: true, err: undefined });
    const stream = chunkedResponse([7]);
    const cut = parse([stream.subarray(0, stream.length - 20)], true);
    assert.equal(cut.ended, true);
    assert.match(String(cut.err?.message), /closed before the response ended/);
  });

  test('a refusal ends with an error naming the status and the body', () => {
    const r = parse([Buffer.from('HTTP/1.1 400 Bad Request\r\nContent-Length: 24\r\n\r\n{"error":{"message":"x"}}')]);
    assert.equal(r.ended, true);
    assert.deepEqual(r.events, []);
    assert.match(String(r.err?.message), /400 Bad Request.*"message":"x"/);
  });
});

const live = withAddon();
live.describe('lean-sse against the daemon', () => {
  live.test('the same text and usage as the openai SDK, for concurrent streams; a refused request is an error', async () => {
    const d = await startDaemon({ modelDir: join(repoRoot(), 'models', 'default'), engine: { device: 'cpu', threads: 2 }, server: { port: 0 } });
    try {
      const base = `http://127.0.0.1:${d.server.port}`;
      const prompts = ['The law of the sea', 'def main():', 'Question: ' + 'why? '.repeat(30)];
      const request = (prompt: string) => ({ prompt, max_tokens: 40, temperature: 0, stream: true as const, stream_options: { include_usage: true } });
      const sdk = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'none' });
      const want = await Promise.all(
        prompts.map(async (prompt) => {
          let text = '';
          let tokens = -1;
          for await (const chunk of await sdk.completions.create({ model: 'default', ...request(prompt) })) {
            text += chunk.choices[0]?.text ?? '';
            if (chunk.usage) tokens = chunk.usage.completion_tokens;
          }
          return { text, tokens };
        }),
      );
      const got = await Promise.all(
        prompts.map(
          (prompt) =>
            new Promise<{ text: string; tokens: number; done: boolean }>((resolve, reject) => {
              const r = { text: '', tokens: -1, done: false };
              postSse(`${base}/v1/completions`, request(prompt), {
                onEvent: (data) => {
                  if (data === '[DONE]') return void (r.done = true);
                  const chunk = JSON.parse(data) as { choices: { text: string }[]; usage?: { completion_tokens: number } };
                  r.text += chunk.choices[0]?.text ?? '';
                  if (chunk.usage) r.tokens = chunk.usage.completion_tokens;
                },
                onEnd: (err) => (err ? reject(err) : resolve(r)),
              });
            }),
        ),
      );
      assert.deepEqual(got.map(({ text, tokens }) => ({ text, tokens })), want);
      assert.ok(got.every((r) => r.done && r.tokens > 0 && r.text.length > 0));
      const refused = await new Promise<Error | undefined>((resolve) => postSse(`${base}/v1/completions`, { prompt: 'x', max_tokens: 0, stream: true }, { onEvent: () => {}, onEnd: resolve }));
      assert.match(String(refused?.message), /^lean-sse: HTTP\/1\.1 400/);
    } finally {
      await d.close();
    }
  });
});
