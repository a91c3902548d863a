// Shared setup for the daemon tests: a tiny random model, two ESFT adapters, and
// reference continuations computed by Engine.generate (one sequence, no scheduler).
import { join } from 'node:path';

import type { Engine } from '../../lib/engine/engine.js';
import { startDaemon, type Daemon, type DaemonOptions } from '../../lib/server/daemon.js';
import { makeAdapter } from '../../tools/fixtures/adapter.js';
import { presetModel, someTokens } from '../helpers/fixtures.js';
import { tempDir } from '../helpers/tmp.js';

export const ENGINE = { device: 'cpu' as const, threads: 2, kvBlockSize: 4, kvCacheTokens: 1024, maxAdapters: 8, maxAdapterSlots: 16 };

export function fixture(): { model: string; adapters: { name: string; dir: string }[] } {
  const model = presetModel('tiny');
  const root = tempDir('ew-adapters-');
  const adapters = [
    { name: 'law', experts: { 1: [0, 2], 2: [1, 5] }, seed: 11 },
    { name: 'math', experts: { 1: [3], 2: [0, 4, 7] }, seed: 12 },
    { name: 'code', experts: { 1: [6, 7], 2: [2] }, seed: 13 },
  ].map((a) => {
    const dir = join(root, a.name);
    makeAdapter(dir, model, a.experts, { seed: a.seed });
    return { name: a.name, dir };
  });
  return { model, adapters };
}

export function start(model: string, extra: Partial<DaemonOptions> = {}): Promise<Daemon> {
  return startDaemon({ modelDir: model, engine: ENGINE, server: { port: 0 }, ...extra });
}

export interface Case {
  adapter: string | null;
  prompt: number[];
  maxTokens: number;
}

export function cases(vocab: number, adapters: (string | null)[], n: number): Case[] {
  return Array.from({ length: n }, (_, i) => ({
    adapter: adapters[i % adapters.length],
    prompt: someTokens(3 + ((i * 7) % 23), vocab, i),
    maxTokens: 4 + (i % 9),
  }));
}

/** Greedy continuation of one case alone, straight from the engine. */
export async function reference(engine: Engine, c: Case, row: number): Promise<{ tokens: number[]; finish: string }> {
  const tokens: number[] = [];
  const r = await engine.generate(c.prompt, { maxTokens: c.maxTokens, adapterRow: row, seqId: 1_000_000 }, (t) => {
    tokens.push(t.token);
  });
  return { tokens, finish: r.finishReason };
}

export async function waitFor(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
