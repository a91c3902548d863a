// Continuous batching: one engine step in flight at a time; each step carries one
// decode token for every running sequence plus prefill chunks of new (or preempted)
// sequences within a token budget, over any mix of adapters. Admission is bounded
// by the engine's free KV blocks; when decode runs out of blocks, the most recently
// admitted sequence is preempted (its KV freed, requeued first, recomputed later),
// except sequences of an adapter being removed, which cannot restart: those wait for
// blocks, and if nothing at all can run, the youngest of them ends with 'length'.
import type { ChunkSpec } from '../engine/engine.js';
import type { EnginePort } from './engine-port.js';
import { StopFilter } from './stop-filter.js';
import {
  RequestError,
  type FinishReason,
  type GenerationParams,
  type GenerationSink,
  type TextStream,
} from './request.js';

export interface SchedulerOptions {
  /** Most tokens (decode + prefill) per step. */
  tokenBudget?: number;
  /** Most requests waiting for admission; beyond it submit() refuses with `overloaded`. */
  maxWaiting?: number;
  /** Most sequences running at once. */
  maxRunning?: number;
  /** Text pieces for generated ids; absent: text is '' (stop strings then never match). */
  textStream?: (promptIds: readonly number[]) => TextStream;
}

export interface SchedulerStats {
  waiting: number;
  running: number;
  steps: number;
  lastBatchSize: number;
  lastBatchTokens: number;
  lastStepMs: number;
  preemptions: number;
}

/** What runs and waits right now: sequence counts and the adapters they belong to ('' is the base). */
export interface SchedulerActivity {
  running: number;
  waiting: number;
  runningAdapters: Set<string>;
  waitingAdapters: Set<string>;
}

/** Called after every step with its duration and size (for metrics). */
export type StepObserver = (ms: number, sequences: number, tokens: number) => void;

class Sequence {
  seqId = -1;
  /** Tokens in the engine's KV cache. */
  kvLen = 0;
  generated = 0;
  finished = false;
  readonly tokens: number[];
  readonly stop: StopFilter;
  readonly limit: number;

  constructor(
    readonly params: GenerationParams,
    readonly sink: GenerationSink,
    readonly text: TextStream | undefined,
    maxPositions: number,
  ) {
    this.tokens = [...params.promptIds];
    this.stop = new StopFilter(params.stop);
    this.limit = Math.min(params.maxTokens, maxPositions - params.promptIds.length);
  }
}

export interface RequestHandle {
  cancel(): void;
}

export class BatchScheduler {
  private readonly tokenBudget: number;
  private readonly maxWaiting: number;
  private readonly maxRunning: number;
  private readonly maxPositions: number;
  /** Preempted sequences: admitted before any new request. */
  private readonly resumeQueue: Sequence[] = [];
  /** New requests per adapter name, served round-robin. */
  private readonly queues = new Map<string, Sequence[]>();
  private rrOrder: string[] = [];
  private rrNext = 0;
  private waitingCount = 0;
  /** In admission order (last = most recent). */
  private running: Sequence[] = [];
  private nextSeqId = 1;
  private looping = false;
  private closed = false;
  private idleWaiters: (() => void)[] = [];
  private readonly observers: StepObserver[] = [];
  readonly stats: SchedulerStats = { waiting: 0, running: 0, steps: 0, lastBatchSize: 0, lastBatchTokens: 0, lastStepMs: 0, preemptions: 0 };

  constructor(
    private readonly engine: EnginePort,
    private readonly options: SchedulerOptions = {},
  ) {
    this.tokenBudget = options.tokenBudget ?? 512;
    this.maxWaiting = options.maxWaiting ?? 1024;
    this.maxRunning = options.maxRunning ?? 256;
    this.maxPositions = engine.info.maxPositionEmbeddings;
  }

  onStep(observer: StepObserver): void {
    this.observers.push(observer);
  }

