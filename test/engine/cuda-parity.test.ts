// The CUDA engine against the CPU engine, through the public engine API, on the same
// checkpoints (a tiny random bf16 fixture with two ESFT adapters, and the shipped
// models/default with adapters/): logits agree within bf16 error, greedy generation in
// one mixed batch (base and adapter rows) gives the same tokens, and adapters can be
// registered and unregistered on the GPU while sequences generate. Each test skips
// without a CUDA build or device, or fails there with EW_REQUIRE_CUDA=1 (as on the
// GPU machine: `bash bench/gpu/verify.sh`), so a wrong device probe cannot pass as a skip.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

import { Engine, type ChunkSpec, type EngineOptions } from '../../lib/engine/engine.js';
import { fitSelection, loadEsftSelection, makeAdapter } from '../../tools/fixtures/adapter.js';
import { presetConfig, type AnyPresetName } from '../../tools/fixtures/families.js';
import { addon, addonGate, logitRows, relativeError } from '../helpers/engine.js';
import { gatedSuite, type Gate } from '../helpers/gate.js';
import { presetModel, someTokens } from '../helpers/fixtures.js';
import { repoRoot } from '../helpers/paths.js';
import { tempDir } from '../helpers/tmp.js';

/** max |gpu - cpu| / max |cpu| per logit row: bf16 weights and activations. */
const LOGIT_TOLERANCE = 1e-2;
/** Top-2 gaps (relative to the row's scale) under this may flip between devices. */
const NEAR_TIE = 1e-3;

/**
 * A gap within what the devices' logits were measured to differ by may flip too; capped
 * at the tolerance so that wrong logits (a failed logits test) cannot excuse wrong tokens.
 */
function tieThreshold(logitError: number): number {
  return Math.max(NEAR_TIE, Math.min(2 * logitError, LOGIT_TOLERANCE));
}
const GEN_TOKENS = 16;

/** Runs with a CUDA build and device; else skips, or fails where EW_REQUIRE_CUDA=1. */
function cudaGate(): Gate {
  const needAddon = addonGate();
  if (!('run' in needAddon)) return needAddon;
  const native = addon();
  let missing: string | undefined;
  if ('skip' in native) missing = native.skip;
  else if (!native.binding.buildInfo().cuda) missing = 'the addon was built without the CUDA backend (no nvcc at install time)';
  else if (!native.binding.cudaAvailable()) missing = 'no CUDA device on this machine';
  if (missing === undefined) return { run: true };
  return process.env.EW_REQUIRE_CUDA === '1' ? { fail: `EW_REQUIRE_CUDA=1 but ${missing}` } : { skip: missing };
}
const { after, before, describe, test } = gatedSuite(cudaGate());

const OPTIONS = { kvBlockSize: 16, kvCacheTokens: 4096, maxAdapters: 8, maxAdapterSlots: 32 } satisfies EngineOptions;

interface Case {
  prompt: number[];
  /** Adapter name (null: the base model), resolved to each engine's row. */
  adapter: string | null;
  /** Step at which the sequence starts (prefill); 0 unless adapters change on the way. */
  startAt?: number;
}

interface Run {
  tokens: number[][];
  /** Per case and generated position: the CPU's top-2 gap over the row's scale (when logits were asked for). */
  gaps: number[][];
}

/** The top-2 gap of a logit row relative to its largest magnitude. */
function relativeGap(row: Float32Array): number {
  let top = -Infinity;
  let second = -Infinity;
  let scale = 0;
  for (const v of row) {
    scale = Math.max(scale, Math.abs(v));
    if (v > top) {
      second = top;
      top = v;
    } else if (v > second) second = v;
  }
  return (top - second) / scale;
}

/**
 * Greedy generation of GEN_TOKENS per case, all cases in one batch per step (a case
 * joins at its startAt step). `beforeStep(i)` runs before step i (adapter changes).
 * With `logits` the step returns them and the gap of each sampled row is recorded.
 */
async function generate(
  engine: Engine,
  rows: Map<string, number>,
  cases: Case[],
  opts: { logits?: boolean; beforeStep?: (step: number) => Promise<void> } = {},
): Promise<Run> {
  const vocab = engine.info.vocabSize;
  const run: Run = { tokens: cases.map(() => []), gaps: cases.map(() => []) };
  const seqBase = 100;
  for (let step = 0; run.tokens.some((t) => t.length < GEN_TOKENS); step++) {
    await opts.beforeStep?.(step);
    const active = cases.map((_, i) => i).filter((i) => (cases[i].startAt ?? 0) <= step && run.tokens[i].length < GEN_TOKENS);
    const chunks: ChunkSpec[] = active.map((i) => {
      const c = cases[i];
      const row = c.adapter === null ? 0 : rows.get(c.adapter);
      if (row === undefined) throw new Error(`adapter ${c.adapter} has no row`);
      const generated = run.tokens[i];
      return { seqId: seqBase + i, tokens: generated.length === 0 ? c.prompt : [generated[generated.length - 1]], adapter: row };
    });
    const out = await engine.step(chunks, opts.logits === true);
    const logits = opts.logits ? logitRows(out.logits, vocab) : [];
    let at = 0;
    active.forEach((i, k) => {
      at += chunks[k].tokens.length;
      run.tokens[i].push(out.tokens[k]);
      if (opts.logits) run.gaps[i].push(relativeGap(logits[at - 1]));
      if (run.tokens[i].length === GEN_TOKENS) engine.freeSequence(seqBase + i);
    });
  }
  return run;
}

