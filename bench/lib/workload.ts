// The request mix and the open-loop load generator the daemon benchmarks share.
// Prompts: the ESFT evaluation prompts (../shared/data/esft/eval), their bytes folded
// into the model's vocabulary, their lengths scaled by a stated factor so that a
// 2-core CPU keeps up (the distribution's shape is kept). Arrivals: a seeded Poisson
// process, identical for every side of a comparison. Requests go over WebSocket.
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

import { StreamClient, type Frame } from '../../test/helpers/ws-client.js';
import { esftDataDir } from '../../tools/fixtures/adapter.js';
import { Rng } from '../../tools/fixtures/prng.js';
import { summarize, type Summary } from './stats.js';

export interface EvalPrompt {
  task: string;
  bytes: Buffer;
}

export function evalPrompts(): EvalPrompt[] {
  const dir = join(esftDataDir(), 'eval');
  const out: EvalPrompt[] = [];
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.jsonl')).sort()) {
    for (const line of readFileSync(join(dir, f), 'utf8').split('\n')) {
      if (line.trim() === '') continue;
      const p = (JSON.parse(line) as { prompt?: unknown }).prompt;
      if (typeof p === 'string') out.push({ task: f.replace(/\.jsonl$/, ''), bytes: Buffer.from(p, 'utf8') });
    }
  }
  if (out.length === 0) throw new Error(`no prompts in ${dir}`);
  return out;
}

export interface PromptMix {
  /** Token ids per prompt. */
  prompts: number[][];
  /** How lengths were made, for the result files. */
  describe: string;
}

/**
 * `count` prompts drawn task-uniformly (then uniformly within the task) from the ESFT
 * eval set: length = round(UTF-8 bytes / scale) clamped to [1, maxLen], content = the
 * prompt's first bytes folded into [2, vocab) (0 and 1 are BOS/EOS in the fixtures).
 */
export function promptMix(vocab: number, count: number, opts: { scale: number; maxLen: number; seed?: number }): PromptMix {
  const all = evalPrompts();
  const tasks = [...new Set(all.map((p) => p.task))];
  const rng = new Rng(opts.seed ?? 11);
  const prompts: number[][] = [];
  for (let i = 0; i < count; i++) {
    const task = tasks[Math.floor(rng.uniform() * tasks.length)];
    const pool = all.filter((p) => p.task === task);
    const p = pool[Math.floor(rng.uniform() * pool.length)];
    const len = Math.max(1, Math.min(opts.maxLen, Math.round(p.bytes.length / opts.scale)));
    prompts.push(Array.from(p.bytes.subarray(0, len), (b) => 2 + (b % (vocab - 2))));
  }
  const s = summarize(prompts.map((p) => p.length));
  return {
    prompts,
    describe: `${count} ESFT eval prompts (tasks drawn uniformly), length = UTF-8 bytes / ${opts.scale} capped at ${opts.maxLen}: ${s.min}-${s.max} tokens, median ${s.p50}`,
  };
}

/** Arrival offsets (ms) of a Poisson process of `rate` per second, seeded. */
export function poissonArrivals(rate: number, count: number, seed = 7): number[] {
  const rng = new Rng(seed);
  const out: number[] = [];
  let t = 0;
  for (let i = 0; i < count; i++) {
    out.push(t);
    t += (-Math.log(1 - rng.uniform()) / rate) * 1000;
  }
  return out;
}

export interface LoadRequest {
  url: string;
  /** Adapter name; null: the model the daemon serves. */
  adapter: string | null;
  prompt: number[];
  maxTokens: number;
  /** Send time, ms after the start. */
  at: number;
}

export interface RequestResult {
  req: LoadRequest;
  sent: number;
  firstAt: number;
  lastAt: number;
  doneAt: number;
  tokens: number[];
  error?: string;
}

export interface LoadSummary {
  requests: number;
  errors: number;
  outputTokens: number;
  /** First send to last completion. */
  wallS: number;
  tokensPerS: number;
  ttftMs: Summary;
  tpotMs: Summary;
}