  /** Queues a request; throws RequestError (bad_request / overloaded / shutting_down) when refused. */
  submit(params: GenerationParams, sink: GenerationSink): RequestHandle {
    if (this.closed) throw new RequestError('shutting_down', 'the server is shutting down');
    this.validate(params);
    if (this.waitingCount >= this.maxWaiting) {
      throw new RequestError('overloaded', `${this.waitingCount} requests are already waiting (limit ${this.maxWaiting}); retry later`);
    }
    const seq = new Sequence(params, sink, this.options.textStream?.(params.promptIds), this.maxPositions);
    let q = this.queues.get(params.adapterName);
    if (!q) {
      q = [];
      this.queues.set(params.adapterName, q);
      this.rrOrder.push(params.adapterName);
    }
    q.push(seq);
    this.waitingCount++;
    this.kick();
    return { cancel: () => this.finish(seq, 'cancelled') };
  }

  private validate(p: GenerationParams): void {
    const vocab = this.engine.info.vocabSize;
    if (p.promptIds.length === 0) throw new RequestError('bad_request', 'the prompt is empty');
    for (const t of p.promptIds) {
      if (!Number.isInteger(t) || t < 0 || t >= vocab) throw new RequestError('bad_request', `prompt token ${t} is outside [0, ${vocab})`);
    }
    if (p.promptIds.length >= this.maxPositions) {
      throw new RequestError('bad_request', `the prompt has ${p.promptIds.length} tokens; the model's context is ${this.maxPositions}, leave room for at least one generated token`);
    }
    if (!Number.isInteger(p.maxTokens) || p.maxTokens < 1 || p.maxTokens > this.maxPositions) {
      throw new RequestError('bad_request', `max_tokens must be an integer in [1, ${this.maxPositions}]`);
    }
    const kv = this.engine.kvStats();
    if (Math.ceil((p.promptIds.length + 1) / kv.blockSize) > kv.totalBlocks) {
      throw new RequestError('bad_request', `the prompt needs more KV-cache blocks than the server has (${kv.totalBlocks} of ${kv.blockSize} tokens)`);
    }
  }

  /** Stops admitting, cancels everything and resolves once no step is in flight. */
  async close(): Promise<void> {
    this.closed = true;
    for (const seq of [...this.resumeQueue, ...[...this.queues.values()].flat(), ...this.running]) this.finish(seq, 'cancelled');
    await this.idle();
  }