/**
 * Asserts every case's GPU tokens equal the CPU's, except where they first differ at a
 * near-tie on the CPU (a legitimate flip): that case is reported and left out. Returns
 * how many cases were compared in full.
 */
function assertSameTokens(t: TestContext, cpu: Run, gpu: Run, cases: Case[], tieBelow: number): number {
  let compared = 0;
  cases.forEach((c, i) => {
    const k = cpu.tokens[i].findIndex((tok, j) => gpu.tokens[i][j] !== tok);
    if (k === -1) {
      compared++;
      return;
    }
    const gap = cpu.gaps[i][k];
    const where = `case ${i} (${c.adapter ?? 'base'}), token ${k}: cpu ${cpu.tokens[i][k]}, gpu ${gpu.tokens[i][k]}, cpu top-2 gap ${gap.toExponential(2)}`;
    if (gap < tieBelow) t.diagnostic(`near-tie, not compared: ${where}`);
    else assert.fail(`the GPU's greedy tokens differ from the CPU's: ${where}\ncpu ${cpu.tokens[i]}\ngpu ${gpu.tokens[i]}`);
  });
  assert.ok(compared * 2 >= cases.length, `only ${compared} of ${cases.length} cases could be compared (near-ties)`);
  return compared;
}

interface Subject {
  name: string;
  model: () => string;
  /** Adapter name -> directory; the first two are used by the register/unregister test. */
  adapters: () => [string, string][];
  prompts: (vocab: number) => number[][];
}

const defaultModel = join(repoRoot(), 'models', 'default');
const bytes = (s: string) => [256, ...Buffer.from(s, 'utf8')]; // the default model's byte tokenizer, with BOS

/** A tiny bf16 preset of another family with two adapters fitted from the ESFT selections. */
function familySubject(preset: AnyPresetName): Subject {
  const model = () => presetModel(preset, 'bf16', 7);
  return {
    name: `${preset} (${presetConfig(preset).model_type}) random bf16 fixture`,
    model,
    adapters: () => {
      const root = tempDir('ew-cuda-adapters-');
      return (['law', 'translation'] as const).map((task, i) => {
        const dir = join(root, task);
        makeAdapter(dir, model(), fitSelection(presetConfig(preset), loadEsftSelection(task)), { seed: 31 + i });
        return [task, dir] as [string, string];
      });
    },
    prompts: (vocab) => [3, 9, 17, 30, 5, 12].map((n, i) => someTokens(n, vocab, i)),
  };
}

const SUBJECTS: Subject[] = [
  {
    name: 'tiny random bf16 fixture',
    model: () => presetModel('tiny', 'bf16', 7),
    adapters: () => {
      const model = presetModel('tiny', 'bf16', 7);
      const root = tempDir('ew-cuda-adapters-');
      const a = join(root, 'a');
      const b = join(root, 'b');
      makeAdapter(a, model, { 1: [0, 2], 2: [1, 5] }, { seed: 21 });
      makeAdapter(b, model, { 1: [3, 7], 2: [0, 6] }, { seed: 22 });
      return [
        ['a', a],
        ['b', b],
      ];
    },
    prompts: (vocab) => [3, 9, 17, 30, 5, 12].map((n, i) => someTokens(n, vocab, i)),
  },
  {
    name: 'models/default with its adapters',
    model: () => defaultModel,
    adapters: () => ['rot13', 'inc', 'shift', 'atbash'].map((n) => [n, join(repoRoot(), 'adapters', n)] as [string, string]),
    prompts: () => ['rot13: hello\n=', 'inc: 3847\n=', 'shift: abcxyz\n=', 'atbash: wizard\n=', 'the quick brown fox', 'rot13: gpu\n='].map(bytes),
  },
  familySubject('qwen3Tiny'),
  familySubject('v3Tiny'),
  familySubject('mixtralTiny'),
];

