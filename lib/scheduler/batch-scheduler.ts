// Continuous batching: one engine step in flight at a time; each step carries one
// decode token for every running sequence plus prefill chunks of new (or preempted)
// sequences within a token budget, over any mix of adapters and clients. Which
// waiting request comes next is the WaitingQueue's policy (fair across clients, then
// adapters). Admission is bounded by the engine's free KV blocks and by maxRunning;
// when decode runs out of blocks, the most recently admitted sequence is preempted
// (its KV freed, requeued at the front of its client's queue, recomputed later),
// except sequences of an adapter being removed, which cannot restart: those wait for
// blocks, and if nothing at all can run, the youngest of them ends with 'length'.
// Fair share: when a client below its share of the running sequences (maxRunning over
// the clients with work) waits for room that another client above its share holds,
// the latter's youngest sequence is preempted to make it.
// Growth reserve (after SGLang's new-token ratio): a request is admitted only if the
// blocks left also hold a fraction of what the running sequences may still generate, so
// a full cache does not preempt and recompute the same sequences over and over. The
// fraction is the larger of what recent requests used of their length (a moving average)
// and a floor that goes to 1 when decode runs out of blocks anyway and decays step by step.
import type { StepOutput } from '../engine/binding.js';
import type { ChunkSpec } from '../engine/engine.js';
import type { EnginePort } from './engine-port.js';
import { StopFilter } from './stop-filter.js';
import { WaitingQueue } from './waiting-queue.js';
import {
  RequestError,
  type FinishReason,
  type GenerationParams,
  type GenerationSink,
  type TextStream,
  type TokenEvent,
} from './request.js';

export interface SchedulerOptions {
  /** Most tokens (decode + prefill) per step. */
  tokenBudget?: number;
  /**
   * Most prompt tokens one running sequence prefills per step while others wait
   * (default a quarter of tokenBudget), so a long prompt never holds back admission.
   */
  longPrefillTokens?: number;
  /** Most requests waiting for admission; beyond it submit() refuses with `overloaded`. */
  maxWaiting?: number;
  /** Most sequences running at once. */
  maxRunning?: number;
  /** Text pieces for generated ids; absent: text is '' (stop strings then never match). */
  textStream?: (promptIds: readonly number[]) => TextStream;
  /** Every id that ends generation (config.json and generation_config.json); default the engine's one. */
  eosTokenIds?: readonly number[];
  /**
   * Admit only while the growth reserve fits (default true); false admits whenever the
   * prompt fits (vLLM's optimistic admission) and leaves a full cache to preemption.
   */
  reserveGrowth?: boolean;
  /**
   * How long a client counts as present after its last request (default 1000 ms): while
   * another client is present, a client's prompt tokens take at most longPrefillTokens
   * of a step (see buildBatch).
   */
  presenceMs?: number;
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
  readonly client: string;
  readonly adapter: string;
  /** Tokens in the engine's KV cache. */
  kvLen = 0;
  generated = 0;
  finished = false;
  readonly tokens: number[];
  readonly stop: StopFilter;
  readonly limit: number;
  /** Generated tokens and how often each came, kept when a penalty needs them. */
  readonly counts: Map<number, number> | undefined;

  constructor(
    readonly params: GenerationParams,
    readonly sink: GenerationSink,
    readonly text: TextStream | undefined,
    maxPositions: number,
  ) {
    this.client = params.client;
    this.adapter = params.adapterName;
    this.tokens = [...params.promptIds];
    this.stop = new StopFilter(params.stop);
    this.limit = params.maxTokens ?? maxPositions - params.promptIds.length;
    this.counts = params.presencePenalty || params.frequencyPenalty ? new Map() : undefined;
  }
}

