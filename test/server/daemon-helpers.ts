// Shared setup for the daemon tests: a tiny random model, three ESFT adapters, and
// the expected continuations, computed by Engine.generate (one sequence, no scheduler)
// on engines of their own: the base checkpoint, or an adapter's merged checkpoint. They
// never use the daemon's engine or registry, so serving the wrong adapter fails.
import { join } from 'node:path';

import { Engine } from '../../lib/engine/engine.js';
import { startDaemon, type Daemon, type DaemonOptions } from '../../lib/server/daemon.js';
import { makeAdapter } from '../../tools/fixtures/adapter.js';
import { mergedModel, presetModel, someTokens } from '../helpers/fixtures.js';
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

export interface Continuation {
  tokens: number[];
  finish: string;
}

/** Greedy continuations of cases alone, from the base and merged checkpoints (see the top). */
export class Expected {
  private readonly engines = new Map<string | null, Promise<Engine>>();
  private readonly dirs: Map<string, string>;

  constructor(private readonly model: string, adapters: { name: string; dir: string }[], private readonly engine: Partial<typeof ENGINE> = {}) {
    this.dirs = new Map(adapters.map((a) => [a.name, a.dir]));
  }

  private engineFor(adapter: string | null): Promise<Engine> {
    let e = this.engines.get(adapter);
    if (!e) {
      const dir = adapter === null ? this.model : this.dirs.get(adapter);
      if (dir === undefined) throw new Error(`Expected: no adapter named ${adapter}`);
      e = Engine.load(adapter === null ? dir : mergedModel(this.model, dir), { ...ENGINE, ...this.engine });
      this.engines.set(adapter, e);
    }
    return e;
  }

  async of(c: Case): Promise<Continuation> {
    const engine = await this.engineFor(c.adapter);
    const tokens: number[] = [];
    const r = await engine.generate(c.prompt, { maxTokens: c.maxTokens }, (t) => {
      tokens.push(t.token);
    });
    return { tokens, finish: r.finishReason };
  }

  async all(cs: readonly Case[]): Promise<Continuation[]> {
    const out: Continuation[] = [];
    for (const c of cs) out.push(await this.of(c));
    return out;
  }

  async close(): Promise<void> {
    for (const e of this.engines.values()) (await e).close();
    this.engines.clear();
  }
}

export async function waitFor(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const until = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
