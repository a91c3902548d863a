// Victim beside a hostile client: the daemon (embedded model, its own process) serves
// a victim that sends one short greedy request at a time, alone and beside each kind
// of hostile client, in alternating phases so the ratios see the same machine state:
//   slow-reader  a connection that never reads, with 256 long streams (reconnects when cut)
//   hog          256 long requests kept in flight on one connection
//   big-prompts  1 MB text prompts sent back to back over HTTP
// Reports the victim's TTFT median / p99 per phase and as a ratio to the alone phases
// around it. Loopback only; bounded in time (phases of --seconds) and count.
//
//   npm run bench:hostile -- [--seconds 4] [--rounds 2]
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { repoRoot } from '../test/helpers/paths.js';
import { StreamClient } from '../test/helpers/ws-client.js';

type Phase = 'alone' | 'slow-reader' | 'hog' | 'big-prompts';

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

async function startServer(): Promise<{ url: string; stop(): Promise<void> }> {
  const child = spawn(process.execPath, [join(repoRoot(), 'bin', 'expertweave.js'), 'serve', '--port', '0', '--device', 'cpu'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (http:\/\/[\d.]+:\d+)/.exec(out);
      if (m) resolve(m[1]);
    });
    child.on('exit', (code) => reject(new Error(`serve exited with ${code}`)));
  });
  return {
    url,
    stop: () =>
      new Promise((resolve) => {
        child.on('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

/** One hostile client for the length of a phase; stop() ends it. */
function hostile(kind: Exclude<Phase, 'alone'>, url: string): { stop(): void } {
  let stopped = false;
  const ws = url.replace('http', 'ws') + '/v1/stream';
  const longRequest = (id: string) => ({ type: 'generate', id, adapter: null, prompt: 'rot13: the quick brown fox\n=', max_tokens: 200, temperature: 1, seed: 7, ignore_eos: true });
  if (kind === 'slow-reader') {
    let sock: Socket | undefined;
    const open = () => {
      if (stopped) return;
      // A raw WebSocket client that never reads after the handshake.
      sock = connect(Number(new URL(url).port), '127.0.0.1', () => {
        sock!.write('GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
        for (let i = 0; i < 256; i++) sock!.write(maskedTextFrame(JSON.stringify(longRequest(`s${i}`))));
        sock!.pause();
      });
      sock.on('error', () => {});
      sock.on('close', () => setTimeout(open, 10)); // cut off: come back
    };
    open();
    return { stop: () => ((stopped = true), sock?.destroy()) };
  }
  if (kind === 'hog') {
    let client: StreamClient | undefined;
    void StreamClient.open(ws).then((c) => {
      client = c;
      let n = 0;
      const submit = () => {
        if (stopped) return;
        const id = `h${n++}`;
        c.onFrame(id, (f) => {
          if (f.type !== 'token') submit();
        });
        c.send(longRequest(id));
      };
      for (let i = 0; i < 256; i++) submit();
    });
    return { stop: () => ((stopped = true), client?.close()) };
  }
  const body = JSON.stringify({ prompt: 'the quick brown fox jumps over the lazy dog. '.repeat(23_000), max_tokens: 1 });
  void (async () => {
    while (!stopped) await fetch(url + '/v1/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body }).then((r) => r.arrayBuffer(), () => undefined);
  })();
  return { stop: () => void (stopped = true) };
}

/** A client-to-server WebSocket text frame (masked, as clients must send). */
function maskedTextFrame(text: string): Buffer {
  const payload = Buffer.from(text);
  const header = payload.length < 126 ? Buffer.from([0x81, 0x80 | payload.length]) : Buffer.from([0x81, 0x80 | 126, payload.length >> 8, payload.length & 0xff]);
  const mask = Buffer.from([1, 2, 3, 4]);
  const masked = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
  return Buffer.concat([header, mask, masked]);
}

/** The victim: one short greedy request at a time for `seconds`; TTFT of each. */
async function victim(url: string, seconds: number): Promise<number[]> {
  const c = await StreamClient.open(url.replace('http', 'ws') + '/v1/stream');
  const ttft: number[] = [];
  const until = performance.now() + seconds * 1000;
  for (let n = 0; performance.now() < until && n < 2000; n++) {
    const id = `v${n}`;
    const t0 = performance.now();
    c.send({ type: 'generate', id, adapter: 'rot13', prompt: 'rot13: hello\n=', max_tokens: 6, temperature: 0 });
    const first = await c.next((f) => f.id === id);
    ttft.push(performance.now() - t0);
    if (first.type !== 'error') await c.next((f) => f.id === id && (f.type === 'done' || f.type === 'error'));
    c.frames.length = 0;
    await new Promise((r) => setTimeout(r, 10));
  }
  c.close();
  return ttft;
}

async function main(): Promise<void> {
  const { values } = parseArgs({ options: { seconds: { type: 'string', default: '4' }, rounds: { type: 'string', default: '2' } } });
  const seconds = Number(values.seconds);
  const rounds = Number(values.rounds);
  const server = await startServer();
  const samples = new Map<Phase, number[][]>();
  const kinds: Exclude<Phase, 'alone'>[] = ['slow-reader', 'hog', 'big-prompts'];
  try {
    const measure = async (phase: Phase) => {
      const h = phase === 'alone' ? undefined : hostile(phase, server.url);
      await new Promise((r) => setTimeout(r, 500)); // let the hostile client get going
      const t = await victim(server.url, seconds);
      h?.stop();
      await new Promise((r) => setTimeout(r, 1500)); // and let its work drain
      if (!samples.has(phase)) samples.set(phase, []);
      samples.get(phase)!.push(t);
      console.log(`${phase.padEnd(12)} n=${t.length} TTFT p50 ${quantile(t, 0.5).toFixed(1)} ms p99 ${quantile(t, 0.99).toFixed(1)} ms`);
    };
    for (let r = 0; r < rounds; r++) {
      for (const k of kinds) {
        await measure('alone');
        await measure(k);
      }
    }
    await measure('alone');
  } finally {
    await server.stop();
  }
  const all = (p: Phase) => samples.get(p)!.flat();
  const alone = all('alone');
  const a50 = quantile(alone, 0.5);
  const a99 = quantile(alone, 0.99);
  const rows = (['alone', ...kinds] as Phase[]).map((p) => {
    const t = all(p);
    const m = quantile(t, 0.5);
    const q = quantile(t, 0.99);
    return `| ${p} | ${t.length} | ${m.toFixed(1)} | ${q.toFixed(1)} | ${(m / a50).toFixed(2)}x | ${(q / a99).toFixed(2)}x |`;
  });
  const spread = samples.get('alone')!.map((t) => quantile(t, 0.5).toFixed(1)).join(', ');
  const md = [
    '# Victim TTFT beside a hostile client',
    '',
    `Machine: ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}; ${new Date().toISOString().slice(0, 10)}; \`npm run bench:hostile -- --seconds ${seconds} --rounds ${rounds}\`.`,
    'Daemon: `expertweave serve` (embedded model, 4 adapters, defaults) in its own process; victim: one greedy `rot13` request',
    '(6 tokens) at a time over WebSocket; phases alternate alone / hostile, ratios against all alone phases.',
    `Alone-phase medians: ${spread} ms.`,
    '',
    '| phase | requests | TTFT p50 ms | TTFT p99 ms | p50 vs alone | p99 vs alone |',
    '| --- | --- | --- | --- | --- | --- |',
    ...rows,
    '',
  ].join('\n');
  console.log('\n' + md);
  const dir = join(repoRoot(), 'bench', 'results');
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'hostile.md'), md);
}

await main();
