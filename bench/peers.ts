// `npm run bench:peers`: ExpertWeave against llama.cpp's CPU build (node-llama-cpp
// 3.21.1's bundled source, built once for this CPU under bench/.peers/), side by side:
// the same bf16 weights (our safetensors written as GGUF by tools/gguf), the same
// token ids in, the same thread count, each engine in its own process. For each model
// it checks that llama.cpp on the same weights widened to F32 (ExpertWeave's arithmetic:
// f32 activations) gives exactly ExpertWeave's greedy tokens and compares the tokens of
// the timed bf16 file, then times prefill (pp, one step over the whole prompt, sampling
// its token) and decode (tg, one token per step)
// in interleaved runs (ours, theirs, ours, theirs, ...) and prints the per-round
// ratios with their spread, because absolute times on a shared machine mean little.
// Writes bench/results/peers.md, or --out (a run on another kind of CPU kept beside it).
// Never part of `npm test` or CI.
//
//   npm run bench:peers [-- --models v2-shaped,embedded,large] [--rounds N] [--threads 2] [--out FILE]
import { fork, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, totalmem } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import type { DeepseekV2Config } from '../tools/fixtures/config.js';
import { bestFp32Path, loadBinding, roundsActivations } from '../lib/engine/binding.js';
import { convertDeepseekV2 } from '../tools/gguf/deepseek2.js';
import { MODELS_DIR, ROOT, V2_LITE_WIDTH, V2_SHAPED, decodeStepBytes, ensureBenchModel, median, promptTokens } from './models.js';
import { gitCommit } from './lib/report.js';
import { NODE_LLAMA_CPP_VERSION, ensureLlamaCpp } from './peers/llama-cpp.js';
import type { EngineName, RunResult, WorkerArgs, WorkerReply, WorkerRequest } from './peers/protocol.js';

const WORKER = join(dirname(fileURLToPath(import.meta.url)), 'peers', 'worker.js');

interface ModelSpec {
  key: string;
  title: string;
  dir: () => string;
  prompt: number;
  generate: number;
  rounds: number;
  /** Runs per engine per round, of which the round keeps the fastest pp and the fastest tg: for runs of a
   * few milliseconds, where one preemption by other work would otherwise decide the round. */
  repeats: number;
  /** Decode only (the prefill is a short warm prompt, not reported); adds the bandwidth figure. */
  decodeOnly: boolean;
  /** Also check the tokens against llama.cpp on the weights widened to F32 (twice the bytes on disk). */
  exactCheck: boolean;
}

const SPECS: ModelSpec[] = [
  { key: 'v2-shaped', title: 'V2-shaped bench model (H=1024, 4 layers, 64 experts top-6)', dir: () => ensureBenchModel('v2-shaped', V2_SHAPED), prompt: 128, generate: 64, rounds: 9, repeats: 1, decodeOnly: false, exactCheck: true },
  { key: 'embedded', title: 'embedded model (models/default, 1.8M parameters)', dir: () => join(ROOT, 'models', 'default'), prompt: 128, generate: 64, rounds: 15, repeats: 5, decodeOnly: false, exactCheck: true },
  { key: 'large', title: 'V2-Lite-width model (V2-Lite widths, 3 layers, 3.3 GB bf16)', dir: () => ensureBenchModel('v2-lite-width', V2_LITE_WIDTH), prompt: 16, generate: 64, rounds: 5, repeats: 1, decodeOnly: true, exactCheck: false },
];

/** The GGUF of a model directory, converted once; named by a hash of what it was converted from. */
function ensureGguf(dir: string, key: string, widenToF32 = false): string {
  const h = createHash('sha256').update(readFileSync(join(dir, 'config.json')));
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.safetensors')).sort()) {
    const size = statSync(join(dir, f)).size;
    // Small files by content (models/default can be retrained in place); generated ones by size.
    h.update(`${f}:${size}:`).update(size < 256e6 ? readFileSync(join(dir, f)) : '');
  }
  const path = join(MODELS_DIR, 'gguf', `${key}-${h.digest('hex').slice(0, 12)}${widenToF32 ? '-f32' : ''}.gguf`);
  if (existsSync(path)) return path;
  mkdirSync(dirname(path), { recursive: true });
  console.log(`writing ${relative(ROOT, path)} (once) ...`);
  convertDeepseekV2(dir, path + '.tmp', { name: key, widenToF32 });
  renameSync(path + '.tmp', path);
  return path;
}