// The growth reserve's ratio: its start, its floor, and the steps it takes to decay from
// the one to the other (SGLang's defaults: 0.7, 0.7 x 0.14, 600 steps). Remaining lengths
// are clipped as SGLang's are, so a request without max_tokens on a long-context model
// does not reserve its whole context.
const GROWTH_RATIO_INIT = 0.7;
const GROWTH_RATIO_MIN = 0.7 * 0.14;
const GROWTH_RATIO_DECAY = (GROWTH_RATIO_INIT - GROWTH_RATIO_MIN) / 600;
const GROWTH_CLIP_TOKENS = 4096;
const USED_SHARE_WEIGHT = 0.05; // about the last 20 requests

export interface RequestHandle {
  cancel(): void;
}

export class BatchScheduler {
  private readonly tokenBudget: number;
  private readonly longPrefillTokens: number;
  private readonly maxWaiting: number;
  private readonly maxRunning: number;
  private readonly maxPositions: number;
  private readonly waiting = new WaitingQueue<Sequence>();
  /** In admission order (last = most recent). */
  private running: Sequence[] = [];
  private readonly runningByClient = new Map<string, number>();
  private readonly eos: ReadonlySet<number>;
  /** While a step is absorbed: the sinks' events, delivered once the next step is launched. */
  private emitting: (() => void)[] | undefined;
  private nextSeqId = 1;
  private looping = false;
  private closed = false;
  private idleWaiters: (() => void)[] = [];
  /** Whether the last batch was a newcomers' step (see buildBatch). */
  private lastNewcomerStep = false;
  /** The growth reserve's decaying floor (see growthBlocks). */
  private growthRatio = GROWTH_RATIO_INIT;
  /** The share of its length (clipped) recent requests generated before they ended: a moving average. */
  private usedShare = GROWTH_RATIO_MIN;
  private readonly reserveGrowth: boolean;
  private readonly presenceMs: number;
  /** When each recently present client last sent a request (pruned to presenceMs, see othersPresent). */
  private readonly lastRequestAt = new Map<string, number>();
  private prunedAt = 0;
  private readonly observers: StepObserver[] = [];
  readonly stats: SchedulerStats = { waiting: 0, running: 0, steps: 0, lastBatchSize: 0, lastBatchTokens: 0, lastStepMs: 0, preemptions: 0 };

  constructor(
    private readonly engine: EnginePort,
    private readonly options: SchedulerOptions = {},
  ) {
    this.tokenBudget = options.tokenBudget ?? 512;
    this.longPrefillTokens = Math.max(1, options.longPrefillTokens ?? Math.ceil(this.tokenBudget / 4));
    this.maxWaiting = options.maxWaiting ?? 1024;
    // Every running sequence decodes each step, and at least half a step is left for
    // prefills (a newcomer's prompt must not trickle in a token per step behind a full
    // batch of decodes): so at most half the token budget runs.
    this.maxRunning = Math.max(1, Math.min(options.maxRunning ?? 256, Math.floor(this.tokenBudget / 2)));
    this.maxPositions = engine.info.maxPositionEmbeddings;
    this.eos = new Set(options.eosTokenIds ?? [engine.info.eosTokenId]);
    this.reserveGrowth = options.reserveGrowth ?? true;
    this.presenceMs = options.presenceMs ?? 1000;
  }

  onStep(observer: StepObserver): void {
    this.observers.push(observer);
  }

