// The typed face of the native engine for the control plane: friendly chunk
// objects in, typed arrays across N-API, plus a single-sequence generate() loop.
import {
  loadBinding,
  type ExpertStats,
  type KvStats,
  type ModelInfo,
  type NativeAdapterInfo,
  type NativeEngine,
  type NativeEngineOptions,
  type StepOutput,
  type StepRequest,
} from './binding.js';

export type EngineOptions = NativeEngineOptions;

/** One sequence's part of a step (see ew::SeqChunk). Unset fields take the defaults shown. */
export interface ChunkSpec {
  seqId: number;
  tokens: ArrayLike<number>;
  /** Adapter row in the reroute tables; 0 (default) is the base model. */
  adapter?: number;
  /** Sample a next token after the chunk's last token (default true). */
  sample?: boolean;
  /** Also return that token's log-probability (default false). */
  logprobs?: boolean;
  /** 0 (default): greedy. */
  temperature?: number;
  /** 0 (default): off. */
  topK?: number;
  /** 1 (default): off. */
  topP?: number;
  /** With the position it fixes the draw (default 0). */
  seed?: number;
  /** OpenAI penalties over `outputCounts` (default 0). */
  presencePenalty?: number;
  frequencyPenalty?: number;
  /** The sequence's generated tokens so far and how often each came (for the penalties). */
  outputCounts?: ReadonlyMap<number, number>;
  /** Added to those tokens' logits before the draw. */
  logitBias?: ReadonlyMap<number, number>;
  /** Also return this many most likely tokens (0..20, default 0). */
  topLogprobs?: number;
}

function checkInt(value: number, what: string): number {
  if (!Number.isInteger(value) || value < -0x80000000 || value > 0x7fffffff) {
    throw new TypeError(`${what} must be a 32-bit integer, got ${value}`);
  }
  return value;
}

/**
 * Packs chunks into the struct-of-arrays StepRequest the addon takes. Integers are
 * checked here because typed arrays would silently truncate them; ranges (token ids
 * against the vocabulary, sampling parameters) are checked natively.
 */
export function packStepRequest(chunks: readonly ChunkSpec[], returnLogits = false): StepRequest {
  const n = chunks.length;
  let total = 0;
  for (const c of chunks) total += c.tokens.length;
  const req: StepRequest = {
    seqIds: new Int32Array(n),
    adapters: new Int32Array(n),
    nTokens: new Int32Array(n),
    tokens: new Int32Array(total),
    sample: new Uint8Array(n),
    logprobs: new Uint8Array(n),
    temperature: new Float32Array(n),
    topK: new Int32Array(n),
    topP: new Float32Array(n),
    seeds: new Float64Array(n),
  };
  if (returnLogits) req.returnLogits = true;
  // The optional extras cross only when a chunk uses them, so a plain step packs nothing more.
  if (chunks.some((c) => c.topLogprobs)) req.topLogprobs = Int32Array.from(chunks, (c, i) => checkInt(c.topLogprobs ?? 0, `chunk ${i}: topLogprobs`));
  if (chunks.some((c) => c.presencePenalty || c.frequencyPenalty)) {
    req.presencePenalty = Float32Array.from(chunks, (c) => c.presencePenalty ?? 0);
    req.frequencyPenalty = Float32Array.from(chunks, (c) => c.frequencyPenalty ?? 0);
  }
  const sparse = (get: (c: ChunkSpec) => ReadonlyMap<number, number> | undefined) => {
    if (!chunks.some((c) => get(c)?.size)) return undefined;
    const offsets = new Int32Array(n + 1);
    let size = 0;
    chunks.forEach((c, i) => (offsets[i + 1] = size += get(c)?.size ?? 0));
    const ids = new Int32Array(size);
    const values: number[] = [];
    let k = 0;
    chunks.forEach((c, i) => {
      for (const [id, v] of get(c) ?? []) {
        ids[k++] = checkInt(id, `chunk ${i}: token id`);
        values.push(v);
      }
    });
    return { offsets, ids, values };
  };
  const bias = sparse((c) => c.logitBias);
  if (bias) Object.assign(req, { biasOffsets: bias.offsets, biasIds: bias.ids, biasValues: Float32Array.from(bias.values) });
  const counts = sparse((c) => (c.presencePenalty || c.frequencyPenalty ? c.outputCounts : undefined));
  if (counts) Object.assign(req, { countOffsets: counts.offsets, countIds: counts.ids, countValues: Int32Array.from(counts.values) });
  let at = 0;
  chunks.forEach((c, i) => {
    req.seqIds[i] = checkInt(c.seqId, `chunk ${i}: seqId`);
    req.adapters[i] = checkInt(c.adapter ?? 0, `chunk ${i}: adapter`);
    req.nTokens[i] = c.tokens.length;
    for (let j = 0; j < c.tokens.length; j++) req.tokens[at++] = checkInt(c.tokens[j], `chunk ${i}: tokens[${j}]`);
    req.sample[i] = c.sample === false ? 0 : 1;
    req.logprobs[i] = c.logprobs ? 1 : 0;
    req.temperature[i] = c.temperature ?? 0;
    req.topK[i] = checkInt(c.topK ?? 0, `chunk ${i}: topK`);
    req.topP[i] = c.topP ?? 1;
    req.seeds[i] = c.seed ?? 0;
  });
  return req;
}

