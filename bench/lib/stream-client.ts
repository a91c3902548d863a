// A load client in its own process (so its JSON parsing is not charged to the daemon
// it measures): opens ceil(streams / perConnection) WebSocket connections, starts all
// streams at once, and prints one JSON line with the wall time, the client's CPU time
// and every stream's tokens. `client: "lean"` (the default) reads frames with
// bench/lib/lean-ws.ts, `"ws"` with the `ws` package (what most Node clients use; about
// 5x the CPU per frame, taken from the engine on a machine this small).
//
//   node dist/bench/lib/stream-client.js '{"url":"ws://...","prompts":[[...]],"maxTokens":200,"perConnection":1,"adapters":[null]}'
import { setPriority } from 'node:os';

import { StreamClient, type Frame } from '../../test/helpers/ws-client.js';
import { LeanWebSocket } from './lean-ws.js';

export interface StreamClientSpec {
  url: string;
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
  tokens: number[][];
  errors: string[];
}

async function main(spec: StreamClientSpec): Promise<StreamClientResult> {
  if (spec.nice) setPriority(0, spec.nice);
  const n = spec.prompts.length;
  const open = (spec.client ?? 'lean') === 'lean' ? leanConn : (url: string): Promise<Conn> => StreamClient.open(url);
  const conns = await Promise.all(Array.from({ length: Math.ceil(n / spec.perConnection) }, () => open(spec.url)));
  const tokens: number[][] = spec.prompts.map(() => []);
  const errors: string[] = [];
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await Promise.all(
    spec.prompts.map(
      (prompt, i) =>
        new Promise<void>((resolve) => {
          const c = conns[Math.floor(i / spec.perConnection)];
          const id = `s${i}`;
          c.onFrame(id, (f: Frame) => {
            if (f.type === 'token') tokens[i].push(f.token as number);
            else {
              if (f.type === 'error') errors.push(`${id}: ${String(f.code)} ${String(f.message)}`);
              resolve();
            }
          });
          c.send({ type: 'generate', id, adapter: spec.adapters[i % spec.adapters.length], prompt, max_tokens: spec.maxTokens, temperature: 0 });
        }),
    ),
  );
  const wallMs = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  for (const c of conns) c.close();
  return { wallMs, cpuMs: (cpu.user + cpu.system) / 1000, tokens, errors };
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
