// Validates the generation fields shared by the WebSocket `generate` frame, POST
// /v1/completions and POST /v1/chat/completions, with OpenAI's (and vLLM's) names and
// ranges; every refusal names the field (RequestError.param) and the allowed range.
// Values must survive the trip to the engine's float32/int32 fields unchanged in
// meaning (1e308 is finite here but infinite there), so one request's odd value is its
// own 400 and never reaches a step. What stays unsupported is refused by name, never
// silently ignored. Leaving a sampling value out takes the model's generation_config.json
// default; leaving the seed out draws a fresh one.
import { randomInt } from 'node:crypto';

import type { SamplingDefaults } from '../engine/model-defaults.js';
import { RequestError } from '../scheduler/request.js';

export interface SamplingInput {
  /** undefined: to the end of the context. */
  maxTokens: number | undefined;
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
  stop: string[];
  /** Report each token's log-probability. */
  logprobs: boolean;
  /** And this many most likely alternatives (0..20). */
  topLogprobs?: number;
  ignoreEos?: boolean;
  stopTokenIds?: number[];
  presencePenalty?: number;
  frequencyPenalty?: number;
  logitBias?: Map<number, number>;
}

/** What a request's fields are checked against and default to. */
export interface ParseContext {
  vocabSize: number;
  defaults: SamplingDefaults;
  /** max_tokens when the request has none (undefined: to the end of the context). */
  defaultMaxTokens: number | undefined;
}

export const MAX_N = 16;
const FLOAT32_MAX = 3.4028234663852886e38;

function bad(message: string, param: string): never {
  throw new RequestError('bad_request', message, param);
}

/** A short, safe rendering of a client's value for an error message (any depth, any size). */
export function describeValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v === 'number' || typeof v === 'boolean' || v === null) return String(v);
  if (Array.isArray(v)) return `an array of ${v.length}`;
  return typeof v === 'object' ? 'an object' : typeof v;
}

function num(obj: Record<string, unknown>, key: string, ok: (n: number) => boolean, range: string): number | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) bad(`"${key}" must be ${range}, got ${describeValue(v)}`, key);
  return v;
}

