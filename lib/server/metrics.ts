// The daemon's metrics (docs/metrics.md): per-adapter request/token counters and latency
// histograms (adapter="" is the base model), gauges read at scrape time, and the
// model-server protocol's vllm:* families that cluster routers read (the llm-d-router /
// Gateway API Inference Extension endpoint picker, KServe, AIBrix).
//
// Label values come only from registered adapters: a request naming any other model is
// counted under adapter="(unregistered)", and the series of a removed adapter go at the
// next scrape, so no client can grow the exposition (or the daemon's memory) by sending
// made-up names.
import type { AdapterRegistry } from '../adapters/adapter-registry.js';
import type { BatchScheduler } from '../scheduler/batch-scheduler.js';
import type { EnginePort } from '../scheduler/engine-port.js';
import { Counter, Gauge, Histogram } from './prometheus.js';

const LATENCY = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const RESIDENCY = { registered: 0, loading: 1, resident: 2 } as const;
/** The adapter label of requests for a name that is not (or no longer) registered. */
export const UNREGISTERED = '(unregistered)';

export interface MetricsOptions {
  /**
   * Most adapters resident at once (vllm:lora_requests_info's max_lora): the
   * --max-resident-adapters limit, or the engine's adapter rows when unlimited.
   */
  maxLora: number;
}

export class Metrics {
  private readonly requests = new Counter('expertweave_requests_total', 'Finished requests by adapter and finish reason.');
  private readonly errors = new Counter('expertweave_request_errors_total', 'Refused or failed requests by adapter and error code.');
  private readonly promptTokens = new Counter('expertweave_prompt_tokens_total', 'Prompt tokens of finished requests.');
  private readonly completionTokens = new Counter('expertweave_completion_tokens_total', 'Generated tokens of finished requests.');
  private readonly ttft = new Histogram('expertweave_time_to_first_token_seconds', 'Time from request to its first token.', LATENCY);
  private readonly latency = new Histogram('expertweave_request_duration_seconds', 'Time from request to its end.', LATENCY);
  private readonly stepTime = new Histogram('expertweave_step_duration_seconds', 'Engine step wall time.', LATENCY);
  private readonly batchSize = new Histogram('expertweave_batch_sequences', 'Sequences per engine step.', [1, 2, 4, 8, 16, 32, 64, 128, 256]);
  private readonly perAdapter = [this.requests, this.errors, this.promptTokens, this.completionTokens, this.ttft, this.latency];

  constructor(
    private readonly registry: AdapterRegistry,
    private readonly options: MetricsOptions,
  ) {}

  requestDone(adapter: string, reason: string, prompt: number, completion: number, seconds: number): void {
    const label = this.label(adapter);
    this.requests.inc({ adapter: label, finish_reason: reason });
    this.promptTokens.inc({ adapter: label }, prompt);
    this.completionTokens.inc({ adapter: label }, completion);
    this.latency.observe({ adapter: label }, seconds);
  }

  requestError(adapter: string, code: string): void {
    this.errors.inc({ adapter: this.label(adapter), code });
  }

  observeTtft(adapter: string, seconds: number): void {
    this.ttft.observe({ adapter: this.label(adapter) }, seconds);
  }

  observeStep(seconds: number, sequences: number): void {
    this.stepTime.observe({}, seconds);
    this.batchSize.observe({}, sequences);
  }

  /** '' (the base model) and registered names label themselves; anything else is UNREGISTERED. */
  private label(adapter: string): string {
    return adapter === '' || this.registry.get(adapter) ? adapter : UNREGISTERED;
  }

