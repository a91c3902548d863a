// A load client in its own process (so its JSON parsing is not charged to the daemon
// it measures): opens ceil(streams / perConnection) WebSocket connections, starts all
// streams at once, and prints one JSON line with the wall time, the client's CPU time
// and every stream's tokens. `client: "lean"` (the default) reads frames with
// bench/lib/lean-ws.ts, `"ws"` with the `ws` package (what most Node clients use; about
// 5x the CPU per frame, taken from the engine on a machine this small). `transport: "sse"`
// streams each request as OpenAI clients do instead: POST /v1/completions with stream:
// true on a connection of its own (bench/lib/lean-sse.ts), text and the usage's count back.
//
//   node dist/bench/lib/stream-client.js '{"url":"ws://...","prompts":[[...]],"maxTokens":200,"perConnection":1,"adapters":[null]}'
import { setPriority } from 'node:os';

import { StreamClient, type Frame } from '../../test/helpers/ws-client.js';
import { postSse } from './lean-sse.js';
import { LeanWebSocket } from './lean-ws.js';

export interface StreamClientSpec {
  /** ws://host:port/v1/stream, or for SSE the daemon's http://host:port. */
  url: string;
  transport?: 'ws' | 'sse';
  prompts: number[][];
  /** Adapter name per stream (cycled); null: the base model. */
  adapters: (string | null)[];
  maxTokens: number;
  perConnection: number;
  client?: 'lean' | 'ws';
  /** Run at this nice value (19: the stand-in for a client on another machine). */
  nice?: number;
}

/** What the load needs of a connection: send a frame, route frames by request id. */
interface Conn {
  send(msg: object): void;
  onFrame(id: string, f: (frame: Frame) => void): void;
  close(): void;
}

async function leanConn(url: string): Promise<Conn> {
  const listeners = new Map<string, (f: Frame) => void>();
  const ws = await LeanWebSocket.open(url, {
    onText: (text) => {
      const f = JSON.parse(text) as Frame;
      if (f.id !== null) listeners.get(f.id)?.(f);
    },
  });
  return {
    send: (msg) => ws.send(JSON.stringify(msg)),
    onFrame: (id, f) => listeners.set(id, f),
    close: () => ws.close(),
  };
}

export interface StreamClientResult {
  wallMs: number;
  cpuMs: number;
  /** Each stream's token ids (WebSocket frames carry them; SSE chunks do not: empty there). */
  tokens: number[][];
  /** Each stream's text (SSE only: the WebSocket side checks ids and keeps its client lean). */
  texts?: string[];
  /** Each stream's generated tokens: the ids received, or SSE's usage.completion_tokens. */
  counts: number[];
  errors: string[];
}

/** Starts every stream at once (start(i, done)); the wall time and this process's CPU until the last is done. */
async function timeStreams(n: number, start: (i: number, done: () => void) => void): Promise<{ wallMs: number; cpuMs: number }> {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(Array.from({ length: n }, (_, i) => new Promise<void>((resolve) => start(i, resolve))));
  const wallMs = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  return { wallMs, cpuMs: (cpu.user + cpu.system) / 1000 };
}

/** Every stream as an OpenAI streaming completion, one connection each. */
async function sseMain(spec: StreamClientSpec): Promise<StreamClientResult> {
  const texts = spec.prompts.map(() => '');
  const counts = spec.prompts.map(() => 0);
  const errors: string[] = [];
  const timing = await timeStreams(spec.prompts.length, (i, done) => {
    const adapter = spec.adapters[i % spec.adapters.length];
    const body = { ...(adapter ? { model: adapter } : {}), prompt: spec.prompts[i], max_tokens: spec.maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true } };
    postSse(`${spec.url}/v1/completions`, body, {
      onEvent: (data) => {
        if (data === '[DONE]') return;
        const chunk = JSON.parse(data) as { choices?: { text?: string }[]; usage?: { completion_tokens: number }; error?: { message: string } };
        if (chunk.error) errors.push(`s${i}: ${chunk.error.message}`);
        texts[i] += chunk.choices?.[0]?.text ?? '';
        if (chunk.usage) counts[i] = chunk.usage.completion_tokens;
      },
      onEnd: (err) => {
        if (err) errors.push(`s${i}: ${err.message}`);
        done();
      },
    });
  });
  return { ...timing, tokens: spec.prompts.map(() => []), texts, counts, errors };
}

async function main(spec: StreamClientSpec): Promise<StreamClientResult> {
  if (spec.nice) setPriority(0, spec.nice);
  if (spec.transport === 'sse') return sseMain(spec);
  const n = spec.prompts.length;
  const open = (spec.client ?? 'lean') === 'lean' ? leanConn : (url: string): Promise<Conn> => StreamClient.open(url);
  const conns = await Promise.all(Array.from({ length: Math.ceil(n / spec.perConnection) }, () => open(spec.url)));
  const tokens: number[][] = spec.prompts.map(() => []);
  const errors: string[] = [];
  const timing = await timeStreams(n, (i, done) => {
    const c = conns[Math.floor(i / spec.perConnection)];
    const id = `s${i}`;
    c.onFrame(id, (f: Frame) => {
      if (f.type === 'token') tokens[i].push(f.token as number);
      else {
        if (f.type === 'error') errors.push(`${id}: ${String(f.code)} ${String(f.message)}`);
        done();
      }
    });
    c.send({ type: 'generate', id, adapter: spec.adapters[i % spec.adapters.length], prompt: spec.prompts[i], max_tokens: spec.maxTokens, temperature: 0 });
  });
  for (const c of conns) c.close();
  return { ...timing, tokens, counts: tokens.map((t) => t.length), errors };
}

const arg = process.argv[2];
if (arg) {
  main(JSON.parse(arg) as StreamClientSpec).then(
    (r) => {
      // Exit once the line is out (a pipe may take a large one in several writes).
      process.stdout.write(JSON.stringify(r) + '\n', () => process.exit(0));
    },
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
}
