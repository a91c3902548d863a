// What every transport calls: resolves a request's model (the served base name or an
// adapter), turns chat messages into a prompt with the model's template, encodes prompts
// (off the event loop when long, refused before any work when over the byte limit),
// holds the adapter resident while a request runs, and feeds the scheduler.
import type { ModelInfo } from '../engine/binding.js';
import { AdapterError } from '../adapters/expert-cfg.js';
import type { AdapterEntry, AdapterRegistry } from '../adapters/adapter-registry.js';
import type { AdapterStateFile } from '../adapters/adapter-state.js';
import type { BatchScheduler } from '../scheduler/batch-scheduler.js';
import { RequestError, type DoneEvent, type GenerationSink, type TokenEvent } from '../scheduler/request.js';
import type { ModelDefaults } from '../engine/model-defaults.js';
import type { ChatMessage, ChatTemplate } from '../tokenizer/chat-template.js';
import { PromptTooLong, type PromptEncoder } from '../tokenizer/prompt-encoder.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import type { ParseContext, SamplingInput } from './generate-params.js';
import type { Metrics } from './metrics.js';

export interface ServiceRequest extends SamplingInput {
  /** Adapter name; null: the base model. */
  adapter: string | null;
  prompt: string | number[];
  /** The prompt text is a rendered chat template (it holds its special tokens: none are added). */
  rendered?: boolean;
  /** Who asked, for fairness (see GenerationParams.client). */
  client: string;
}

/** The pieces a Service works with (built by startDaemon). */
export interface ServiceParts {
  info: ModelInfo;
  /** The name requests give for the base model (--served-model-name, else the model directory's). */
  modelName: string;
  scheduler: BatchScheduler;
  adapters: AdapterRegistry;
  encoder: PromptEncoder | null;
  tokenizer: TextTokenizer | null;
  chat: ChatTemplate | null;
  defaults: ModelDefaults;
  metrics: Metrics;
}

export interface ServiceOptions {
  /** Longest text prompt in UTF-8 bytes; longer ones are refused before tokenization. */
  maxPromptBytes: number;
  /** Where adapters registered at run time are kept across restarts (absent: not kept). */
  state?: AdapterStateFile;
  /**
   * Tokens per delivery to a streaming transport (vLLM's and SGLang's --stream-interval):
   * the first token at once, then every Nth, the rest with the end. Larger values
   * mean fewer writes and socket wake-ups per token (both sides of a connection), smaller
   * ones smoother streams. Default 1: every token as it is made.
   */
  streamInterval?: number;
}

export interface Running {
  cancel(): void;
}

export class Service {
  private readonly live = new Set<Running>();
  readonly info: ModelInfo;
  readonly modelName: string;
  readonly scheduler: BatchScheduler;
  readonly adapters: AdapterRegistry;
  readonly metrics: Metrics;
  readonly tokenizer: TextTokenizer | null;
  private readonly encoder: PromptEncoder | null;
  private readonly chat: ChatTemplate | null;
  private readonly defaults: ModelDefaults;

  constructor(
    parts: ServiceParts,
    readonly options: ServiceOptions,
  ) {
    ({ info: this.info, modelName: this.modelName, scheduler: this.scheduler, adapters: this.adapters, metrics: this.metrics } = parts);
    ({ tokenizer: this.tokenizer, encoder: this.encoder, chat: this.chat, defaults: this.defaults } = parts);
  }

  /** What request fields are checked against and default to, for an endpoint's default max_tokens. */
  parseContext(defaultMaxTokens: number | undefined): ParseContext {
    return { vocabSize: this.info.vocabSize, defaults: this.defaults.sampling, defaultMaxTokens };
  }

  /**
   * Starts a request. Refusals before it is queued go to sink.onError too, so callers
   * have one path. Returns a handle whose cancel() frees the sequence at once.
   */
  start(req: ServiceRequest, sink: GenerationSink): Running {
    let cancelled = false;
    let inner: { cancel(): void } | undefined;
    let release = () => {};
    const label = req.adapter ?? '';
    const started = performance.now();
    let firstAt = 0;
    const interval = this.options.streamInterval ?? 1;
    let held: TokenEvent[] = [];
    const deliver = () => {
      const evs = held;
      held = [];
      for (const ev of evs) sink.onToken(ev);
    };
    const handle: Running = {
      cancel: () => {
        cancelled = true;
        inner?.cancel();
      },
    };
    const end = () => {
      this.live.delete(handle);
      release();
    };
    const wrapped: GenerationSink = {
      onToken: (ev: TokenEvent) => {
        if (firstAt === 0) {
          firstAt = performance.now();
          this.metrics.observeTtft(label, (firstAt - started) / 1000);
        }
        held.push(ev);
        if (held.length >= interval || ev.index === 0) deliver();
      },
      onDone: (ev: DoneEvent) => {
        deliver();
        end();
        this.metrics.requestDone(label, ev.finishReason, ev.promptTokens, ev.completionTokens, (performance.now() - started) / 1000);
        sink.onDone(ev);
      },
      onError: (err) => {
        deliver();
        end();
        this.metrics.requestError(label, err.code);
        sink.onError(err);
      },
    };
    this.live.add(handle);
    void (async () => {
      await Promise.resolve(); // report asynchronously, after start() has returned
      try {
        const promptIds = await this.encodePrompt(req.prompt, req.rendered === true);
        let row = 0;
        if (req.adapter !== null) {
          if (!this.adapters.get(req.adapter)) {
            throw new RequestError('unknown_adapter', `no adapter named '${req.adapter}'; GET /v1/adapters lists them`);
          }
          const lease = await this.adapters.acquire(req.adapter);
          release = lease.release;
          row = lease.row;
        }
        if (cancelled) {
          wrapped.onDone({ finishReason: 'cancelled', promptTokens: promptIds.length, completionTokens: 0, text: '' });
          return;
        }
        inner = this.scheduler.submit(
          { ...req, promptIds, adapterRow: row, adapterName: label },
          wrapped,
        );
      } catch (err) {
        wrapped.onError(toRequestError(err));
      }
    })();
    return handle;
  }

