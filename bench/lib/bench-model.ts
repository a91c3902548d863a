// What the benchmark suite serves, generated once under bench/.models/ (git-ignored):
// - the V2-shaped model of bench/models.ts (DeepSeek-V2-Lite's structure scaled so that
//   a step takes well under a second on 2 cores, random bf16 weights);
// - its ESFT adapters: the four published ESFT expert selections fitted to it (as
//   bench:memory and tools/fixtures do), cycled with fresh weights per adapter;
// - merged checkpoints (base + one adapter written as one model directory).
// Directory names carry a hash of what made them, so a change regenerates them.
import { existsSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';

import { fitSelection, loadEsftSelection, makeAdapter } from '../../tools/fixtures/adapter.js';
import type { DeepseekV2Config } from '../../tools/fixtures/config.js';
import { mergeAdapter } from '../../tools/merge/merge.js';
import { V2_SHAPED, ensureBenchModel } from '../models.js';

/** The V2-shaped model of bench/models.ts (V2-Lite's structure scaled down), shared with bench:engine. */
export const BENCH_CONFIG: DeepseekV2Config = V2_SHAPED;

export const ESFT_TASKS = ['intent', 'law', 'summary', 'translation'] as const;


/** Builds `dir` with `make(tmp)` unless it exists; the rename makes a half-written one impossible. */
function once(dir: string, what: string, make: (tmp: string) => void): string {
  if (existsSync(dir)) return dir;
  const tmp = dir + '.tmp';
  rmSync(tmp, { recursive: true, force: true });
  mkdirSync(dirname(tmp), { recursive: true });
  const t0 = performance.now();
  make(tmp);
  renameSync(tmp, dir);
  console.log(`generated ${what} in ${dir} (${((performance.now() - t0) / 1000).toFixed(1)} s, once)`);
  return dir;
}

/** The V2-shaped benchmark model's directory (generated on first use). */
export function benchModel(): string {
  return ensureBenchModel('v2-shaped', BENCH_CONFIG);
}

export interface BenchAdapter {
  name: string;
  dir: string;
  task: string;
  /** Tuned experts over all MoE layers. */
  experts: number;
}

/**
 * Adapter i of a model: ESFT selection ESFT_TASKS[i % 4] fitted to the model, weights
 * seeded by i. Named "<task>-<i>".
 */
export function benchAdapter(modelDir: string, cfg: DeepseekV2Config, i: number): BenchAdapter {
  const task = ESFT_TASKS[i % ESFT_TASKS.length];
  const experts = fitSelection(cfg, loadEsftSelection(task));
  const name = `${task}-${i}`;
  const dir = join(`${modelDir}-adapters`, name);
  once(dir, `adapter ${name}`, (tmp) => makeAdapter(tmp, modelDir, experts, { seed: 1000 + i }));
  return { name, dir, task, experts: Object.values(experts).reduce((s, ids) => s + ids.length, 0) };
}

export function benchAdapters(modelDir: string, cfg: DeepseekV2Config, n: number): BenchAdapter[] {
  return Array.from({ length: n }, (_, i) => benchAdapter(modelDir, cfg, i));
}

/** The merged checkpoint of `modelDir` + `adapter` (generated on first use). */
export function mergedModel(modelDir: string, adapter: BenchAdapter): string {
  const dir = join(`${modelDir}-merged`, adapter.name);
  return once(dir, `merged model ${adapter.name}`, (tmp) => mergeAdapter(modelDir, adapter.dir, tmp));
}