describe('CUDA engine parity with the CPU engine', () => {
  for (const subject of SUBJECTS) {
    describe(subject.name, () => {
      let cpu: Engine;
      let gpu: Engine;
      let adapters: [string, string][];
      const cpuRows = new Map<string, number>();
      const gpuRows = new Map<string, number>();
      let logitError = 0;

      before(async () => {
        adapters = subject.adapters();
        cpu = await Engine.load(subject.model(), { ...OPTIONS, device: 'cpu', threads: 0 });
        gpu = await Engine.load(subject.model(), { ...OPTIONS, device: 'cuda' });
        for (const [name, dir] of adapters) cpuRows.set(name, (await cpu.registerAdapter(dir)).row);
      });
      after(() => {
        cpu?.close();
        gpu?.close();
      });

      test('the engine runs on the GPU', () => {
        assert.match(gpu.info.device, /^cuda/);
        assert.match(cpu.info.device, /^cpu/);
      });

      test('logits of a prefill and a decode step agree within bf16 error, without NaN', async (t) => {
        // Only the first adapter on the GPU for now: the rest come in the mixed-batch test.
        const [name, dir] = adapters[0];
        gpuRows.set(name, (await gpu.registerAdapter(dir)).row);
        const prompt = subject.prompts(cpu.info.vocabSize)[0];
        for (const adapter of [null, name]) {
          const step = async (e: Engine, rows: Map<string, number>, tokens: number[]) =>
            logitRows((await e.step([{ seqId: 1, tokens, adapter: adapter === null ? 0 : rows.get(adapter)! }], true)).logits, e.info.vocabSize);
          const prefill = [await step(cpu, cpuRows, prompt), await step(gpu, gpuRows, prompt)];
          const next = [await step(cpu, cpuRows, [prompt[1]]), await step(gpu, gpuRows, [prompt[1]])];
          cpu.freeSequence(1);
          gpu.freeSequence(1);
          const rowsCpu = [...prefill[0], ...next[0]];
          const rowsGpu = [...prefill[1], ...next[1]];
          rowsCpu.forEach((ref, r) => {
            assert.ok(!rowsGpu[r].some(Number.isNaN), `NaN in the GPU's logits (row ${r}, ${adapter ?? 'base'})`);
            const err = relativeError(rowsGpu[r], ref);
            logitError = Math.max(logitError, err);
            assert.ok(err <= LOGIT_TOLERANCE, `row ${r} (${adapter ?? 'base'}): relative error ${err.toExponential(2)} > ${LOGIT_TOLERANCE}`);
          });
        }
        t.diagnostic(`largest relative logit error: ${logitError.toExponential(2)}`);
      });

      test('greedy generation of a mixed batch matches the CPU token for token', async (t) => {
        for (const [name, dir] of adapters) if (!gpuRows.has(name)) gpuRows.set(name, (await gpu.registerAdapter(dir)).row);
        const names = [null, ...adapters.map(([n]) => n)];
        const cases: Case[] = subject.prompts(cpu.info.vocabSize).map((prompt, i) => ({ prompt, adapter: names[i % names.length] }));
        // Also every prompt on the base model, so each batch row mixes adapters and base.
        for (const prompt of subject.prompts(cpu.info.vocabSize)) cases.push({ prompt, adapter: null });
        const ref = await generate(cpu, cpuRows, cases, { logits: true });
        const got = await generate(gpu, gpuRows, cases);
        const compared = assertSameTokens(t, ref, got, cases, tieThreshold(logitError));
        t.diagnostic(`${compared} of ${cases.length} sequences compared in full`);
        assert.equal(gpu.kvStats().sequences, 0);
      });

      test('adapters registered and unregistered while the GPU generates', async (t) => {
        for (const row of gpuRows.values()) gpu.unregisterAdapter(row);
        gpuRows.clear();
        assert.deepEqual(gpu.adapters(), [], 'no sequence runs, so unregistering drops the rows at once');
        const baseline = gpu.expertStats();
        const [[first, firstDir], [second, secondDir]] = adapters;
        const prompts = subject.prompts(cpu.info.vocabSize);
        const cases: Case[] = [
          { prompt: prompts[0], adapter: null },
          { prompt: prompts[1], adapter: first },
          { prompt: prompts[2], adapter: second, startAt: 4 },
          { prompt: prompts[3], adapter: first, startAt: 1 },
        ];
        gpuRows.set(first, (await gpu.registerAdapter(firstDir)).row);
        let loading: Promise<void> | undefined;
        const got = await generate(gpu, gpuRows, cases, {
          beforeStep: async (step) => {
            if (step === 2) {
              // Loads on a worker thread while steps run.
              loading = gpu.registerAdapter(secondDir).then((info) => void gpuRows.set(second, info.row));
            }
            if (step === 4) await loading;
            if (step === 6) {
              // Both sequences of `first` are running: the row drains and keeps serving them.
              gpu.unregisterAdapter(gpuRows.get(first)!);
              const row = gpu.adapters().find((a) => a.row === gpuRows.get(first));
              assert.equal(row?.draining, true);
              assert.equal(row?.liveSequences, 2);
            }
          },
        });
        assert.deepEqual(
          gpu.adapters().map((a) => a.row),
          [gpuRows.get(second)],
          'the drained row is dropped after its last sequence',
        );
        gpu.unregisterAdapter(gpuRows.get(second)!);
        gpuRows.clear();
        assert.deepEqual(gpu.adapters(), []);
        assert.equal(gpu.expertStats().usedSlots, baseline.usedSlots, 'adapter expert slots freed');
        t.diagnostic(`expert pool backed bytes: ${baseline.backedBytes} before, ${gpu.expertStats().backedBytes} after`);
        const ref = await generate(cpu, cpuRows, cases, { logits: true });
        const compared = assertSameTokens(t, ref, got, cases, tieThreshold(logitError));
        t.diagnostic(`${compared} of ${cases.length} sequences compared in full`);
      });
    });
  }
});