/** An engine in its own process; one request at a time. */
class Worker {
  private pending?: { resolve: (m: WorkerReply) => void; reject: (e: Error) => void };
  private constructor(readonly engine: EngineName, private readonly child: ChildProcess) {
    child.on('message', (m: WorkerReply) => {
      const p = this.pending;
      this.pending = undefined;
      if (!p) return;
      if (m.kind === 'error') p.reject(new Error(`${engine} worker: ${m.message}`));
      else p.resolve(m);
    });
    child.on('exit', (code) => this.pending?.reject(new Error(`${engine} worker exited (${code})`)));
  }

  static async start(args: WorkerArgs): Promise<{ worker: Worker; info: Record<string, unknown> }> {
    const child = fork(WORKER, [JSON.stringify(args)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const w = new Worker(args.engine, child);
    const ready = await w.reply();
    if (ready.kind !== 'ready') throw new Error(`${args.engine} worker: unexpected ${ready.kind}`);
    return { worker: w, info: ready.info };
  }

  private reply(req?: WorkerRequest): Promise<WorkerReply> {
    return new Promise((resolve, reject) => {
      this.pending = { resolve, reject };
      if (req) this.child.send(req);
    });
  }

  async run(prompt: number[], generate: number, margins = false): Promise<RunResult> {
    const r = await this.reply({ op: 'run', prompt, generate, margins });
    if (r.kind !== 'run') throw new Error(`${this.engine} worker: unexpected ${r.kind}`);
    return r.result;
  }

  async bandwidth(): Promise<number> {
    const r = await this.reply({ op: 'bandwidth' });
    if (r.kind !== 'bandwidth') throw new Error(`${this.engine} worker: unexpected ${r.kind}`);
    return r.gbs;
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    if (this.child.connected) this.child.send({ op: 'exit' } satisfies WorkerRequest);
    else this.child.kill();
    await exited;
  }
}

const settle = () => new Promise((r) => setTimeout(r, 100)); // let the other engine's spinning threads sleep

interface Spread {
  median: number;
  min: number;
  max: number;
}
const spread = (xs: number[]): Spread => ({ median: median(xs), min: Math.min(...xs), max: Math.max(...xs) });
/** Coefficient of variation, in percent. */
function cv(xs: number[]): number {
  const m = xs.reduce((a, b) => a + b, 0) / xs.length;
  return (100 * Math.sqrt(xs.reduce((a, x) => a + (x - m) ** 2, 0) / xs.length)) / m;
}

/** How llama.cpp's greedy tokens compare with ExpertWeave's. */
interface TokenCheck {
  count: number;
  /** -1: identical. */
  firstDifference: number;
  /** ExpertWeave's best-minus-second logit at the first difference. */
  marginThere?: number;
  theirs: number[];
}

/** One ExpertWeave configuration timed against llama.cpp. */
/** Untimed interleaved rounds before the timed ones. */
const WARMUP_ROUNDS = 2;

interface Variant {
  key: string;
  title: string;
  cpuPath?: string;
}

/** The default (best fp32-activation path, bf16 KV cache) and, where this CPU has it, bf16 activations (avx512-bf16). */
function variants(): Variant[] {
  const paths = loadBinding().buildInfo().cpuPaths;
  const fp32 = bestFp32Path(paths);
  const out: Variant[] = [{ key: fp32, title: `ExpertWeave ${fp32} (fp32 activations, the default)`, cpuPath: fp32 }];
  for (const p of paths.filter(roundsActivations))
    out.push({ key: p, title: `ExpertWeave ${p} (bf16 activations, like llama.cpp's bf16 matmul)`, cpuPath: p });
  return out;
}

interface ModelResult {
  spec: ModelSpec;
  config: DeepseekV2Config;
  gguf: string;
  variants: Variant[];
  /** The default variant's tokens (the reference of the checks) and its logit margins. */
  ours: { tokens: number[]; medianMargin: number };
  /** ExpertWeave with an f32 KV cache on fp32 activations vs llama.cpp on the weights widened to F32: must be identical. */
  exact?: TokenCheck;
  /** Each variant against llama.cpp on the bf16 GGUF that is timed: rounding differs, so near-ties may flip. */
  bf16: TokenCheck[];
  deterministic: boolean;
  /** Per round: each variant's run (in variant order), then llama.cpp's; decode-only models also a bandwidth reading just before. */
  rounds: Array<{ ours: RunResult[]; theirs: RunResult; bandwidthGBs?: number }>;
  oursInfo: Record<string, unknown>[];
  theirsInfo: Record<string, unknown>;
  bandwidthGBs?: number[];
}

function firstDifference(a: number[], b: number[]): number {
  for (let i = 0; i < Math.max(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return -1;
}

function check(ours: RunResult, theirs: RunResult): TokenCheck {
  const d = firstDifference(ours.tokens, theirs.tokens);
  return { count: ours.tokens.length, firstDifference: d, marginThere: d >= 0 ? ours.margins?.[d] : undefined, theirs: theirs.tokens };
}

async function benchModel(spec: ModelSpec, rounds: number, threads: number): Promise<ModelResult> {
  const dir = spec.dir();
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as DeepseekV2Config;
  const gguf = ensureGguf(dir, spec.key);
  const ggufF32 = spec.exactCheck ? ensureGguf(dir, spec.key, true) : undefined;
  const contextTokens = 512;
  // Prompt ids below any special token (the embedded model's BOS/EOS are 256/257).
  const span = Math.min(config.vocab_size, ...[config.bos_token_id, config.eos_token_id].filter((t) => t >= 2));
  const prompt = promptTokens(7, spec.prompt, span);
  const vs = variants();

  console.log(`\n== ${spec.title}: loading ...`);
  const ours: Awaited<ReturnType<typeof Worker.start>>[] = [];
  let theirs: Awaited<ReturnType<typeof Worker.start>> | undefined;
  try {
    for (const v of vs) ours.push(await Worker.start({ engine: 'expertweave', model: dir, threads, contextTokens, cpuPath: v.cpuPath }));
    const bandwidthGBs: number[] = [];
    if (spec.decodeOnly) bandwidthGBs.push(await ours[0].worker.bandwidth());
    // Reference tokens with logit margins (also the warm-up: page faults, first-touch allocations).
    const o0 = await Promise.all(ours.map(async (w) => w.worker.run(prompt, spec.generate, true)));
    let exact: TokenCheck | undefined;
    if (ggufF32) {
      // The same arithmetic on both sides: fp32 activations, an f32 cache on ours (llama.cpp: F32 weights).
      const mine = await Worker.start({ engine: 'expertweave', model: dir, threads, contextTokens, kvCacheDtype: 'f32', cpuPath: vs[0].cpuPath });
      const f32 = await Worker.start({ engine: 'llama.cpp', model: ggufF32, threads, contextTokens });
      try {
        exact = check(await mine.worker.run(prompt, spec.generate, true), await f32.worker.run(prompt, spec.generate));
      } finally {
        await mine.worker.close();
        await f32.worker.close();
      }
    }
    theirs = await Worker.start({ engine: 'llama.cpp', model: gguf, threads, contextTokens });
    const t0 = await theirs.worker.run(prompt, spec.generate); // warm-up
    const bf16 = o0.map((o) => check(o, t0));
    console.log(
      `tokens: ${exact ? `F32 GGUF ${exact.firstDifference < 0 ? 'identical' : `differ from ${exact.firstDifference}`}, ` : ''}` +
        vs.map((v, i) => `${v.key} vs bf16 GGUF ${bf16[i].firstDifference < 0 ? 'identical' : `differ from ${bf16[i].firstDifference} (our top-2 margin there ${bf16[i].marginThere?.toFixed(4)})`}`).join(', '),
    );
    // Untimed rounds first, each engine in turn as in the timed ones: the first rounds after loading ran
    // slower on every engine (up to 2x for amx on an AMX Xeon) and moved the medians with them.
    for (let i = 0; i < WARMUP_ROUNDS; i++) {
      for (const w of ours) await w.worker.run(prompt, spec.generate);
      await theirs.worker.run(prompt, spec.generate);
    }
    let deterministic = true;
    const log: ModelResult['rounds'] = [];
    /** `spec.repeats` runs of one engine: the fastest prefill and the fastest decode among them. */
    const runs = async (w: Worker, reference: RunResult): Promise<RunResult> => {
      type Times = { prefillMs: number; decodeMs: number };
      const faster = (a: Times, b: Times): Times => ({ prefillMs: Math.min(a.prefillMs, b.prefillMs), decodeMs: Math.min(a.decodeMs, b.decodeMs) });
      let best: RunResult | undefined;
      for (let i = 0; i < spec.repeats; i++) {
        await settle();
        const x = await w.run(prompt, spec.generate);
        deterministic &&= firstDifference(x.tokens, reference.tokens) < 0;
        const internal = best?.internal && x.internal ? faster(best.internal, x.internal) : x.internal;
        best = best ? { ...best, ...faster(best, x), internal } : x;
      }
      return best!;
    };
    for (let r = 0; r < rounds; r++) {
      // The round's own bandwidth reading, beside its runs: the decode share is then a ratio of one moment's figures.
      const bw = spec.decodeOnly ? await ours[0].worker.bandwidth() : undefined;
      const o: RunResult[] = [];
      for (let i = 0; i < ours.length; i++) o.push(await runs(ours[i].worker, o0[i]));
      const t = await runs(theirs.worker, t0);
      log.push({ ours: o, theirs: t, ...(bw !== undefined ? { bandwidthGBs: bw } : {}) });
      const ratio = (a: number, b: number) => (a / b).toFixed(2);
      console.log(
        `round ${r + 1}/${rounds}: ` +
          vs
            .map((v, i) =>
              `${v.key}: ` +
              (spec.decodeOnly ? '' : `pp${spec.prompt} ${o[i].prefillMs.toFixed(1)} vs ${t.prefillMs.toFixed(1)} ms (x${ratio(t.prefillMs, o[i].prefillMs)}), `) +
              `tg${spec.generate} ${o[i].decodeMs.toFixed(1)} vs ${t.decodeMs.toFixed(1)} ms (x${ratio(t.decodeMs, o[i].decodeMs)})`,
            )
            .join('; '),
      );
    }
    if (spec.decodeOnly) bandwidthGBs.push(await ours[0].worker.bandwidth());
    return {
      spec,
      config,
      gguf,
      variants: vs,
      ours: { tokens: o0[0].tokens, medianMargin: median(o0[0].margins ?? [NaN]) },
      exact,
      bf16,
      deterministic,
      rounds: log,
      oursInfo: ours.map((w) => w.info),
      theirsInfo: theirs.info,
      bandwidthGBs: spec.decodeOnly ? bandwidthGBs : undefined,
    };
  } finally {
    for (const w of ours) await w.worker.close();
    await theirs?.worker.close();
  }
}

interface Metric {
  /** tokens/s from the median time. */
  ours: number;
  theirs: number;
  /** Per-round ExpertWeave / llama.cpp in tokens/s (their time / ours). */
  ratio: Spread;
  /** The same against llama.cpp's own timing (llama_perf), i.e. without node-llama-cpp's overhead. */
  ratioInternal?: Spread;
  /** Best (shortest) time of each engine over the rounds, their / ours: the least disturbed by other load. */
  ratioOfBest: number;
  cvOurs: number;
  cvTheirs: number;
}

function metric(m: ModelResult, v: number, pick: (r: RunResult) => number | undefined, pickInternal: (r: RunResult) => number | undefined, n: number): Metric {
  const ours = m.rounds.map((r) => pick(r.ours[v])!);
  const theirs = m.rounds.map((r) => pick(r.theirs)!);
  const internal = m.rounds.map((r) => pickInternal(r.theirs));
  return {
    ours: (n * 1000) / median(ours),
    theirs: (n * 1000) / median(theirs),
    ratio: spread(theirs.map((t, i) => t / ours[i])),
    // llama_perf's time can read 0 for the embedded model's millisecond runs: then no bracketed figure.
    ratioInternal: internal.every((x) => x !== undefined && x > 0) ? spread(internal.map((t, i) => t! / ours[i])) : undefined,
    ratioOfBest: Math.min(...theirs) / Math.min(...ours),
    cvOurs: cv(ours),
    cvTheirs: cv(theirs),
  };
}

function summarize(m: ModelResult, v: number): { pp?: Metric; tg: Metric } {
  return {
    pp: m.spec.decodeOnly ? undefined : metric(m, v, (r) => r.prefillMs, (r) => r.internal?.prefillMs, m.spec.prompt),
    tg: metric(m, v, (r) => r.decodeMs, (r) => r.internal?.decodeMs, m.spec.generate),
  };
}

function describeCheck(c: TokenCheck, medianMargin: number): string {
  if (c.firstDifference < 0) return `identical (${c.count} of ${c.count})`;
  return (
    `the first ${c.firstDifference} of ${c.count} identical, then the other rounding picks another token ` +
    `(ExpertWeave's best-minus-second logit there ${c.marginThere?.toFixed(4)}; its median over the run ${medianMargin.toFixed(2)})`
  );
}

function report(results: ModelResult[], meta: { threads: number; load: [number[], number[]]; buildSeconds: number; date: string }): string {
  const f = (x: number, d = 2) => x.toFixed(d);
  const sp = (s: Spread) => `**${f(s.median)}x** (${f(s.min)}-${f(s.max)})`;
  const first = results[0];
  const llama = first?.theirsInfo.llamaCpp as { repo: string; release: string } | undefined;
  const kv = String(first?.oursInfo[0]?.kvCacheDtype ?? 'bf16');
  const lines = [
    '# Peer benchmark: ExpertWeave vs llama.cpp, CPU',
    '',
    `- Date: ${meta.date}; commit ${gitCommit()}; \`npm run bench:peers\``,
    `- Machine: ${cpus()[0]?.model ?? 'unknown'}, ${cpus().length} cores, ${(totalmem() / 2 ** 30).toFixed(0)} GiB; Node ${process.version}; ` +
      `load average ${meta.load[0].map((x) => x.toFixed(2)).join(' ')} at the start, ${meta.load[1].map((x) => x.toFixed(2)).join(' ')} at the end (shared with other work)`,
    `- llama.cpp: node-llama-cpp ${NODE_LLAMA_CPP_VERSION}, its bundled ${llama?.repo ?? 'llama.cpp'} ${llama?.release ?? ''}, built from that source once here ` +
      `(\`node-llama-cpp source download --gpu false\`: GGML_NATIVE, OpenMP, no GPU backend; ${Math.round(meta.buildSeconds / 60)} min), driven through node-llama-cpp's API; ` +
      `flash attention ${first?.theirsInfo.flashAttention ? 'on' : 'off'} (node-llama-cpp's "auto"), KV cache f16 (its default; ExpertWeave's latent cache: ${kv}, its CPU default)`,
    `- llama.cpp system info: \`${String(first?.theirsInfo.systemInfo ?? '').trim()}\``,
    `- ExpertWeave: ${first?.variants.map((v) => `\`${v.key}\``).join(', ')} (README, "CPU kernels"): the first keeps fp32 activations (the default); ` +
      'the others round a matmul\'s activations to bf16 as llama.cpp\'s bf16 matmul does, with AVX512_BF16 dot products (`avx512-bf16`) or AMX tiles (`amx`).',
    `- Both engines: the same bf16 weights (ExpertWeave's safetensors converted by tools/gguf; norms and router in f32 in the GGUF, as llama.cpp's converter does), ` +
      `the same token ids in, greedy, ${meta.threads} threads, one process each, runs interleaved (ours, ours, theirs, ...) with 100 ms between runs, after one warm-up run each and ${WARMUP_ROUNDS} untimed interleaved rounds; ` +
      `where a model's runs take milliseconds, each round is the fastest of several runs per engine (${results.filter((r) => r.spec.repeats > 1).map((r) => `${r.spec.key}: ${r.spec.repeats}`).join(', ') || 'none'}).`,
    '- pp = one step over the whole prompt, sampling its token; tg = the decode steps after it, one token each. ' +
      'Ratios are ExpertWeave / llama.cpp in tokens/s (above 1: ExpertWeave is faster), per round, median (min-max) over the rounds, ' +
      'against the time through node-llama-cpp and, in brackets, against llama.cpp\'s own llama_perf time (without node-llama-cpp\'s per-call overhead). ' +
      'best/best: the ratio of the two engines\' fastest runs, the figure least disturbed by other load. ' +
      'CV: the coefficient of variation of each engine\'s times over the rounds.',
    '',
    '| model | ExpertWeave | rounds | pp tok/s ours / llama.cpp | pp ratio [own time] | pp best/best | tg tok/s ours / llama.cpp | tg ratio [own time] | tg best/best | CV ours / llama.cpp (pp; tg) |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
  ];
  for (const m of results)
    m.variants.forEach((v, vi) => {
      const s = summarize(m, vi);
      const own = (x: Metric) => (x.ratioInternal ? ` [${f(x.ratioInternal.median)}x]` : '');
      const pp = s.pp ? `${f(s.pp.ours, 0)} / ${f(s.pp.theirs, 0)}` : 'n/a';
      const cvs = `${s.pp ? `${f(s.pp.cvOurs, 0)}% / ${f(s.pp.cvTheirs, 0)}%; ` : ''}${f(s.tg.cvOurs, 0)}% / ${f(s.tg.cvTheirs, 0)}%`;
      lines.push(
        `| ${vi === 0 ? m.spec.title : ''} | ${v.key} | ${m.rounds.length} | ${pp} | ${s.pp ? sp(s.pp.ratio) + own(s.pp) : 'n/a'} | ${s.pp ? `${f(s.pp.ratioOfBest)}x` : 'n/a'} ` +
          `| ${f(s.tg.ours, 1)} / ${f(s.tg.theirs, 1)} | ${sp(s.tg.ratio)}${own(s.tg)} | ${f(s.tg.ratioOfBest)}x | ${cvs} |`,
      );
    });
  lines.push(
    '',
    '## Greedy tokens',
    '',
    'The exact check runs ExpertWeave with an f32 KV cache and fp32 activations against llama.cpp on the same weights widened to F32 ' +
      '(the same arithmetic but for llama.cpp\'s f16 KV cache): the tokens must be equal. On the bf16 file that is timed, llama.cpp rounds its ' +
      'activations to bf16 and ExpertWeave (by default) does not, and ExpertWeave\'s cache is bf16 against llama.cpp\'s f16: a close choice can go ' +
      'either way, and from there the continuations differ.',
    '',
  );
  for (const m of results) {
    const exact = m.exact ? `F32 GGUF: ${describeCheck(m.exact, m.ours.medianMargin)}` : 'F32 GGUF: not run (it would double the model on disk and in memory)';
    lines.push(
      `- ${m.spec.key}: ${exact}; bf16 GGUF: ${m.variants.map((v, i) => `${v.key} ${describeCheck(m.bf16[i], m.ours.medianMargin)}`).join('; ')}` +
        `${m.deterministic ? '' : '; NOTE: repeated runs did not reproduce their tokens'}`,
    );
    if (m.exact && m.exact.firstDifference >= 0) {
      lines.push(`  - ExpertWeave: ${m.ours.tokens.join(' ')}`, `  - llama.cpp on F32: ${m.exact.theirs.join(' ')}`);
    }
  }
  for (const m of results.filter((r) => r.bandwidthGBs)) {
    const c = m.config;
    // Batch 1 reads exactly k experts per MoE layer; the context during decode runs prompt+1 .. prompt+generate.
    const avgContext = m.spec.prompt + (m.spec.generate + 1) / 2;
    const kvBytes = String(m.oursInfo[0]?.kvCacheDtype) === 'f32' ? 4 : 2;
    const bytes = decodeStepBytes(c, { tokens: 1, distinctExpertsPerMoeLayer: c.num_experts_per_tok, contexts: [avgContext], bytesPerWeight: 2, kvBytesPerValue: kvBytes });
    const bw = m.bandwidthGBs!;
    const peak = Math.max(...bw);
    lines.push(
      '',
      `## Decode bandwidth, ${m.spec.title}`,
      '',
      `The model is ${(statSync(m.gguf).size / 1e9).toFixed(1)} GB and a batch-1 decode step reads ${(bytes / 1e6).toFixed(0)} MB of it ` +
        `(every non-expert weight including the lm_head, ${c.num_experts_per_tok} routed experts per MoE layer, the KV cache), ` +
        'far more than the last-level cache holds, so the figure is not cache-assisted.',
      '',
    );
    // Per round: the decode's GB/s over the bandwidth read just before it (same moment, same load).
    const paired = (pick: (r: ModelResult['rounds'][number]) => RunResult) => {
      const shares = m.rounds.filter((r) => r.bandwidthGBs).map((r) => (100 * bytes) / (pick(r).decodeMs / m.spec.generate) / 1e6 / r.bandwidthGBs!);
      return shares.length ? `${f(median(shares), 0)}% (${f(Math.min(...shares), 0)}-${f(Math.max(...shares), 0)})` : 'n/a';
    };
    m.variants.forEach((v, vi) => {
      const s = summarize(m, vi);
      const oursStepMs = 1000 / s.tg.ours;
      const achieved = bytes / (oursStepMs / 1000) / 1e9;
      const bestStepMs = Math.min(...m.rounds.map((r) => r.ours[vi].decodeMs)) / m.spec.generate;
      lines.push(
        `- ExpertWeave ${v.key}: ${f(oursStepMs)} ms per step (median), ${f(achieved, 1)} GB/s; **per round, ${paired((r) => r.ours[vi])} of the bandwidth read just before it** ` +
          `(median, range); ${f((100 * achieved) / peak, 0)}% of the highest reading of the run; its fastest run ${f(bestStepMs)} ms per step, ${f(bytes / bestStepMs / 1e6, 1)} GB/s`,
      );
    });
    const s0 = summarize(m, 0);
    const theirs = (bytes * s0.tg.theirs) / 1e9;
    lines.push(
      `- llama.cpp: ${f(1000 / s0.tg.theirs)} ms per step (median), ${f(theirs, 1)} GB/s for the same bytes; per round ${paired((r) => r.theirs)} of the round's reading; ${f((100 * theirs) / peak, 0)}% of the highest`,
      '',
      `Measured: the addon's measureMemoryBandwidth (best of its passes over a buffer four times the last-level cache, 512 MiB to 2 GiB, each line prefetched ahead as the GEMVs prefetch their rows, ${meta.threads} threads) before the runs, before each round ` +
        `and after the runs: ${bw.map((x) => f(x, 1)).join(', ')} GB/s before and after; per round ${m.rounds.map((r) => f(r.bandwidthGBs ?? NaN, 1)).join(', ')} GB/s. ` +
        'The readings move with the load on this shared machine, hence the per-round pairing; other work lowers every figure here.',
    );
  }
  return lines.join('\n') + '\n';
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      models: { type: 'string', default: SPECS.map((s) => s.key).join(',') },
      rounds: { type: 'string' },
      threads: { type: 'string', default: '2' },
      out: { type: 'string', default: join(ROOT, 'bench', 'results', 'peers.md') },
    },
  });
  const keys = values.models.split(',');
  const specs = keys.map((k) => SPECS.find((s) => s.key === k) ?? (() => { throw new Error(`unknown model ${k}; known: ${SPECS.map((s) => s.key).join(', ')}`); })());
  const threads = Number(values.threads);
  if (!Number.isInteger(threads) || threads < 1) throw new Error('--threads must be a positive integer');
  const rounds = values.rounds === undefined ? undefined : Number(values.rounds);
  if (rounds !== undefined && !(Number.isInteger(rounds) && rounds >= 1)) throw new Error('--rounds must be a positive integer');

  const stamp = ensureLlamaCpp();
  const date = new Date().toISOString();
  const loadStart = loadavg();
  const results: ModelResult[] = [];
  for (const spec of specs) results.push(await benchModel(spec, rounds ?? spec.rounds, threads));
  const md = report(results, { threads, load: [loadStart, loadavg()], buildSeconds: stamp.buildSeconds, date });
  console.log('\n' + md);
  mkdirSync(dirname(values.out), { recursive: true });
  writeFileSync(values.out, md);
  if (results.some((r) => (r.exact && r.exact.firstDifference >= 0) || !r.deterministic)) {
    console.error('bench:peers: llama.cpp on the F32 weights disagrees with ExpertWeave, or runs were not reproducible (see above)');
    process.exitCode = 1;
  }
}

await main();