  /** Queues a request; throws RequestError (bad_request / overloaded / shutting_down) when refused. */
  submit(params: GenerationParams, sink: GenerationSink): RequestHandle {
    if (this.closed) throw new RequestError('shutting_down', 'the server is shutting down');
    this.validate(params);
    if (this.waiting.size >= this.maxWaiting) this.makeQueueRoom(params.client);
    const seq = new Sequence(params, sink, this.options.textStream?.(params.promptIds), this.maxPositions);
    this.lastRequestAt.set(params.client, performance.now());
    this.waiting.push(seq);
    this.updateCounts();
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
    if (p.maxTokens !== undefined) {
      if (!Number.isInteger(p.maxTokens) || p.maxTokens < 1) throw new RequestError('bad_request', 'max_tokens must be an integer >= 1', 'max_tokens');
      const prompt = p.promptIds.length;
      if (prompt + p.maxTokens > this.maxPositions) {
        // vLLM's answer, word for word, so clients that parse it keep working.
        throw new RequestError(
          'bad_request',
          `This model's maximum context length is ${this.maxPositions} tokens. However, you requested ${prompt + p.maxTokens} tokens (${prompt} in the messages, ${p.maxTokens} in the completion). Please reduce the length of the messages or completion.`,
          'max_tokens',
        );
      }
    }
    const kv = this.engine.kvStats();
    if (Math.ceil((p.promptIds.length + 1) / kv.blockSize) > kv.totalBlocks) {
      throw new RequestError('bad_request', `the prompt needs more KV-cache blocks than the server has (${kv.totalBlocks} of ${kv.blockSize} tokens)`);
    }
  }

  /**
   * The queue is full: the client holding the most waiting requests gives up its newest
   * one for `client` when it holds at least two more; otherwise `client` is refused.
   * So one client filling the queue cannot lock the others out of it.
   */
  private makeQueueRoom(client: string): void {
    let hog = '';
    let most = -1;
    for (const c of this.waiting.clientNames()) {
      const n = this.waiting.countOf(c);
      if (n > most) [hog, most] = [c, n];
    }
    const victim = hog !== client && most >= this.waiting.countOf(client) + 2 ? this.waiting.newestOf(hog) : undefined;
    if (!victim) {
      throw new RequestError('overloaded', `${this.waiting.size} requests are already waiting (limit ${this.maxWaiting}); retry later`);
    }
    this.fail(victim, new RequestError('overloaded', `the queue is full (${this.maxWaiting}) and this client holds the most waiting requests; retry later`));
  }