function bool(obj: Record<string, unknown>, key: string): boolean | undefined {
  const v = obj[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') bad(`"${key}" must be true or false, got ${describeValue(v)}`, key);
  return v;
}

const isTokenId = (vocab: number) => (n: number) => Number.isInteger(n) && n >= 0 && n < vocab;

/** A seed for choice `index` of a request: the given seed for the first, distinct ones derived for the others. */
export function choiceSeed(seed: number, index: number): number {
  if (index === 0) return seed;
  // Spread over [0, 2^53) by a fixed odd multiplier (golden ratio); exact in doubles via BigInt.
  return Number((BigInt(seed) + BigInt(index) * 0x9e3779b97f4a7c15n) % 2n ** 53n);
}

/** Fields shared by every endpoint. `obj` is the request body or frame. */
export function parseSampling(obj: Record<string, unknown>, ctx: ParseContext): SamplingInput {
  const maxTokens = num(obj, 'max_tokens', (n) => Number.isInteger(n) && n >= 1, 'an integer >= 1') ?? ctx.defaults.maxNewTokens ?? ctx.defaultMaxTokens;
  const temperature = num(obj, 'temperature', (n) => n >= 0 && n <= FLOAT32_MAX, 'a number in [0, 3.4e38] (0 is greedy)') ?? ctx.defaults.temperature ?? 1;
  // top_p reaches the engine as a float32: a positive value that rounds to 0 there would be 0.
  const topP = num(obj, 'top_p', (n) => Math.fround(n) > 0 && n <= 1, 'a number in (0, 1] (at least 1.4e-45)') ?? ctx.defaults.topP ?? 1;
  // vLLM's -1 and OpenAI's absence both mean off.
  const k = num(obj, 'top_k', (n) => Number.isInteger(n) && n >= -1 && n <= 0x7fffffff, 'an integer >= 0 (0 or -1: off)');
  const topK = k === undefined ? (ctx.defaults.topK ?? 0) : Math.max(0, k);
  const seed = num(obj, 'seed', (n) => Number.isSafeInteger(n) && n >= 0, 'an integer in [0, 2^53)') ?? randomInt(0, 2 ** 48 - 1);
  let stop: string[] = [];
  const s = obj.stop;
  if (typeof s === 'string') stop = [s];
  else if (Array.isArray(s)) stop = s as string[];
  else if (s !== undefined && s !== null) bad('"stop" must be a string or an array of strings', 'stop');
  if (stop.length > 8 || stop.some((x) => typeof x !== 'string' || x.length === 0 || x.length > 256)) {
    bad('"stop" takes at most 8 non-empty strings of at most 256 characters', 'stop');
  }
  const out: SamplingInput = { maxTokens, temperature, topP, topK, seed, stop, logprobs: false };
  const ignoreEos = bool(obj, 'ignore_eos');
  if (ignoreEos) out.ignoreEos = true;
  const penalty = (key: string) => num(obj, key, (n) => n >= -2 && n <= 2, 'a number in [-2, 2]');
  const presence = penalty('presence_penalty');
  const frequency = penalty('frequency_penalty');
  if (presence) out.presencePenalty = presence;
  if (frequency) out.frequencyPenalty = frequency;
  const sti = obj.stop_token_ids;
  if (sti !== undefined && sti !== null) {
    if (!Array.isArray(sti) || sti.length > 64 || !sti.every((t) => typeof t === 'number' && isTokenId(ctx.vocabSize)(t))) {
      bad(`"stop_token_ids" must be at most 64 token ids in [0, ${ctx.vocabSize})`, 'stop_token_ids');
    }
    if (sti.length > 0) out.stopTokenIds = sti as number[];
  }
  const lb = obj.logit_bias;
  if (lb !== undefined && lb !== null) {
    if (typeof lb !== 'object' || Array.isArray(lb)) bad('"logit_bias" must be an object of token id -> bias in [-100, 100]', 'logit_bias');
    const entries = Object.entries(lb as Record<string, unknown>);
    if (entries.length > 300) bad('"logit_bias" takes at most 300 tokens', 'logit_bias');
    const bias = new Map<number, number>();
    for (const [key, v] of entries) {
      const id = Number(key);
      if (!/^\d+$/.test(key) || !isTokenId(ctx.vocabSize)(id)) bad(`"logit_bias" key ${describeValue(key)} is not a token id in [0, ${ctx.vocabSize})`, 'logit_bias');
      if (typeof v !== 'number' || !(v >= -100 && v <= 100)) bad(`"logit_bias" value for ${key} must be a number in [-100, 100], got ${describeValue(v)}`, 'logit_bias');
      if (v !== 0) bias.set(id, v);
    }
    if (bias.size > 0) out.logitBias = bias;
  }
  return out;
}

/** `n`: how many choices (1..MAX_N). */
export function parseN(obj: Record<string, unknown>): number {
  return num(obj, 'n', (n) => Number.isInteger(n) && n >= 1 && n <= MAX_N, `an integer in [1, ${MAX_N}]`) ?? 1;
}

/** Refuses, by name, fields this server does not implement when they ask for anything but the default. */
export function refuseUnsupported(obj: Record<string, unknown>, endpoint: 'completions' | 'chat' | 'stream'): void {
  const set = (k: string) => obj[k] !== undefined && obj[k] !== null;
  const refuse = (k: string, why: string) => bad(`"${k}" is not supported by this server: ${why}`, k);
  if (endpoint === 'completions' && set('suffix') && obj.suffix !== '') refuse('suffix', 'insertion is not implemented (vLLM refuses it too)');
  if (set('best_of') && obj.best_of !== 1 && obj.best_of !== (obj.n ?? 1)) refuse('best_of', 'only best_of equal to n');
  if (set('use_beam_search') && obj.use_beam_search !== false) refuse('use_beam_search', 'beam search is not implemented');
  for (const k of ['min_p', 'repetition_penalty', 'min_tokens', 'length_penalty', 'prompt_logprobs', 'guided_json', 'guided_regex', 'guided_choice', 'guided_grammar', 'structured_outputs', 'audio', 'prediction', 'functions', 'function_call']) {
    if (!set(k)) continue;
    const neutral = (k === 'min_p' && obj[k] === 0) || (k === 'repetition_penalty' && obj[k] === 1) || (k === 'min_tokens' && obj[k] === 0) || (k === 'length_penalty' && obj[k] === 1);
    if (!neutral) refuse(k, 'not implemented');
  }
  if (set('response_format') && (obj.response_format as { type?: unknown })?.type !== 'text') refuse('response_format', 'only {"type": "text"}');
  if (Array.isArray(obj.tools) && obj.tools.length > 0 && obj.tool_choice !== 'none') refuse('tools', 'tool calling is not implemented');
  if (set('modalities') && !(Array.isArray(obj.modalities) && obj.modalities.every((m) => m === 'text'))) refuse('modalities', 'text only');
}

/** A prompt as text or token ids; ids are range-checked by the scheduler. */
export function parsePrompt(v: unknown): string | number[] {
  if (typeof v === 'string') {
    if (v.length === 0) bad('"prompt" is empty', 'prompt');
    return v;
  }
  if (Array.isArray(v) && v.length > 0 && v.every((t) => Number.isInteger(t))) return v as number[];
  bad('"prompt" must be a non-empty string or a non-empty array of token ids', 'prompt');
}

/** /v1/completions' prompt: one prompt, or a list of them (strings or token-id lists). */
export function parsePrompts(v: unknown): (string | number[])[] {
  if (Array.isArray(v) && v.length > 0 && v.every((p) => typeof p === 'string' || Array.isArray(p))) {
    if (v.length > 64) bad('"prompt" takes at most 64 prompts per request', 'prompt');
    return v.map((p) => parsePrompt(p));
  }
  return [parsePrompt(v)];
}
