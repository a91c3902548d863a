// A load client in its own process (so its JSON parsing is not charged to the daemon
// it measures): opens ceil(streams / perConnection) WebSocket connections, starts all
// streams at once, and prints one JSON line with the wall time, the client's CPU time
// and every stream's tokens.
//
//   node dist/bench/lib/stream-client.js '{"url":"ws://...","prompts":[[...]],"maxTokens":200,"perConnection":1,"adapters":[null]}'
import { StreamClient, type Frame } from '../../test/helpers/ws-client.js';

export interface StreamClientSpec {
  url: string;
  prompts: number[][];
  /** Adapter name per stream (cycled); null: the base model. */
  adapters: (string | null)[];
  maxTokens: number;
  perConnection: number;
}

export interface StreamClientResult {
  wallMs: number;
  cpuMs: number;
  tokens: number[][];
  errors: string[];
}

async function main(spec: StreamClientSpec): Promise<StreamClientResult> {
  const n = spec.prompts.length;
  const conns = await Promise.all(Array.from({ length: Math.ceil(n / spec.perConnection) }, () => StreamClient.open(spec.url)));
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
      process.stdout.write(JSON.stringify(r) + '\n');
      process.exit(0);
    },
    (e) => {
      console.error(e);
      process.exit(1);
    },
  );
}
