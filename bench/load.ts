// End-to-end load benchmark: drives the daemon over WebSocket with a mixed
// multi-adapter workload at rising request rates (open-loop Poisson arrivals,
// bounded count and time per rate) and reports throughput, TTFT and TPOT
// (median, p99) per rate, to stdout and bench/results/load.md.
// Prompt lengths follow the ESFT evaluation prompts (../shared/data/esft/eval),
// truncated to the model's context; prompts are sent as token ids.
//
//   npm run bench:load -- [--model DIR] [--rates 2,4,8,16] [--requests 48] [--seconds 30] [--max-tokens 32]
// Without --model it uses models/default with adapters/ when present, else a
// generated 'tiny' random fixture with adapters fitted from the ESFT selections.
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { startDaemon } from '../lib/server/daemon.js';
import { TextTokenizer } from '../lib/tokenizer/tokenizer.js';
import { fitSelection, loadEsftSelection, makeAdapter } from '../tools/fixtures/adapter.js';
import { buildConfig, isPresetName } from '../tools/fixtures/config.js';
import { makeModel } from '../tools/fixtures/model.js';
import { Rng } from '../tools/fixtures/prng.js';
import { StreamClient } from '../test/helpers/ws-client.js';
import { repoRoot } from '../test/helpers/paths.js';
import { tempDir } from '../test/helpers/tmp.js';
import { ESFT_TASKS } from './lib/bench-model.js';
import { quantile } from './lib/stats.js';
import { evalPrompts } from './lib/workload.js';

function setup(modelArg: string | undefined, preset: string): { model: string; adapters: { name: string; dir: string }[] } {
  const root = repoRoot();
  const model = modelArg ?? join(root, 'models', 'default');
  if (modelArg || existsSync(join(model, 'config.json'))) {
    const adir = join(root, 'adapters');
    const adapters = !modelArg && existsSync(adir)
      ? readdirSync(adir).filter((n) => existsSync(join(adir, n, 'expert_cfg.json'))).map((name) => ({ name, dir: join(adir, name) }))
      : [];
    return { model, adapters };
  }
  if (!isPresetName(preset)) throw new Error(`unknown preset ${preset}`);
  const dir = tempDir('ew-load-');
  const cfg = buildConfig(preset);
  makeModel(join(dir, 'model'), cfg, { dtype: 'f32', seed: 1 });
  const adapters = ESFT_TASKS.map((task, i) => {
    const out = join(dir, task);
    makeAdapter(out, join(dir, 'model'), fitSelection(cfg, loadEsftSelection(task)), { seed: 100 + i });
    return { name: task, dir: out };
  });
  return { model: join(dir, 'model'), adapters };
}