  /** The prompt of a chat: the messages through the model's chat template (text with its special tokens). */
  chatPrompt(messages: readonly ChatMessage[]): string {
    if (!this.chat) {
      throw new RequestError('bad_request', 'this model has no chat template (tokenizer_config.json chat_template or chat_template.jinja); use /v1/completions with a prompt', 'messages');
    }
    return this.chat.render(messages, true);
  }

  /**
   * Token ids of a prompt: ids pass through; text is encoded with the tokenizer's special
   * tokens, or without when `rendered` (a chat template's output already holds them).
   */
  async encodePrompt(prompt: string | number[], rendered = false): Promise<number[]> {
    if (typeof prompt !== 'string') return prompt;
    if (!this.encoder) throw new RequestError('bad_request', 'the model has no tokenizer.json; send the prompt as an array of token ids');
    // A UTF-16 unit is at most 3 UTF-8 bytes: most prompts pass without counting.
    const limit = this.options.maxPromptBytes;
    if (prompt.length * 3 > limit && Buffer.byteLength(prompt) > limit) {
      throw new RequestError('bad_request', `the prompt is ${Buffer.byteLength(prompt)} bytes of text; at most ${limit} are accepted (the model's context could not hold more)`);
    }
    const context = this.info.maxPositionEmbeddings;
    try {
      return await this.encoder.encode(prompt, context - 1, !rendered);
    } catch (err) {
      if (err instanceof PromptTooLong) {
        throw new RequestError('bad_request', `the prompt has ${err.tokens} tokens; the model's context is ${context}, leave room for at least one generated token`);
      }
      throw new RequestError('internal', `the prompt could not be tokenized: ${(err as Error).message}`);
    }
  }

  /** Registers an adapter at run time (see AdapterRegistry.register); kept across restarts when a state dir is set. */
  async registerAdapter(name: string, dir: string, pinned = false): Promise<{ entry: AdapterEntry; created: boolean }> {
    const r = await this.adapters.register(name, dir, pinned);
    if (r.created) await this.options.state?.put({ name, dir: r.entry.dir, pinned });
    return r;
  }

  /**
   * Removes an adapter: requests for it that have not started fail now (its engine row
   * drains and may then serve another adapter), running ones finish on it. A name only
   * the state file still holds (it failed to load at start) is dropped from it.
   */
  async removeAdapter(name: string): Promise<void> {
    const state = this.options.state;
    if (!this.adapters.get(name) && state?.has(name)) return state.delete(name);
    if (this.adapters.get(name)) this.scheduler.failWaiting(name);
    await this.adapters.remove(name);
    await state?.delete(name);
  }

  /** The model name a request's `model` field resolves to: null for the base. */
  resolveModel(model: unknown): string | null {
    if (model === undefined || model === null || model === this.modelName) return null;
    if (typeof model !== 'string') throw new RequestError('bad_request', '"model" must be a string', 'model');
    return model;
  }

  /**
   * Text of one token (logprob entries); a partial UTF-8 character decodes to U+FFFD.
   * Without a tokenizer: "token_id:N", vLLM's form (return_tokens_as_token_ids).
   */
  tokenText(id: number): string {
    return this.tokenizer ? this.tokenizer.decode([id]) : `token_id:${id}`;
  }

  /** Cancels every live request (shutdown). */
  cancelAll(): void {
    for (const r of [...this.live]) r.cancel();
  }
}

export function toRequestError(err: unknown): RequestError {
  if (err instanceof RequestError) return err;
  if (err instanceof AdapterError) {
    const code = err.code === 'unknown_adapter' ? 'unknown_adapter' : err.status >= 500 ? 'internal' : 'bad_request';
    return new RequestError(code, err.message);
  }
  return new RequestError('internal', (err as Error)?.message ?? String(err));
}
