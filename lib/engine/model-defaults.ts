// What a model directory says about generation beyond the weights: every end-of-sequence
// id (config.json and generation_config.json may each give one id or a list, and any of
// them ends generation) and the sampling defaults of generation_config.json, which apply
// when a request leaves a value out (as vLLM's --generation-config auto does).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface SamplingDefaults {
  temperature?: number;
  topP?: number;
  topK?: number;
  /** generation_config.json's max_new_tokens: the default completion length. */
  maxNewTokens?: number;
}

export interface ModelDefaults {
  eosTokenIds: number[];
  sampling: SamplingDefaults;
  /** Keys of generation_config.json that are not applied, for a log line. */
  ignored: string[];
}

function readJson(path: string): Record<string, unknown> | undefined {
  if (!existsSync(path)) return undefined;
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`${path}: not valid JSON (${(err as Error).message})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new Error(`${path}: expected a JSON object`);
  return v as Record<string, unknown>;
}

function ids(v: unknown, where: string): number[] {
  if (v === undefined || v === null) return [];
  const list = Array.isArray(v) ? v : [v];
  for (const x of list) if (!Number.isInteger(x) || (x as number) < 0) throw new Error(`${where}: eos_token_id must be a token id or a list of them, got ${JSON.stringify(v)}`);
  return list as number[];
}

const APPLIED = new Set(['eos_token_id', 'bos_token_id', 'pad_token_id', 'temperature', 'top_p', 'top_k', 'max_new_tokens', 'do_sample', '_from_model_config', 'transformers_version']);

export function loadModelDefaults(modelDir: string): ModelDefaults {
  const configPath = join(modelDir, 'config.json');
  const genPath = join(modelDir, 'generation_config.json');
  const config = readJson(configPath) ?? {};
  const gen = readJson(genPath) ?? {};
  const eos = [...new Set([...ids(config.eos_token_id, configPath), ...ids(gen.eos_token_id, genPath)])];
  const num = (key: string, ok: (n: number) => boolean): number | undefined => {
    const v = gen[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !ok(v)) throw new Error(`${genPath}: ${key} ${JSON.stringify(v)} is out of range`);
    return v;
  };
  const sampling: SamplingDefaults = {};
  // do_sample: false means greedy, whatever temperature says (transformers' rule).
  const temperature = gen.do_sample === false ? 0 : num('temperature', (n) => n >= 0);
  if (temperature !== undefined) sampling.temperature = temperature;
  const topP = num('top_p', (n) => n > 0 && n <= 1);
  if (topP !== undefined) sampling.topP = topP;
  const topK = num('top_k', (n) => Number.isInteger(n) && n >= 0);
  if (topK !== undefined) sampling.topK = topK;
  const maxNew = num('max_new_tokens', (n) => Number.isInteger(n) && n >= 1);
  if (maxNew !== undefined) sampling.maxNewTokens = maxNew;
  return { eosTokenIds: eos, sampling, ignored: Object.keys(gen).filter((k) => !APPLIED.has(k)) };
}