interface Result {
  ttftMs: number;
  tpotMs: number | undefined;
  tokens: number;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      model: { type: 'string' },
      preset: { type: 'string', default: 'tiny' },
      rates: { type: 'string', default: '2,4,8,16' },
      requests: { type: 'string', default: '48' },
      seconds: { type: 'string', default: '30' },
      'max-tokens': { type: 'string', default: '32' },
      threads: { type: 'string', default: '2' },
    },
  });
  const rates = values.rates!.split(',').map(Number);
  const perRate = Number(values.requests);
  const seconds = Number(values.seconds);
  const maxTokens = Number(values['max-tokens']);
  const { model, adapters } = setup(values.model, values.preset!);
  const daemon = await startDaemon({ modelDir: model, adapters, engine: { threads: Number(values.threads), maxAdapters: 16, maxAdapterSlots: 64 }, server: { port: 0 } });
  const info = daemon.engine.info;
  const tokenizer = await TextTokenizer.load(model);
  const maxPrompt = Math.max(1, Math.min(512, info.maxPositionEmbeddings - maxTokens - 1));
  // Token ids: the tokenizer's when the model has one, else the prompt's bytes folded into the vocabulary.
  const prompts = evalPrompts().map(({ bytes }) => bytes.toString('utf8')).map((p) =>
    (tokenizer ? tokenizer.encode(p) : [...Buffer.from(p, 'utf8')].map((b) => 2 + (b % (info.vocabSize - 2)))).slice(0, maxPrompt),
  );
  const names: (string | null)[] = [null, ...adapters.map((a) => a.name)];
  const url = `ws://127.0.0.1:${daemon.server.port}/v1/stream`;
  const rng = new Rng(7);
  const rows: string[] = [];
  const header = '| rate (req/s) | done (>=1 token) | errors | wall s | output tok/s | TTFT p50 ms | TTFT p99 ms | TPOT p50 ms | TPOT p99 ms |';
  console.log(`model ${model} (${info.device}), adapters: ${adapters.map((a) => a.name).join(', ') || 'none'}, max_tokens ${maxTokens}`);
  console.log(header);
  for (const rate of rates) {
    const clients = await Promise.all([0, 1, 2, 3].map(() => StreamClient.open(url)));
    const results: Result[] = [];
    let errors = 0;
    const start = performance.now();
    const pending: Promise<void>[] = [];
    for (let i = 0; i < perRate && performance.now() - start < seconds * 1000; i++) {
      const c = clients[i % clients.length];
      const prompt = prompts[Math.floor(rng.uniform() * prompts.length)];
      const adapter = names[i % names.length];
      const id = `r${rate}-${i}`;
      const sent = performance.now();
      let first = 0;
      let last = 0;
      let n = 0;
      pending.push(
        new Promise<void>((resolve) => {
          c.onFrame(id, (f) => {
            if (f.type === 'token') {
              last = performance.now();
              if (n++ === 0) first = last;
            } else {
              if (f.type === 'error') errors++;
              else if (n > 0) results.push({ ttftMs: first - sent, tpotMs: n > 1 ? (last - first) / (n - 1) : undefined, tokens: n });
              resolve();
            }
          });
          c.send({ type: 'generate', id, adapter, prompt, max_tokens: maxTokens, temperature: 0 });
        }),
      );
      // Exponential gaps: a Poisson process of `rate` arrivals per second.
      await new Promise((r) => setTimeout(r, (-Math.log(1 - rng.uniform()) / rate) * 1000));
    }
    await Promise.all(pending);
    const wall = (performance.now() - start) / 1000;
    for (const c of clients) c.close();
    const tokens = results.reduce((s, r) => s + r.tokens, 0);
    const ttft = results.map((r) => r.ttftMs);
    const tpot = results.flatMap((r) => (r.tpotMs === undefined ? [] : [r.tpotMs]));
    const f = (x: number) => (Number.isNaN(x) ? 'n/a' : x.toFixed(1));
    const row = `| ${rate} | ${results.length} | ${errors} | ${wall.toFixed(1)} | ${(tokens / wall).toFixed(1)} | ${f(quantile(ttft, 0.5))} | ${f(quantile(ttft, 0.99))} | ${f(quantile(tpot, 0.5))} | ${f(quantile(tpot, 0.99))} |`;
    console.log(row);
    rows.push(row);
  }
  await daemon.close();
  const out = join(repoRoot(), 'bench', 'results');
  mkdirSync(out, { recursive: true });
  const md = [
    '# Load benchmark (bench/load.ts)',
    '',
    `${new Date().toISOString()}; model ${values.model ?? 'default/fixture ' + values.preset} on ${info.device}; adapters: ${adapters.map((a) => a.name).join(', ') || 'none'} plus the base, round-robin;`,
    `${perRate} requests per rate (at most ${seconds} s of arrivals), max_tokens ${maxTokens}, greedy; prompt lengths from the ESFT eval prompts (at most ${maxPrompt} tokens).`,
    'Client and daemon share one process (the engine steps on a worker thread).',
    '',
    header,
    '|---|---|---|---|---|---|---|---|---|',
    ...rows,
    '',
  ].join('\n');
  writeFileSync(join(out, 'load.md'), md);
  console.log(`wrote ${join(out, 'load.md')}`);
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
