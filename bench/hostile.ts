// Victim beside a hostile client: the daemon (embedded model, its own process) serves
// a victim that sends one short greedy request at a time, alone and beside each kind
// of hostile client, in alternating phases so the ratios see the same machine state:
//   slow-reader  a connection that never reads, with 256 long streams (reconnects when cut)
//   hog          256 long requests kept in flight on one connection
//   big-prompts  1 MB text prompts sent back to back over HTTP
//   oversized-frames  500 KB WebSocket frames (over the 320 KiB limit), a new connection after each cut-off
// Reports the victim's TTFT median / p99 per phase and as a ratio to the alone phases
// around it. The hostile client runs on a worker thread (bench/hostile-client.ts), the
// victim on the main thread. Loopback only; bounded in time (phases of --seconds) and count.
// Every kind runs twice: the hostile thread at normal priority, and at nice 19, which
// stands for an attacker on another machine: its own work (building 1 MB bodies, parsing
// 50,000 frames a second) then stops competing for the daemon's cores, while the kernel's
// loopback TCP work and everything the daemon does for it still does.
//
//   npm run bench:hostile -- [--seconds 4] [--rounds 2] [--serve="--token-budget 64"] [--kinds hog,big-prompts]
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';

import { repoRoot } from '../test/helpers/paths.js';
import { StreamClient } from '../test/helpers/ws-client.js';

type Kind = 'slow-reader' | 'hog' | 'big-prompts' | 'oversized-frames';
/** 'alone', or a kind, with ' (nice 19)' when the hostile thread ran at the lowest priority. */
type Phase = string;

function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length === 0 ? NaN : s[Math.min(s.length - 1, Math.floor(q * s.length))];
}

async function startServer(extra: string[]): Promise<{ url: string; stop(): Promise<void> }> {
  const child = spawn(process.execPath, [join(repoRoot(), 'bin', 'expertweave.js'), 'serve', '--port', '0', '--device', 'cpu', ...extra], { stdio: ['ignore', 'pipe', 'ignore'] });
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

/** One hostile client for the length of a phase, on a worker thread (so its work never delays the victim's clock). */
function hostile(kind: Kind, url: string, nice: number): { stop(): Promise<void> } {
  const w = new Worker(new URL('./hostile-client.js', import.meta.url), { workerData: { kind, url, nice } });
  w.on('error', (err) => console.error(`hostile ${kind}: ${err.message}`));
  return { stop: () => w.terminate().then(() => undefined) };
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
  const { values } = parseArgs({ options: { seconds: { type: 'string', default: '4' }, rounds: { type: 'string', default: '2' }, serve: { type: 'string', default: '' }, kinds: { type: 'string', default: 'slow-reader,hog,big-prompts,oversized-frames' } } });
  const seconds = Number(values.seconds);
  const rounds = Number(values.rounds);
  const serveArgs = values.serve.split(' ').filter((a) => a !== '');
  const server = await startServer(serveArgs);
  const samples = new Map<Phase, number[][]>();
  const known: Kind[] = ['slow-reader', 'hog', 'big-prompts', 'oversized-frames'];
  const kinds = values.kinds.split(',') as Kind[];
  for (const k of kinds) if (!known.includes(k)) throw new Error(`--kinds: unknown kind ${k} (known: ${known.join(', ')})`);
  const phases = kinds.flatMap((k) => [k, `${k} (nice 19)`]);
  try {
    const measure = async (phase: Phase) => {
      const [kind, niced] = [phase.split(' ')[0] as Kind, phase.endsWith('(nice 19)')];
      const h = phase === 'alone' ? undefined : hostile(kind, server.url, niced ? 19 : 0);
      await new Promise((r) => setTimeout(r, 500)); // let the hostile client get going
      const t = await victim(server.url, seconds);
      await h?.stop();
      await new Promise((r) => setTimeout(r, 1500)); // and let its work drain
      if (!samples.has(phase)) samples.set(phase, []);
      samples.get(phase)!.push(t);
      console.log(`${phase.padEnd(24)} n=${t.length} TTFT p50 ${quantile(t, 0.5).toFixed(1)} ms p99 ${quantile(t, 0.99).toFixed(1)} ms`);
    };
    for (let r = 0; r < rounds; r++) {
      for (const p of phases) {
        await measure('alone');
        await measure(p);
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
  const rows = ['alone', ...phases].map((p) => {
    const t = all(p);
    const m = quantile(t, 0.5);
    const q = quantile(t, 0.99);
    return `| ${p} | ${t.length} | ${m.toFixed(1)} | ${q.toFixed(1)} | ${(m / a50).toFixed(2)}x | ${(q / a99).toFixed(2)}x |`;
  });
  const spread = samples.get('alone')!.map((t) => quantile(t, 0.5).toFixed(1)).join(', ');
  const md = [
    '# Victim TTFT beside a hostile client',
    '',
    `Machine: ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}; ${new Date().toISOString().slice(0, 10)}; \`npm run bench:hostile -- --seconds ${seconds} --rounds ${rounds}${serveArgs.length ? ` --serve="${serveArgs.join(' ')}"` : ''}\`.`,
    `Daemon: \`expertweave serve ${serveArgs.join(' ')}\` (embedded model, 4 adapters) in its own process; victim: one greedy \`rot13\` request`,
    '(6 tokens) at a time over WebSocket; phases alternate alone / hostile, ratios against all alone phases.',
    'Each hostile kind also runs at nice 19: the stand-in for an attacker on another machine, whose own CPU work',
    '(building 1 MB bodies, parsing every frame) does not compete for these 2 cores; the loopback TCP work still does.',
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
  if (kinds.length === known.length) writeFileSync(join(dir, serveArgs.length ? 'hostile-tuned.md' : 'hostile.md'), md);
}

await main();
