// Validates the sampling/limit fields shared by the WebSocket `generate` frame and
// POST /v1/completions; every refusal names the field and the allowed range. Values
// must survive the trip to the engine's float32/int32 fields unchanged in meaning
// (1e308 is finite here but infinite there), so one request's odd value is its own
// 400 and never reaches a step.
import { RequestError } from '../scheduler/request.js';

export interface SamplingInput {
  maxTokens: number;
  temperature: number;
  topP: number;
  topK: number;
  seed: number;
  stop: string[];
  logprobs: boolean;
  ignoreEos?: boolean;
}

function bad(message: string): never {
  throw new RequestError('bad_request', message);
}

/** A short, safe rendering of a client's value for an error message (any depth, any size). */
export function describeValue(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v === 'number' || typeof v === 'boolean' || v === null) return String(v);
  if (Array.isArray(v)) return `an array of ${v.length}`;
  return typeof v === 'object' ? 'an object' : typeof v;
}

function num(obj: Record<string, unknown>, key: string, fallback: number, ok: (n: number) => boolean, range: string): number {
  const v = obj[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'number' || !Number.isFinite(v) || !ok(v)) bad(`"${key}" must be ${range}, got ${describeValue(v)}`);
  return v;
}

const FLOAT32_MAX = 3.4028234663852886e38;

export function parseSampling(obj: Record<string, unknown>, defaultMaxTokens: number): SamplingInput {
  const maxTokens = num(obj, 'max_tokens', defaultMaxTokens, (n) => Number.isInteger(n) && n >= 1, 'an integer >= 1');
  const temperature = num(obj, 'temperature', 1, (n) => n >= 0 && n <= FLOAT32_MAX, 'a number in [0, 3.4e38] (0 is greedy)');
  // top_p reaches the engine as a float32: a positive value that rounds to 0 there would be 0.
  const topP = num(obj, 'top_p', 1, (n) => Math.fround(n) > 0 && n <= 1, 'a number in (0, 1] (at least 1.4e-45)');
  const topK = num(obj, 'top_k', 0, (n) => Number.isInteger(n) && n >= 0 && n <= 0x7fffffff, 'an integer >= 0 (0: off)');
  const seed = num(obj, 'seed', 0, (n) => Number.isSafeInteger(n) && n >= 0, 'an integer in [0, 2^53)');
  let stop: string[] = [];
  const s = obj.stop;
  if (typeof s === 'string') stop = [s];
  else if (Array.isArray(s)) stop = s as string[];
  else if (s !== undefined && s !== null) bad('"stop" must be a string or an array of strings');
  if (stop.length > 8 || stop.some((x) => typeof x !== 'string' || x.length === 0 || x.length > 256)) {
    bad('"stop" takes at most 8 non-empty strings of at most 256 characters');
  }
  const lp = obj.logprobs;
  // OpenAI's completions API takes an integer (number of alternatives); any truthy value asks for the sampled token's.
  const logprobs = lp === true || (typeof lp === 'number' && lp > 0);
  if (lp !== undefined && lp !== null && typeof lp !== 'boolean' && typeof lp !== 'number') bad('"logprobs" must be a boolean');
  const ignoreEos = obj.ignore_eos ?? false;
  if (typeof ignoreEos !== 'boolean') bad('"ignore_eos" must be a boolean');
  return { maxTokens, temperature, topP, topK, seed, stop, logprobs, ignoreEos };
}

/** A prompt as text or token ids; ids are range-checked by the scheduler. */
export function parsePrompt(v: unknown): string | number[] {
  if (typeof v === 'string') {
    if (v.length === 0) bad('"prompt" is empty');
    return v;
  }
  if (Array.isArray(v) && v.length > 0 && v.every((t) => Number.isInteger(t))) return v as number[];
  bad('"prompt" must be a non-empty string or a non-empty array of token ids');
}
