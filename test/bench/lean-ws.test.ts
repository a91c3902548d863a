// The benchmarks' lean WebSocket client: its frame parser on every split of a byte
// stream (lengths at the 7/16/64-bit boundaries, fragmented messages, control frames),
// and the client against the real daemon, frame for frame the same as the `ws` package.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, test } from 'node:test';

import { FrameParser, LeanWebSocket, clientFrame } from '../../bench/lib/lean-ws.js';
import { startDaemon } from '../../lib/server/daemon.js';
import { withAddon } from '../helpers/engine.js';
import { repoRoot } from '../helpers/paths.js';
import { StreamClient, type Frame } from '../helpers/ws-client.js';

/** A server frame (unmasked). */
function serverFrame(opcode: number, payload: Buffer, fin = true): Buffer {
  const n = payload.length;
  const head = n < 126 ? Buffer.from([0, n]) : n < 65536 ? Buffer.from([0, 126, n >> 8, n & 255]) : Buffer.concat([Buffer.from([0, 127]), Buffer.alloc(8)]);
  if (n >= 65536) head.writeBigUInt64BE(BigInt(n), 2);
  head[0] = (fin ? 0x80 : 0) | opcode;
  return Buffer.concat([head, payload]);
}

function parseAll(chunks: Buffer[]): [number, string][] {
  const got: [number, string][] = [];
  const p = new FrameParser((op, payload) => got.push([op, payload.toString('latin1')]));
  for (const c of chunks) p.push(c);
  return got;
}

describe('lean-ws frame parser', () => {
  const texts = [0, 1, 125, 126, 127, 65535, 65536, 70000].map((n) => 'abcdefghij'.repeat(Math.ceil(n / 10) + 1).slice(0, n));
  const stream = Buffer.concat([
    ...texts.map((t) => serverFrame(1, Buffer.from(t, 'latin1'))),
    serverFrame(1, Buffer.from('frag-', 'latin1'), false),
    serverFrame(9, Buffer.from('ping', 'latin1')), // a control frame between fragments
    serverFrame(0, Buffer.from('ment', 'latin1'), true),
    serverFrame(8, Buffer.from([0x03, 0xe8])),
  ]);
  const want: [number, string][] = [...texts.map((t) => [1, t] as [number, string]), [9, 'ping'], [1, 'frag-ment'], [8, '\x03\xe8']];

  test('one read, and every two-way split of the stream', () => {
    assert.deepEqual(parseAll([stream]), want);
    // Splits near every frame boundary and inside every header (where a parser goes wrong).
    const cuts = new Set<number>();
    let at = 0;
    for (const t of texts) {
      const len = t.length;
      for (let d = 0; d <= 12; d++) cuts.add(Math.min(stream.length - 1, at + d));
      at += (len < 126 ? 2 : len < 65536 ? 4 : 10) + len;
      for (let d = -2; d <= 2; d++) cuts.add(Math.max(1, Math.min(stream.length - 1, at + d)));
    }
    for (const c of cuts) assert.deepEqual(parseAll([stream.subarray(0, c), stream.subarray(c)]), want, `split at ${c}`);
  });

  test('byte by byte', () => {
    const small = Buffer.concat([serverFrame(1, Buffer.from('{"a":1}')), serverFrame(1, Buffer.alloc(300, 0x61))]);
    assert.deepEqual(parseAll([...small].map((b) => Buffer.from([b]))), [[1, '{"a":1}'], [1, 'a'.repeat(300)]]);
  });

  test('a masked server frame is refused', () => {
    const f = serverFrame(1, Buffer.from('x'));
    f[1] |= 0x80;
    assert.throws(() => parseAll([Buffer.concat([f, Buffer.alloc(4)])]), /masked/);
  });

  test('client frames are masked and unmask to the payload', () => {
    for (const n of [0, 5, 125, 126, 65535, 65536]) {
      const payload = Buffer.alloc(n, 0x7a);
      const f = clientFrame(1, payload);
      assert.equal(f[0], 0x81);
      assert.ok(f[1] & 0x80);
      const len7 = f[1] & 0x7f;
      const head = len7 < 126 ? 2 : len7 === 126 ? 4 : 10;
      const len = len7 < 126 ? len7 : len7 === 126 ? f.readUInt16BE(2) : Number(f.readBigUInt64BE(2));
      assert.equal(len, n);
      const mask = f.subarray(head, head + 4);
      const body = Buffer.from(f.subarray(head + 4).map((b, i) => b ^ mask[i & 3]));
      assert.deepEqual(body, payload);
    }
  });
});

const live = withAddon();
live.describe('lean-ws against the daemon', () => {
  live.test('the same frames as the ws package, for concurrent streams on one connection', async () => {
    const d = await startDaemon({ modelDir: join(repoRoot(), 'models', 'default'), engine: { device: 'cpu', threads: 2 }, server: { port: 0, maxBodyBytes: 256 << 10 } });
    try {
      const url = `ws://127.0.0.1:${d.server.port}/v1/stream`;
      const prompts = ['The law of the sea', 'def main():', 'Question: ' + 'why? '.repeat(30)];
      const viaWs = await StreamClient.open(url);
      const want = await Promise.all(prompts.map(async (prompt, i) => {
        const frames: Frame[] = [];
        await new Promise<void>((resolve) => {
          viaWs.onFrame(`r${i}`, (f) => (frames.push(f), f.type !== 'token' && resolve()));
          viaWs.send({ type: 'generate', id: `r${i}`, prompt, max_tokens: 40, temperature: 0 });
        });
        return frames;
      }));
      viaWs.close();
      const got: Frame[][] = prompts.map(() => []);
      let closed = -1;
      const ended = prompts.map(() => {
        let resolve = () => {};
        return { promise: new Promise<void>((r) => (resolve = r)), resolve: () => resolve() };
      });
      const lean = await LeanWebSocket.open(url, {
        onText: (text) => {
          const f = JSON.parse(text) as Frame;
          const i = Number(String(f.id).slice(1));
          got[i].push(f);
          if (f.type !== 'token') ended[i].resolve();
        },
        onClose: (code) => (closed = code),
      });
      prompts.forEach((prompt, i) => lean.send(JSON.stringify({ type: 'generate', id: `r${i}`, prompt, max_tokens: 40, temperature: 0 })));
      await Promise.all(ended.map((e) => e.promise));
      assert.deepEqual(got, want);
      assert.ok(want.every((f) => f.length > 1 && f.at(-1)!.type === 'done'));
      // A frame over the daemon's limit (its body limit): it closes with 1009, which the client reports.
      lean.send(JSON.stringify({ type: 'generate', id: 'big', prompt: 'y'.repeat(384 << 10) }));
      for (let i = 0; i < 100 && closed < 0; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal(closed, 1009);
    } finally {
      await d.close();
    }
  });
});