  /** The exposition. `modelName`: the served model name (vLLM's model_name label). */
  render(engine: EnginePort, scheduler: BatchScheduler, modelName: string): string {
    // Series of adapters removed since the last scrape go.
    for (const f of this.perAdapter) f.retain((l) => l.adapter === undefined || this.label(l.adapter) === l.adapter);

    const kv = engine.kvStats();
    const act = scheduler.activity();
    // Requests awaiting their adapter's load (no row yet) wait too, as vLLM counts requests
    // waiting for a LoRA slot; they are not in the scheduler's queues yet.
    const adapters = this.registry.list();
    let loadWaiting = 0;
    for (const e of adapters) {
      if (e.row === undefined && e.active > 0) {
        loadWaiting += e.active;
        act.waitingAdapters.add(e.name);
      }
    }
    const waiting = act.waiting + loadWaiting;

    const gauges: Gauge[] = [];
    const g = (name: string, help: string, value: number, labels: Record<string, string> = {}) => {
      const gauge = new Gauge(name, help);
      gauge.set(labels, value);
      gauges.push(gauge);
    };
    g('expertweave_queue_waiting', 'Requests waiting: queued for admission, preempted, or awaiting their adapter load.', waiting);
    g('expertweave_sequences_running', 'Sequences admitted to the engine.', act.running);
    g('expertweave_kv_blocks', 'KV-cache blocks in all.', kv.totalBlocks);
    g('expertweave_kv_blocks_free', 'Free KV-cache blocks.', kv.freeBlocks);
    const reserve = scheduler.growthReserve();
    g('expertweave_kv_growth_reserve_blocks', 'KV-cache blocks the running sequences may still need, which admission leaves free.', reserve.blocks);
    g('expertweave_kv_growth_reserve_ratio', 'Share of their remaining length admission reserves KV blocks for (0: optimistic admission).', reserve.ratio);
    const preemptions = new Counter('expertweave_preemptions_total', 'Sequences preempted for lack of KV blocks.');
    preemptions.set({}, scheduler.stats.preemptions);
    const residency = new Gauge('expertweave_adapter_residency', 'Adapter residency: 0 registered (on disk), 1 loading, 2 resident.');
    const loads = new Counter('expertweave_adapter_loads_total', 'Adapter loads into the expert pool.');
    const evictions = new Counter('expertweave_adapter_evictions_total', 'Adapter evictions from the expert pool.');
    for (const e of adapters) {
      residency.set({ adapter: e.name }, RESIDENCY[e.state]);
      loads.set({ adapter: e.name }, e.loads);
      evictions.set({ adapter: e.name }, e.evictions);
    }
    g('expertweave_adapter_resident_bytes', 'Bytes of resident adapters.', this.registry.residentBytes());

    // The model-server protocol (gateway-api-inference-extension docs/proposals/003, as
    // vLLM exposes it): one engine, so engine="0"; lists hold registered adapter names.
    const engineLabels = { engine: '0', model_name: modelName };
    g('vllm:num_requests_running', 'Number of requests in model execution batches.', act.running, engineLabels);
    g('vllm:num_requests_waiting', 'Number of requests waiting to be processed.', waiting, engineLabels);
    g('vllm:kv_cache_usage_perc', 'KV-cache usage. 1 means 100 percent usage.', kv.totalBlocks > 0 ? 1 - kv.freeBlocks / kv.totalBlocks : 0, engineLabels);
    g('vllm:cache_config_info', 'Information of the LLMEngine CacheConfig', 1, { block_size: String(kv.blockSize), engine: '0', num_gpu_blocks: String(kv.totalBlocks) });
    const names = (set: Set<string>) => [...set].filter((n) => n !== '' && this.label(n) === n).sort().join(',');
    // One series, valued with its update time (seconds since the epoch): pickers take the
    // series with the largest value, so the current state is always the one read.
    g('vllm:lora_requests_info', 'Running stats on lora requests.', Date.now() / 1000, {
      max_lora: String(this.options.maxLora),
      running_lora_adapters: names(act.runningAdapters),
      waiting_lora_adapters: names(act.waitingAdapters),
    });

    const families = [
      this.requests,
      this.errors,
      this.promptTokens,
      this.completionTokens,
      this.ttft,
      this.latency,
      this.stepTime,
      this.batchSize,
      ...gauges,
      preemptions,
      residency,
      loads,
      evictions,
    ];
    return families.map((f) => f.render()).join('');
  }
}