export function summarizeLoad(results: readonly RequestResult[]): LoadSummary {
  const ok = results.filter((r) => !r.error && r.tokens.length > 0);
  const start = Math.min(...results.map((r) => r.sent));
  const end = Math.max(...results.map((r) => r.doneAt));
  const tokens = ok.reduce((s, r) => s + r.tokens.length, 0);
  const wallS = (end - start) / 1000;
  return {
    requests: results.length,
    errors: results.length - ok.length,
    outputTokens: tokens,
    wallS,
    tokensPerS: tokens / wallS,
    ttftMs: summarize(ok.map((r) => r.firstAt - r.sent)),
    tpotMs: summarize(ok.filter((r) => r.tokens.length > 1).map((r) => (r.lastAt - r.firstAt) / (r.tokens.length - 1))),
  };
}

/** Opens `perUrl` connections to each URL's /v1/stream. */
async function connect(urls: readonly string[], perUrl: number): Promise<Map<string, StreamClient[]>> {
  const out = new Map<string, StreamClient[]>();
  for (const u of new Set(urls)) {
    const ws = u.replace(/^http/, 'ws') + '/v1/stream';
    out.set(u, await Promise.all(Array.from({ length: perUrl }, () => StreamClient.open(ws))));
  }
  return out;
}

let nextId = 0;

/**
 * Sends every request at its time (open loop: a slow server does not slow the
 * arrivals) and resolves when all have ended. Greedy (temperature 0).
 */
export async function runLoad(requests: readonly LoadRequest[], connectionsPerUrl = 4): Promise<RequestResult[]> {
  const clients = await connect(requests.map((r) => r.url), connectionsPerUrl);
  const order = [...requests].sort((a, b) => a.at - b.at);
  const results: RequestResult[] = [];
  const pending: Promise<void>[] = [];
  const start = performance.now();
  const rr = new Map<string, number>();
  const send = (req: LoadRequest) => {
    const pool = clients.get(req.url)!;
    const k = rr.get(req.url) ?? 0;
    rr.set(req.url, k + 1);
    const c = pool[k % pool.length];
    const id = `b${nextId++}`;
    const r: RequestResult = { req, sent: performance.now(), firstAt: 0, lastAt: 0, doneAt: 0, tokens: [] };
    results.push(r);
    pending.push(
      new Promise<void>((resolve) => {
        c.onFrame(id, (fr: Frame) => {
          const now = performance.now();
          if (fr.type === 'token') {
            if (r.tokens.length === 0) r.firstAt = now;
            r.lastAt = now;
            r.tokens.push(fr.token as number);
            return;
          }
          if (fr.type === 'error') r.error = `${String(fr.code)}: ${String(fr.message)}`;
          r.doneAt = now;
          resolve();
        });
        c.send({ type: 'generate', id, adapter: req.adapter, prompt: req.prompt, max_tokens: req.maxTokens, temperature: 0 });
      }),
    );
  };
  let i = 0;
  while (i < order.length) {
    const now = performance.now() - start;
    while (i < order.length && order[i].at <= now) send(order[i++]);
    if (i < order.length) await new Promise((r) => setTimeout(r, Math.max(0, order[i].at - (performance.now() - start))));
  }
  await Promise.all(pending);
  for (const pool of clients.values()) for (const c of pool) c.close();
  return results;
}

/** One greedy request, alone: its generated token ids (throws on an error frame). */
export async function greedyTokens(url: string, adapter: string | null, prompt: number[], maxTokens: number): Promise<number[]> {
  const [r] = await runLoad([{ url, adapter, prompt, maxTokens, at: 0 }], 1);
  if (r.error) throw new Error(`greedy request to ${url} (${adapter ?? 'base'}) failed: ${r.error}`);
  return r.tokens;
}

/**
 * The check every comparison starts with: the same greedy request gives the same
 * tokens on both sides. Throws (aborting the comparison) when they differ.
 */
export function assertSameTokens(what: string, a: readonly number[], b: readonly number[]): void {
  const same = a.length === b.length && a.every((t, i) => t === b[i]);
  if (!same) {
    throw new Error(`${what}: the two sides generate different tokens for the same greedy request; comparison aborted\n  ${a.join(',')}\n  ${b.join(',')}`);
  }
}