export interface GenerateOptions {
  maxTokens: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  /** Token ids that end generation like EOS does (not emitted). */
  stop?: readonly number[];
  adapterRow?: number;
  /** Also report each token's log-probability. */
  logprobs?: boolean;
  /** Most prompt tokens per prefill step (default 512). */
  prefillChunk?: number;
  /** Sequence id to use (default 0); it must not be in use. */
  seqId?: number;
}

export interface GeneratedToken {
  token: number;
  /** 0-based position in the continuation. */
  index: number;
  logprob?: number;
}

export type FinishReason = 'eos' | 'stop' | 'length';

export interface GenerateResult {
  finishReason: FinishReason;
  promptTokens: number;
  completionTokens: number;
  /** Wall time of the prefill steps (up to the first sampled token). */
  prefillMs: number;
  /** Wall time of the decode steps after the first token. */
  decodeMs: number;
}

export class Engine {
  readonly info: ModelInfo;
  private closed = false;

  private constructor(private readonly native: NativeEngine) {
    this.info = native.info();
  }

  static async load(modelDir: string, options: EngineOptions = {}): Promise<Engine> {
    return new Engine(await loadBinding().loadEngine(modelDir, options));
  }

  step(chunks: readonly ChunkSpec[], returnLogits = false): Promise<StepOutput> {
    return this.native.step(packStepRequest(chunks, returnLogits));
  }

  /** For callers that pack (or reuse) their own StepRequest. */
  stepPacked(req: StepRequest): Promise<StepOutput> {
    return this.native.step(req);
  }

  freeSequence(seqId: number): void {
    this.native.freeSequence(seqId);
  }

  sequenceLength(seqId: number): number {
    return this.native.sequenceLength(seqId);
  }

  kvStats(): KvStats {
    return this.native.kvStats();
  }

  expertStats(): ExpertStats {
    return this.native.expertStats();
  }

  registerAdapter(dir: string): Promise<NativeAdapterInfo> {
    return this.native.registerAdapter(dir);
  }

  unregisterAdapter(row: number): void {
    this.native.unregisterAdapter(row);
  }

  adapters(): NativeAdapterInfo[] {
    return this.native.adapters();
  }

  drainingRows(): ReadonlySet<number> {
    return new Set(this.native.adapters().filter((a) => a.draining).map((a) => a.row));
  }

  close(): void {
    this.closed = true;
    this.native.close();
  }

  /**
   * Generates a continuation of one sequence: prefills the prompt in chunks, then
   * decodes one token per step until EOS, a stop token, maxTokens or the model's
   * context end. onToken sees every emitted token (awaited, so a slow consumer slows
   * generation rather than buffering). The sequence is freed at the end, also on error.
   * For single-sequence use (the CLI); the scheduler batches many sequences itself.
   */
  async generate(
    promptIds: readonly number[],
    options: GenerateOptions,
    onToken?: (token: GeneratedToken) => void | Promise<void>,
  ): Promise<GenerateResult> {
    const { maxTokens, prefillChunk = 512, seqId = 0 } = options;
    if (promptIds.length === 0) throw new RangeError('generate: the prompt must have at least one token');
    if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new RangeError('generate: maxTokens must be an integer >= 1');
    if (!Number.isInteger(prefillChunk) || prefillChunk < 1) {
      throw new RangeError('generate: prefillChunk must be an integer >= 1');
    }
    const contextLeft = this.info.maxPositionEmbeddings - promptIds.length;
    if (contextLeft < 1) {
      throw new RangeError(
        `generate: the prompt has ${promptIds.length} tokens; the model's context is ${this.info.maxPositionEmbeddings}`,
      );
    }
    if (this.sequenceLength(seqId) !== -1) throw new Error(`generate: sequence ${seqId} is already in use`);

    const limit = Math.min(maxTokens, contextLeft);
    const stop = new Set(options.stop ?? []);
    const chunk = (tokens: ArrayLike<number>, sample: boolean): ChunkSpec => ({
      seqId,
      tokens,
      sample,
      adapter: options.adapterRow ?? 0,
      logprobs: sample && options.logprobs === true,
      temperature: options.temperature,
      topK: options.topK,
      topP: options.topP,
      seed: options.seed,
    });

    const start = performance.now();
    let prefillMs = 0;
    let completion = 0;
    let finishReason: FinishReason = 'length';
    try {
      let out: StepOutput | undefined;
      for (let at = 0; at < promptIds.length; at += prefillChunk) {
        const end = Math.min(at + prefillChunk, promptIds.length);
        out = await this.step([chunk(promptIds.slice(at, end), end === promptIds.length)]);
      }
      prefillMs = performance.now() - start;
      for (;;) {
        const token = out!.tokens[0];
        if (token === this.info.eosTokenId) {
          finishReason = 'eos';
          break;
        }
        if (stop.has(token)) {
          finishReason = 'stop';
          break;
        }
        const emitted: GeneratedToken = { token, index: completion };
        if (options.logprobs) emitted.logprob = out!.logprobs[0];
        completion++;
        await onToken?.(emitted);
        if (completion >= limit) break;
        out = await this.step([chunk([token], true)]);
      }
    } finally {
      if (!this.closed) this.freeSequence(seqId);
    }
    return {
      finishReason,
      promptTokens: promptIds.length,
      completionTokens: completion,
      prefillMs,
      decodeMs: performance.now() - start - prefillMs,
    };
  }
}
