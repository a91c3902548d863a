// `npm run bench:ab -- --against DIR`: this checkout's engine against another built checkout's
// (DIR: e.g. `git worktree add ../ew-base <commit> && (cd ../ew-base && npm install)`), both loaded
// in this one process and run in alternation (A B, then B A, ...), so each round's pair sees the
// same machine state; prints the per-round paired speedup of prefill and decode with its spread.
// On the shared 2-core machines absolute times move by 20-30% between minutes while these paired
// ratios hold within a few percent: the way to judge a kernel change. The two engines' thread
// pools sleep while the other runs (they spin 200 us at most after a loop). Greedy tokens of both
// are compared and reported (a kernel change that keeps the sums keeps them equal).
// Writes bench/results/ab-MODEL[-PATH]-ppP-tgG.md (PATH: --cpu-path when given). Never part of `npm test` or CI.
//
//   npm run bench:ab -- --against ../ew-base [--model v2-shaped|embedded|large|DIR] [--rounds 10]
//                       [--prompt 128] [--generate 16] [--threads 2] [--cpu-path avx2]
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

import type { Engine as EngineClass, EngineOptions } from '../lib/engine/engine.js';
import { fr, gitCommit, header, mdTable, runInfo, writeResult } from './lib/report.js';
import { pairedRatios, spread } from './lib/stats.js';
import { ROOT, V2_LITE_WIDTH, V2_SHAPED, ensureBenchModel, promptTokens } from './models.js';

const { values } = parseArgs({
  options: {
    against: { type: 'string' },
    model: { type: 'string', default: 'v2-shaped' },
    rounds: { type: 'string', default: '10' },
    prompt: { type: 'string', default: '128' },
    generate: { type: 'string', default: '16' },
    threads: { type: 'string', default: '2' },
    'cpu-path': { type: 'string' },
  },
  strict: true,
});
const count = (name: string, v: string | undefined, min: number): number => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) throw new Error(`--${name}: expected an integer >= ${min}, got '${v}'`);
  return n;
};
if (!values.against) throw new Error('--against DIR: the other checkout (built: dist/ and build/Release/expertweave.node)');
const other = resolve(values.against);
const rounds = count('rounds', values.rounds, 1);
const promptLen = count('prompt', values.prompt, 1);
const generate = count('generate', values.generate, 0);
const threads = count('threads', values.threads, 1);

function modelDir(m: string): string {
  if (m === 'v2-shaped') return ensureBenchModel('v2-shaped', V2_SHAPED);
  if (m === 'large') return ensureBenchModel('v2-lite-width', V2_LITE_WIDTH);
  if (m === 'embedded') return join(ROOT, 'models', 'default');
  if (existsSync(join(m, 'config.json'))) return resolve(m);
  throw new Error(`--model: v2-shaped, embedded, large or a model directory, got '${m}'`);
}

/** The Engine class of a built checkout (its own module tree, so its own addon and thread pool). */
async function engineOf(root: string): Promise<typeof EngineClass> {
  const entry = join(root, 'dist', 'lib', 'engine', 'engine.js');
  if (!existsSync(entry) || !existsSync(join(root, 'build', 'Release', 'expertweave.node')))
    throw new Error(`${root} is not built (no ${entry} or build/Release/expertweave.node): run \`npm install\` there`);
  return ((await import(pathToFileURL(entry).href)) as { Engine: typeof EngineClass }).Engine;
}

interface Side {
  commit: string;
  engine: EngineClass;
  pp: number[];
  tg: number[];
  tokens: number[];
}

const model = modelDir(values.model!);
const options: EngineOptions = { device: 'cpu', threads, ...(values['cpu-path'] ? { cpuPath: values['cpu-path'] as EngineOptions['cpuPath'] } : {}) };
const info = runInfo();
const sides: Side[] = [];
for (const [root, commit] of [[ROOT, info.commit], [other, gitCommit(other)]]) {
  const Engine = await engineOf(root);
  sides.push({ commit, engine: await Engine.load(model, options), pp: [], tg: [], tokens: [] });
}
const prompt = promptTokens(7, promptLen, sides[0].engine.info.vocabSize);

let seq = 1;
async function run(s: Side, keep: boolean): Promise<void> {
  const seqId = seq++;
  const t0 = performance.now();
  let out = await s.engine.step([{ seqId, tokens: prompt }]);
  const t1 = performance.now();
  const tokens = [out.tokens[0]];
  for (let i = 0; i < generate; i++) {
    out = await s.engine.step([{ seqId, tokens: [tokens[tokens.length - 1]] }]);
    tokens.push(out.tokens[0]);
  }
  const t2 = performance.now();
  s.engine.freeSequence(seqId);
  s.tokens = tokens;
  if (!keep) return;
  s.pp.push(t1 - t0);
  if (generate > 0) s.tg.push((t2 - t1) / generate);
}

// Two untimed rounds first (the first runs after loading are slower on every engine).
for (let r = 0; r < rounds + 2; r++) {
  for (const s of r % 2 ? [...sides].reverse() : sides) await run(s, r >= 2);
  if (r >= 2) console.log(`round ${r - 1}/${rounds}: pp ${sides.map((s) => s.pp.at(-1)!.toFixed(1)).join(' vs ')} ms`);
}
for (const s of sides) s.engine.close();

const sameTokens = sides[0].tokens.every((t, i) => t === sides[1].tokens[i]);
const rows = [
  ['prefill, one step of the whole prompt', `pp${promptLen}`, sides[1].pp, sides[0].pp] as const,
  ...(generate > 0 ? [['decode, per step', `tg${generate}`, sides[1].tg, sides[0].tg] as const] : []),
].map(([what, tag, theirs, ours]) => [
  `${what} (${tag})`,
  `**${fr(pairedRatios(theirs, ours), 3)}x**`,
  fr(spread(ours), 1),
  fr(spread(theirs), 1),
]);
const md = [
  '# A/B: two builds in one process',
  '',
  ...header(info),
  `- this checkout: ${sides[0].commit}; --against: ${other} at ${sides[1].commit}`,
  `- model: ${model}; ${threads} threads${values['cpu-path'] ? `, cpu path ${values['cpu-path']}` : ''}; ${rounds} rounds after 2 untimed, order alternating; \`npm run bench:ab -- --against ${values.against} --model ${values.model} --rounds ${rounds} --prompt ${promptLen} --generate ${generate}\``,
  `- greedy tokens of the last run (${generate + 1}): ${sameTokens ? 'identical' : 'differ'}`,
  '',
  'Speedup = the other build\'s time / this checkout\'s, per round (above 1: this checkout is faster), median (min-max); times in ms, median (min-max).',
  '',
  mdTable(['what', 'speedup of this checkout', 'this checkout (ms)', '--against (ms)'], rows, ['l', 'r', 'r', 'r']),
  '',
].join('\n');
console.log('\n' + md);
const tag = ['v2-shaped', 'embedded', 'large'].includes(values.model!) ? values.model : 'model';
writeResult(`ab-${tag}${values['cpu-path'] ? `-${values['cpu-path']}` : ''}-pp${promptLen}-tg${generate}.md`, md);