  /** Resolves when no step is in flight and nothing is queued or running. */
  idle(): Promise<void> {
    if (!this.looping) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private kick(): void {
    if (this.looping) return;
    this.looping = true;
    setImmediate(() => void this.loop());
  }

  private async loop(): Promise<void> {
    try {
      for (;;) {
        const batch = this.buildBatch();
        if (batch.length === 0) break;
        await this.runStep(batch);
        // Let I/O (new requests, cancels, socket writes) in between steps.
        await new Promise((r) => setImmediate(r));
      }
    } finally {
      this.looping = false;
      this.updateCounts();
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  private updateCounts(): void {
    this.stats.waiting = this.waitingCount + this.resumeQueue.length;
    this.stats.running = this.running.length;
  }

  private blocks(len: number, blockSize: number): number {
    return Math.ceil(len / blockSize);
  }

  private buildBatch(): { seq: Sequence; n: number }[] {
    const { blockSize, freeBlocks } = this.engine.kvStats();
    let free = freeBlocks;
    let budget = this.tokenBudget;
    const batch: { seq: Sequence; n: number }[] = [];
    const need = (seq: Sequence, n: number) => this.blocks(seq.kvLen + n, blockSize) - this.blocks(seq.kvLen, blockSize);

    // Running sequences first, in admission order: decodes (and unfinished prefills).
    let draining: ReadonlySet<number> | undefined;
    const stalled: Sequence[] = [];
    let i = 0;
    while (i < this.running.length && budget > 0) {
      const seq = this.running[i];
      const n = Math.min(seq.tokens.length - seq.kvLen, budget);
      let gone = false;
      while (need(seq, n) > free) {
        draining ??= this.engine.drainingRows();
        const victim = this.youngestPreemptible(i, draining);
        if (!victim) break;
        if (victim === seq && this.running.length === 1) {
          // Alone and still out of blocks: the cache cannot hold it any longer.
          free += this.blocks(seq.kvLen, blockSize);
          this.finish(seq, 'length');
          gone = true;
          break;
        }
        free += this.preempt(victim);
        if (victim === seq) {
          gone = true;
          break;
        }
      }
      if (gone) continue; // running[i] is now the next sequence
      i++;
      if (need(seq, n) > free) {
        stalled.push(seq); // only sequences of draining adapters could free blocks: wait for them
        continue;
      }
      free -= need(seq, n);
      budget -= n;
      batch.push({ seq, n });
    }

    // Admit waiting sequences while budget, blocks and slots last.
    while (budget > 0 && this.running.length < this.maxRunning) {
      const seq = this.peekWaiting();
      if (!seq) break;
      draining ??= this.engine.drainingRows();
      if (draining.has(seq.params.adapterRow)) {
        // The engine would refuse it (and with it the whole step): it cannot start any more.
        this.fail(seq, removedError(seq.params.adapterName));
        continue;
      }
      const n = Math.min(seq.tokens.length, budget);
      // Keep one block spare per admission so a fresh sequence can take its first decode,
      // unless nothing runs: alone, it ends with 'length' if the cache is full anyway, and
      // demanding the spare would strand for good a prompt that fits the cache exactly.
      const spare = this.running.length > 0 ? 1 : 0;
      if (need(seq, n) + spare > free) break;
      this.popWaiting(seq);
      seq.seqId = this.nextSeqId;
      this.nextSeqId = this.nextSeqId >= 0x7ffffffe ? 1 : this.nextSeqId + 1;
      seq.kvLen = 0;
      this.running.push(seq);
      free -= need(seq, n);
      budget -= n;
      batch.push({ seq, n });
    }
    if (batch.length === 0 && stalled.length > 0) {
      // Nothing can run and nothing can be preempted: end the youngest stalled sequence.
      this.finish(stalled[stalled.length - 1], 'length');
      return this.buildBatch();
    }
    this.updateCounts();
    return batch;
  }

  /**
   * Fails every request of `adapterName` that has not started (queued, or preempted and
   * waiting to restart): the adapter is being removed, so they can no longer run on it.
   * Running ones finish on the draining row.
   */
  failWaiting(adapterName: string): void {
    const waiting = [...this.resumeQueue, ...(this.queues.get(adapterName) ?? [])];
    for (const seq of waiting) if (seq.params.adapterName === adapterName) this.fail(seq, removedError(adapterName));
  }

  /** Live counts and adapter names (read at scrape time, unlike `stats`, which steps update). */
  activity(): SchedulerActivity {
    const runningAdapters = new Set(this.running.map((s) => s.params.adapterName));
    const waitingAdapters = new Set(this.resumeQueue.map((s) => s.params.adapterName));
    for (const [name, q] of this.queues) if (q.length > 0) waitingAdapters.add(name);
    return { running: this.running.length, waiting: this.waitingCount + this.resumeQueue.length, runningAdapters, waitingAdapters };
  }

  /** The most recently admitted running sequence at index >= from not on a draining adapter row. */
  private youngestPreemptible(from: number, draining: ReadonlySet<number>): Sequence | undefined {
    for (let j = this.running.length - 1; j >= from; j--) {
      if (!draining.has(this.running[j].params.adapterRow)) return this.running[j];
    }
    return undefined;
  }

  /** Frees a running sequence's KV and queues it first for recompute; returns the blocks freed. */
  private preempt(seq: Sequence): number {
    const { blockSize } = this.engine.kvStats();
    const freed = this.blocks(seq.kvLen, blockSize);
    this.engine.freeSequence(seq.seqId);
    this.running.splice(this.running.indexOf(seq), 1);
    seq.kvLen = 0;
    this.resumeQueue.unshift(seq);
    this.stats.preemptions++;
    return freed;
  }

  private peekWaiting(): Sequence | undefined {
    if (this.resumeQueue.length > 0) return this.resumeQueue[0];
    for (let k = 0; k < this.rrOrder.length; k++) {
      const name = this.rrOrder[(this.rrNext + k) % this.rrOrder.length];
      const q = this.queues.get(name)!;
      if (q.length > 0) {
        this.rrNext = (this.rrNext + k) % this.rrOrder.length;
        return q[0];
      }
    }
    return undefined;
  }

  private popWaiting(seq: Sequence): void {
    if (this.resumeQueue[0] === seq) {
      this.resumeQueue.shift();
      return;
    }
    const name = seq.params.adapterName;
    this.queues.get(name)!.shift();
    this.waitingCount--;
    this.rrNext = (this.rrNext + 1) % this.rrOrder.length;
    this.pruneQueue(name);
  }

  private pruneQueue(name: string): void {
    const q = this.queues.get(name);
    if (!q || q.length > 0) return;
    const at = this.rrOrder.indexOf(name);
    this.queues.delete(name);
    this.rrOrder.splice(at, 1);
    if (this.rrNext > at) this.rrNext--;
    if (this.rrOrder.length === 0 || this.rrNext >= this.rrOrder.length) this.rrNext = 0;
  }

  private async runStep(batch: { seq: Sequence; n: number }[]): Promise<void> {
    const chunks: ChunkSpec[] = batch.map(({ seq, n }) => {
      const p = seq.params;
      const sample = seq.kvLen + n === seq.tokens.length;
      return {
        seqId: seq.seqId,
        tokens: seq.tokens.slice(seq.kvLen, seq.kvLen + n),
        adapter: p.adapterRow,
        sample,
        logprobs: sample && p.logprobs,
        temperature: p.temperature,
        topK: p.topK,
        topP: p.topP,
        seed: p.seed,
      };
    });
    const tokens = chunks.reduce((s, c) => s + c.tokens.length, 0);
    const start = performance.now();
    let out;
    try {
      out = await this.engine.step(chunks);
    } catch (err) {
      const e = new RequestError('internal', `engine step failed: ${(err as Error).message}`);
      for (const { seq } of batch) this.fail(seq, e);
      return;
    }
    const ms = performance.now() - start;
    this.stats.steps++;
    this.stats.lastBatchSize = batch.length;
    this.stats.lastBatchTokens = tokens;
    this.stats.lastStepMs = ms;
    for (const o of this.observers) o(ms, batch.length, tokens);

    batch.forEach(({ seq, n }, i) => {
      if (seq.finished) return; // cancelled while the step ran
      seq.kvLen += n;
      if (chunks[i].sample) this.accept(seq, out.tokens[i], out.logprobs[i]);
    });
  }

  private accept(seq: Sequence, token: number, logprob: number): void {
    if (token === this.engine.info.eosTokenId) {
      this.finish(seq, 'eos');
      return;
    }
    seq.tokens.push(token);
    const index = seq.generated++;
    const piece = seq.text ? seq.text.push(token) : '';
    const { text, stopped } = seq.stop.push(piece);
    const last = !stopped && seq.generated >= seq.limit;
    const tail = last ? seq.stop.flush() + (seq.text?.flush() ?? '') : '';
    if (stopped) {
      // The token that completed the stop string is not emitted (its text is the stop string's).
      if (text !== '') seq.sink.onToken({ index, token, text, ...(seq.params.logprobs ? { logprob } : {}) });
      else seq.generated--;
      this.finish(seq, 'stop');
      return;
    }
    seq.sink.onToken({ index, token, text: text + tail, ...(seq.params.logprobs ? { logprob } : {}) });
    if (last) this.finish(seq, 'length');
  }

  private detach(seq: Sequence): boolean {
    if (seq.finished) return false;
    seq.finished = true;
    const r = this.running.indexOf(seq);
    if (r !== -1) {
      this.running.splice(r, 1);
      this.engine.freeSequence(seq.seqId);
    } else {
      const at = this.resumeQueue.indexOf(seq);
      if (at !== -1) this.resumeQueue.splice(at, 1);
      else {
        const q = this.queues.get(seq.params.adapterName);
        const k = q ? q.indexOf(seq) : -1;
        if (k !== -1) {
          q!.splice(k, 1);
          this.waitingCount--;
          this.pruneQueue(seq.params.adapterName);
        }
      }
    }
    this.updateCounts();
    return true;
  }

  private finish(seq: Sequence, reason: FinishReason): void {
    if (!this.detach(seq)) return;
    const text = reason === 'length' || reason === 'stop' ? '' : seq.stop.flush() + (seq.text?.flush() ?? '');
    seq.sink.onDone({ finishReason: reason, promptTokens: seq.params.promptIds.length, completionTokens: seq.generated, text });
  }

  private fail(seq: Sequence, err: RequestError): void {
    if (this.detach(seq)) seq.sink.onError(err);
  }
}

function removedError(adapterName: string): RequestError {
  return new RequestError('unknown_adapter', `adapter '${adapterName}' was removed before this request started`);
}