  /** Stops admitting, cancels everything and resolves once no step is in flight. */
  async close(): Promise<void> {
    this.closed = true;
    for (const seq of [...this.waiting, ...this.running]) this.finish(seq, 'cancelled');
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
      let batch = this.buildBatch();
      let step = batch.length > 0 ? this.launch(batch) : undefined;
      while (step) {
        const out = await step;
        // Absorb the step (new lengths, sampled tokens, which sequences end) but hold
        // the sinks' events; start the next step; then deliver the events while the
        // engine computes it: detokenizing, JSON and socket writes overlap the step
        // instead of sitting between two of them. Absorb, launch and deliver run in one
        // tick, so no cancel or request can come between them.
        this.emitting = [];
        if (out) this.absorb(batch, out);
        batch = this.buildBatch();
        step = batch.length > 0 ? this.launch(batch) : undefined;
        const events = this.emitting;
        this.emitting = undefined;
        for (const e of events) e();
      }
    } finally {
      this.looping = false;
      this.updateCounts();
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** Runs `event` now, or after the next step is launched while a step is being absorbed. */
  private deliver(event: () => void): void {
    if (this.emitting) this.emitting.push(event);
    else event();
  }

  private updateCounts(): void {
    this.stats.waiting = this.waiting.size;
    this.stats.running = this.running.length;
  }

  private blocks(len: number, blockSize: number): number {
    return Math.ceil(len / blockSize);
  }

  private buildBatch(): { seq: Sequence; n: number }[] {
    const { blockSize, freeBlocks, totalBlocks } = this.engine.kvStats();
    // Clients with work and their fair shares, once per step: admissions and preemptions
    // below move sequences between running and waiting without changing which clients
    // have work (a request ended here can, which leaves this step's shares a little small).
    const clients = this.activeClients();
    const fair = this.shares(clients, totalBlocks);
    let budget = this.tokenBudget;
    const batch: { seq: Sequence; n: number }[] = [];
    const need = (seq: Sequence, n: number) => this.blocks(seq.kvLen + n, blockSize) - this.blocks(seq.kvLen, blockSize);
    let draining: ReadonlySet<number> | undefined;
    const drainingRows = () => (draining ??= this.engine.drainingRows());
    let free = freeBlocks + this.makeFairRoom(fair, freeBlocks, blockSize, drainingRows);

    // A client with nothing running gets its first prompt prefilled in a step of its own,
    // without the running decodes: its first token then waits for the step in flight and
    // its own prompt, not for every other client's batch as well (the order vLLM's
    // prefill-first scheduler gives everyone; here only newcomers, so no client can use it
    // to hold back the others). Never two such steps in a row: running sequences still
    // advance at least every other step, however many newcomers arrive.
    const newcomer = (client: string) => this.runningOf(client) === 0;
    const newcomers = !this.lastNewcomerStep && this.running.length > 0 && this.waiting.peek(newcomer) !== undefined;
    this.lastNewcomerStep = newcomers;

    // While another client is present (has work, or sent a request within presenceMs),
    // each client's prompt tokens (new prompts, slices, recomputes) take at most
    // longPrefillTokens of a step: a present client's next request waits for the step in
    // flight, so that step must not be a whole budget of someone else's prompts. Alone,
    // a client has the whole budget.
    const shared = this.othersPresent(clients);
    const prefilled = new Map<string, number>(); // this step's prompt tokens per client
    const prefillRoom = (client: string) => (shared ? this.longPrefillTokens - (prefilled.get(client) ?? 0) : Infinity);
    const countPrefill = (client: string, n: number) => prefilled.set(client, (prefilled.get(client) ?? 0) + n);

    // Running sequences first, in admission order: decodes (and unfinished prefills, in
    // chunks of at most longPrefillTokens while requests wait or another client is present).
    const stalled: Sequence[] = [];
    let i = 0;
    while (!newcomers && i < this.running.length && budget > 0) {
      const seq = this.running[i];
      const left = seq.tokens.length - seq.kvLen;
      const chunk = left > 1 && (this.waiting.size > 0 || shared) ? Math.min(this.longPrefillTokens, prefillRoom(seq.client)) : left;
      if (chunk <= 0) {
        i++; // its client's prompt tokens are spent for this step
        continue;
      }
      const n = Math.min(left, budget, chunk);
      let gone = false;
      while (need(seq, n) > free) {
        const victim = this.youngestPreemptible(i, drainingRows());
        if (!victim) break;
        if (victim === seq && this.running.length === 1) {
          // Alone and still out of blocks: the cache cannot hold it any longer.
          free += this.blocks(seq.kvLen, blockSize);
          this.finish(seq, 'length');
          gone = true;
          break;
        }
        free += this.preempt(victim);
        this.growthRatio = 1; // the reserve was too small: reserve everything until it decays
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
      if (left > 1) countPrefill(seq.client, n);
      batch.push({ seq, n });
    }

    // Admit waiting sequences while budget, blocks and slots last. A client whose next
    // request does not fit is passed over for this step only (it keeps its turn), so
    // one large recompute does not hold back every other client's small request.
    const passed = new Set<string>();
    if (newcomers) for (const c of this.runningByClient.keys()) passed.add(c);
    // Blocks the running sequences (in this step or not: a newcomers' step leaves them out)
    // may still need beyond what they hold after it; and per client, those plus the held.
    const inBatch = new Map(batch.map(({ seq, n }) => [seq, n]));
    let reserved = 0;
    const committed = new Map<string, number>();
    for (const seq of this.running) {
      const after = seq.kvLen + (inBatch.get(seq) ?? 0);
      const growth = this.growthBlocks(seq, after, blockSize);
      reserved += growth;
      committed.set(seq.client, (committed.get(seq.client) ?? 0) + this.blocks(after, blockSize) + growth);
    }
    // A client below its share of running slots and of KV blocks (its reserve counted as
    // held: room to grow is what it asks for) is admitted on the blocks actually free:
    // that room is what makeFairRoom guarantees it. Anyone else leaves the reserve free.
    const belowFairShare = (client: string) => clients > 1 && this.runningOf(client) < fair.slots && (committed.get(client) ?? 0) < fair.blocks;
    while (budget > 0 && this.running.length < this.maxRunning) {
      const seq = this.nextToAdmit(passed, fair.slots);
      if (!seq) break;
      if (drainingRows().has(seq.params.adapterRow)) {
        // The engine would refuse it: it cannot start any more.
        this.fail(seq, removedError(seq.params.adapterName));
        continue;
      }
      // A client's first prompt of the step may be cut to its share (the rest prefills in
      // later steps); a further one waits for a step with room for all of it.
      const room = prefillRoom(seq.client);
      if (room < seq.tokens.length && (room <= 0 || prefilled.has(seq.client))) {
        passed.add(seq.client);
        continue;
      }
      const n = Math.min(seq.tokens.length, budget, room);
      // Keep one block spare per admission so a fresh sequence can take its first decode,
      // unless nothing runs: alone, it ends with 'length' if the cache is full anyway, and
      // demanding the spare would strand for good a prompt that fits the cache exactly.
      const spare = this.running.length > 0 ? 1 : 0;
      const growth = this.growthBlocks(seq, n, blockSize);
      const reserve = this.reserveGrowth && this.running.length > 0 && !belowFairShare(seq.client) ? reserved + growth : 0;
      if (need(seq, n) + spare + reserve > free) {
        passed.add(seq.client);
        continue;
      }
      reserved += growth;
      committed.set(seq.client, (committed.get(seq.client) ?? 0) + this.blocks(n, blockSize) + growth);
      this.waiting.pop(seq);
      seq.seqId = this.nextSeqId;
      this.nextSeqId = this.nextSeqId >= 0x7ffffffe ? 1 : this.nextSeqId + 1;
      seq.kvLen = 0;
      this.addRunning(seq);
      if (newcomers) passed.add(seq.client); // its further requests wait for an ordinary step
      free -= need(seq, n);
      budget -= n;
      countPrefill(seq.client, n);
      batch.push({ seq, n });
    }
    if (newcomers && batch.length === 0) return this.buildBatch(); // no newcomer fits: an ordinary step
    if (batch.length === 0 && stalled.length > 0) {
      // Nothing can run and nothing can be preempted: end the youngest stalled sequence.
      this.finish(stalled[stalled.length - 1], 'length');
      return this.buildBatch();
    }
    this.updateCounts();
    return batch;
  }

  /**
   * Blocks `seq` may still take beyond `kvLenAfter` tokens held: the rest of its prompt, and
   * the reserve's ratio of the tokens it may still generate (clipped), within the model's context.
   */
  private growthBlocks(seq: Sequence, kvLenAfter: number, blockSize: number): number {
    const toGenerate = Math.min(GROWTH_CLIP_TOKENS, Math.max(0, seq.limit - seq.generated));
    const ratio = Math.max(this.growthRatio, this.usedShare);
    const end = Math.min(this.maxPositions, seq.tokens.length + Math.ceil(ratio * toGenerate));
    return Math.max(0, this.blocks(end, blockSize) - this.blocks(kvLenAfter, blockSize));
  }

  /**
   * Whether a client other than the one with work is present: more than one has work, or
   * one sent a request within presenceMs and has none now.
   */
  private othersPresent(clients: number): boolean {
    if (clients > 1) return true;
    const now = performance.now();
    if (now - this.prunedAt > this.presenceMs / 10) {
      this.prunedAt = now;
      for (const [c, at] of this.lastRequestAt) if (now - at > this.presenceMs) this.lastRequestAt.delete(c);
    }
    if (this.lastRequestAt.size > 1) return true;
    for (const c of this.lastRequestAt.keys()) return !this.runningByClient.has(c) && this.waiting.countOf(c) === 0;
    return false;
  }

  /** Clients with work (running or waiting). */
  private activeClients(): number {
    const clients = new Set(this.runningByClient.keys());
    for (const c of this.waiting.clientNames()) clients.add(c);
    return Math.max(1, clients.size);
  }

  /** What each client may hold while others wait: running slots and KV blocks over the clients with work. */
  private shares(clients: number, totalBlocks: number): { slots: number; blocks: number } {
    return { slots: Math.max(1, Math.floor(this.maxRunning / clients)), blocks: Math.max(1, Math.floor(totalBlocks / clients)) };
  }

  private runningOf(client: string): number {
    return this.runningByClient.get(client) ?? 0;
  }

  /** A client below its share first; else whoever's turn it is; never one in `passed`. */
  private nextToAdmit(passed: ReadonlySet<string>, share: number): Sequence | undefined {
    return this.waiting.peek((c) => !passed.has(c) && this.runningOf(c) < share) ?? this.waiting.peek((c) => !passed.has(c));
  }

  /**
   * Makes room for the first waiting client below its fair share (of running slots and
   * of KV blocks: the totals over the clients with work) when its next request does not
   * fit, by preempting the youngest sequences of the client furthest above its share of
   * what is short. Returns the blocks freed.
   */
  private makeFairRoom(fair: { slots: number; blocks: number }, freeBlocks: number, blockSize: number, drainingRows: () => ReadonlySet<number>): number {
    const { slots: slotShare, blocks: blockShare } = fair;
    let freed = 0;
    for (;;) {
      const blocksOf = new Map<string, number>();
      let growth = 0; // blocks the running decodes take this step
      for (const r of this.running) {
        blocksOf.set(r.client, (blocksOf.get(r.client) ?? 0) + this.blocks(r.kvLen, blockSize));
        growth += this.blocks(r.kvLen + 1, blockSize) - this.blocks(r.kvLen, blockSize);
      }
      const cand = this.waiting.peek((c) => this.runningOf(c) < slotShare && (blocksOf.get(c) ?? 0) < blockShare);
      if (!cand) return freed;
      const candBlocks = this.blocks(Math.min(cand.tokens.length, this.tokenBudget), blockSize) + (this.running.length > 0 ? 1 : 0);
      const slotsShort = this.running.length >= this.maxRunning;
      const blocksShort = growth + candBlocks > freeBlocks + freed;
      if (!slotsShort && !blocksShort) return freed;
      const excess = (client: string) =>
        Math.max(slotsShort ? this.runningOf(client) - slotShare : 0, blocksShort ? (blocksOf.get(client) ?? 0) - blockShare : 0);
      let victim: Sequence | undefined;
      let most = 0;
      for (let j = this.running.length - 1; j >= 0; j--) {
        const r = this.running[j];
        if (r.client === cand.client || drainingRows().has(r.params.adapterRow)) continue;
        const e = excess(r.client);
        if (e > most) [victim, most] = [r, e];
      }
      if (!victim) return freed;
      freed += this.preempt(victim);
    }
  }

  private addRunning(seq: Sequence): void {
    this.running.push(seq);
    this.runningByClient.set(seq.client, this.runningOf(seq.client) + 1);
  }

  private removeRunning(seq: Sequence): boolean {
    const r = this.running.indexOf(seq);
    if (r === -1) return false;
    this.running.splice(r, 1);
    const n = this.runningOf(seq.client) - 1;
    if (n > 0) this.runningByClient.set(seq.client, n);
    else this.runningByClient.delete(seq.client);
    return true;
  }

  /**
   * Fails every request of `adapterName` that has not started (queued, or preempted and
   * waiting to restart): the adapter is being removed, so they can no longer run on it.
   * Running ones finish on the draining row.
   */
  failWaiting(adapterName: string): void {
    for (const seq of this.waiting) if (seq.adapter === adapterName) this.fail(seq, removedError(adapterName));
  }

  /**
   * The growth reserve now (read at scrape time): the share of their remaining length it
   * holds room for (0 with optimistic admission) and the blocks that makes for the running
   * sequences beyond what they hold.
   */
  growthReserve(): { ratio: number; blocks: number } {
    if (!this.reserveGrowth) return { ratio: 0, blocks: 0 };
    const { blockSize } = this.engine.kvStats();
    let blocks = 0;
    for (const seq of this.running) blocks += this.growthBlocks(seq, seq.kvLen, blockSize);
    return { ratio: Math.max(this.growthRatio, this.usedShare), blocks };
  }

  /** Live counts and adapter names (read at scrape time, unlike `stats`, which steps update). */
  activity(): SchedulerActivity {
    const runningAdapters = new Set(this.running.map((s) => s.adapter));
    const waitingAdapters = new Set([...this.waiting].map((s) => s.adapter));
    return { running: this.running.length, waiting: this.waiting.size, runningAdapters, waitingAdapters };
  }

  /** The most recently admitted running sequence at index >= from not on a draining adapter row. */
  private youngestPreemptible(from: number, draining: ReadonlySet<number>): Sequence | undefined {
    for (let j = this.running.length - 1; j >= from; j--) {
      if (!draining.has(this.running[j].params.adapterRow)) return this.running[j];
    }
    return undefined;
  }

  /** Frees a running sequence's KV and queues it first (in its client's queue) for recompute; returns the blocks freed. */
  private preempt(seq: Sequence): number {
    const { blockSize } = this.engine.kvStats();
    const freed = this.blocks(seq.kvLen, blockSize);
    this.engine.freeSequence(seq.seqId);
    this.removeRunning(seq);
    seq.kvLen = 0;
    this.waiting.pushResumed(seq);
    this.stats.preemptions++;
    return freed;
  }

  private chunksOf(batch: readonly { seq: Sequence; n: number }[]): ChunkSpec[] {
    return batch.map(({ seq, n }) => {
      const p = seq.params;
      const sample = seq.kvLen + n === seq.tokens.length;
      const chunk: ChunkSpec = {
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
      if (sample) {
        if (p.topLogprobs) chunk.topLogprobs = p.topLogprobs;
        if (p.logitBias?.size) chunk.logitBias = p.logitBias;
        if (seq.counts) Object.assign(chunk, { presencePenalty: p.presencePenalty, frequencyPenalty: p.frequencyPenalty, outputCounts: seq.counts });
      }
      return chunk;
    });
  }

  /** Starts a step on the engine; resolves with its output, or undefined when it failed (its sequences failed). */
  private launch(batch: { seq: Sequence; n: number }[]): Promise<{ out: StepOutput; chunks: ChunkSpec[] } | undefined> {
    const chunks = this.chunksOf(batch);
    const tokens = chunks.reduce((s, c) => s + c.tokens.length, 0);
    const start = performance.now();
    return this.engine.step(chunks).then(
      (out) => {
        const ms = performance.now() - start;
        this.stats.steps++;
        this.growthRatio = Math.max(GROWTH_RATIO_MIN, this.growthRatio - GROWTH_RATIO_DECAY);
        this.stats.lastBatchSize = batch.length;
        this.stats.lastBatchTokens = tokens;
        this.stats.lastStepMs = ms;
        for (const o of this.observers) o(ms, batch.length, tokens);
        return { out, chunks };
      },
      (err) => {
        const e = new RequestError('internal', `engine step failed: ${(err as Error).message}`);
        for (const { seq } of batch) this.fail(seq, e);
        return undefined;
      },
    );
  }

  /** Takes in a step's output: new lengths, sampled tokens, per-chunk refusals. */
  private absorb(batch: { seq: Sequence; n: number }[], { out, chunks }: { out: StepOutput; chunks: ChunkSpec[] }): void {
    let topAt = 0; // top logprobs come in chunk order, for the sampled chunks that asked
    batch.forEach(({ seq, n }, i) => {
      const err = out.errors?.[i];
      const k = chunks[i].sample && !err ? Math.min(chunks[i].topLogprobs ?? 0, this.engine.info.vocabSize) : 0;
      const top = k > 0 && out.topIds ? Array.from({ length: k }, (_, j) => ({ token: out.topIds![topAt + j], logprob: out.topLogprobs![topAt + j] })) : undefined;
      topAt += k;
      if (seq.finished) return; // cancelled while the step ran
      if (err) {
        // The engine refused this chunk alone (the rest of the step ran).
        this.fail(seq, chunkError(err));
        return;
      }
      seq.kvLen += n;
      if (chunks[i].sample) this.accept(seq, out.tokens[i], out.logprobs[i], top);
    });
  }

  private accept(seq: Sequence, token: number, logprob: number, top: TokenEvent['top']): void {
    if (this.eos.has(token) && !seq.params.ignoreEos) {
      this.finish(seq, 'eos');
      return;
    }
    if (seq.params.stopTokenIds?.includes(token)) {
      this.finish(seq, 'stop');
      return;
    }
    if (seq.counts) seq.counts.set(token, (seq.counts.get(token) ?? 0) + 1);
    seq.tokens.push(token);
    const index = seq.generated++;
    const extra = { ...(seq.params.logprobs ? { logprob } : {}), ...(top ? { top } : {}) };
    const last = seq.generated >= seq.limit;
    if (!seq.stop.active) {
      // No stop strings: the text is only for the client, so it is made with the event.
      this.deliver(() => {
        const text = (seq.text?.push(token) ?? '') + (last ? (seq.text?.flush() ?? '') : '');
        seq.sink.onToken({ index, token, text, ...extra });
      });
      if (last) this.finish(seq, 'length');
      return;
    }
    // Stop strings decide whether the sequence goes on: the text is needed now.
    const piece = seq.text ? seq.text.push(token) : '';
    const { text, stopped } = seq.stop.push(piece);
    if (stopped) {
      // The token that completed the stop string is not emitted (its text is the stop string's).
      if (text !== '') this.deliver(() => seq.sink.onToken({ index, token, text, ...extra }));
      else seq.generated--;
      this.finish(seq, 'stop');
      return;
    }
    const tail = last ? seq.stop.flush() + (seq.text?.flush() ?? '') : '';
    this.deliver(() => seq.sink.onToken({ index, token, text: text + tail, ...extra }));
    if (last) this.finish(seq, 'length');
  }

  private detach(seq: Sequence): boolean {
    if (seq.finished) return false;
    seq.finished = true;
    if (this.removeRunning(seq)) this.engine.freeSequence(seq.seqId);
    else this.waiting.remove(seq);
    this.updateCounts();
    return true;
  }

  private finish(seq: Sequence, reason: FinishReason): void {
    if (!this.detach(seq)) return;
    const completionTokens = seq.generated;
    const planned = Math.min(GROWTH_CLIP_TOKENS, seq.limit);
    if ((reason === 'stop' || reason === 'length') && planned > 0)
      this.usedShare += USED_SHARE_WEIGHT * (Math.min(1, completionTokens / planned) - this.usedShare);
    this.deliver(() => {
      // After the sequence's earlier events: they may have text still to push.
      const text = reason === 'length' || reason === 'stop' ? '' : seq.stop.flush() + (seq.text?.flush() ?? '');
      seq.sink.onDone({ finishReason: reason, promptTokens: seq.params.promptIds.length, completionTokens, text });
    });
  }

  private fail(seq: Sequence, err: RequestError): void {
    if (this.detach(seq)) this.deliver(() => seq.sink.onError(err));
  }
}

/** A chunk the engine refused: its adapter row went away, or a value the checks before it missed. */
function chunkError(message: string): RequestError {
  if (/being unregistered|holds no adapter/.test(message)) return new RequestError('unknown_adapter', `the adapter was removed: ${message}`);
  return new RequestError('internal', `the engine refused this request: ${message}`);
}

function removedError(adapterName: string): RequestError {
  return new RequestError('unknown_adapter', `adapter '${adapterName}' was removed before this request started`);
}
