// A scripted EnginePort for scheduler tests (no addon), and request parameters.
import type { KvStats, ModelInfo, StepOutput } from '../../lib/engine/binding.js';
import type { ChunkSpec } from '../../lib/engine/engine.js';
import type { EnginePort } from '../../lib/scheduler/engine-port.js';
import type { DoneEvent, GenerationParams, RequestError } from '../../lib/scheduler/request.js';

/**
 * Always samples (last token + 1) mod vocab, skipping EOS; records every step's chunks.
 * Like the native engine, a chunk that starts a sequence on a draining row (or one
 * `refuse` names) fails alone, with its message in StepOutput.errors.
 */
export class ScriptedEngine implements EnginePort {
  readonly info = { vocabSize: 50, maxPositionEmbeddings: 128, eosTokenId: 1 } as ModelInfo;
  readonly steps: ChunkSpec[][] = [];
  readonly draining = new Set<number>();
  private readonly lens = new Map<number, number>();
  /** Extra refusals: a message fails the chunk. */
  refuse: (c: ChunkSpec) => string | undefined = () => undefined;
  constructor(private readonly totalBlocks = 1000) {}
  drainingRows(): ReadonlySet<number> {
    return this.draining;
  }
  async step(chunks: readonly ChunkSpec[]): Promise<StepOutput> {
    const errors = chunks.map((c) =>
      !this.lens.has(c.seqId) && this.draining.has(c.adapter ?? 0) ? `sequence ${c.seqId}: adapter row ${c.adapter} is being unregistered` : (this.refuse(c) ?? null),
    );
    this.steps.push([...chunks]);
    const tokens = new Int32Array(chunks.length).fill(-1);
    chunks.forEach((c, i) => {
      if (errors[i]) return;
      this.lens.set(c.seqId, (this.lens.get(c.seqId) ?? 0) + c.tokens.length);
      const next = (c.tokens[c.tokens.length - 1] + 1) % 50;
      tokens[i] = c.sample === false ? -1 : next === 1 ? 2 : next;
    });
    return { tokens, logprobs: new Float32Array(chunks.length), ...(errors.some((e) => e) ? { errors } : {}) };
  }
  freeSequence(seqId: number): void {
    this.lens.delete(seqId);
  }
  kvStats(): KvStats {
    let used = 0;
    for (const l of this.lens.values()) used += Math.ceil(l / 4);
    return { blockSize: 4, totalBlocks: this.totalBlocks, freeBlocks: this.totalBlocks - used, sequences: this.lens.size };
  }
}

export function params(adapterName: string, promptIds: number[], extra: Partial<GenerationParams> = {}): GenerationParams {
  return { promptIds, adapterRow: 0, adapterName, client: 'c', maxTokens: 3, temperature: 0, topP: 1, topK: 0, seed: 0, logprobs: false, stop: [], ...extra };
}

/** A request's sink and the promise of how it ended: done or error, with the tokens it streamed. */
export function outcome() {
  let resolve!: (r: { done?: DoneEvent; error?: RequestError; tokens: number[] }) => void;
  const result = new Promise<{ done?: DoneEvent; error?: RequestError; tokens: number[] }>((r) => (resolve = r));
  const tokens: number[] = [];
  return {
    result,
    sink: {
      onToken: (t: { token: number }) => void tokens.push(t.token),
      onDone: (done: DoneEvent) => resolve({ done, tokens }),
      onError: (error: RequestError) => resolve({ error, tokens }),
    },
  };
}
