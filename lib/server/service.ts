// What both transports call: resolves a request's model (base or adapter), encodes
// its prompt, holds the adapter resident while it runs, and feeds the scheduler.
import type { ModelInfo } from '../engine/binding.js';
import { AdapterError } from '../adapters/expert-cfg.js';
import type { AdapterRegistry } from '../adapters/adapter-registry.js';
import type { BatchScheduler } from '../scheduler/batch-scheduler.js';
import { RequestError, type DoneEvent, type GenerationSink, type TokenEvent } from '../scheduler/request.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import type { SamplingInput } from './generate-params.js';
import type { Metrics } from './metrics.js';

export interface ServiceRequest extends SamplingInput {
  /** Adapter name; null: the base model. */
  adapter: string | null;
  prompt: string | number[];
}

export interface Running {
  cancel(): void;
}

export class Service {
  private readonly live = new Set<Running>();

  constructor(
    readonly info: ModelInfo,
    readonly modelName: string,
    readonly scheduler: BatchScheduler,
    readonly adapters: AdapterRegistry,
    readonly tokenizer: TextTokenizer | null,
    readonly metrics: Metrics,
  ) {}

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
        sink.onToken(ev);
      },
      onDone: (ev: DoneEvent) => {
        end();
        this.metrics.requestDone(label, ev.finishReason, ev.promptTokens, ev.completionTokens, (performance.now() - started) / 1000);
        sink.onDone(ev);
      },
      onError: (err) => {
        end();
        this.metrics.requestError(label, err.code);
        sink.onError(err);
      },
    };
    this.live.add(handle);
    void (async () => {
      await Promise.resolve(); // report asynchronously, after start() has returned
      try {
        let promptIds: number[];
        if (typeof req.prompt === 'string') {
          if (!this.tokenizer) throw new RequestError('bad_request', 'the model has no tokenizer.json; send the prompt as an array of token ids');
          promptIds = this.tokenizer.encode(req.prompt);
        } else promptIds = req.prompt;
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

  /**
   * Removes an adapter: requests for it that have not started fail now (its engine row
   * drains and may then serve another adapter), running ones finish on it.
   */
  async removeAdapter(name: string): Promise<void> {
    if (this.adapters.get(name)) this.scheduler.failWaiting(name);
    await this.adapters.remove(name);
  }

  /** The model name a request's `model` field resolves to: null for the base. */
  resolveModel(model: unknown): string | null {
    if (model === undefined || model === null || model === this.modelName) return null;
    if (typeof model !== 'string') throw new RequestError('bad_request', '"model" must be a string');
    return model;
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
