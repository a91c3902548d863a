// The daemon's metrics: per-adapter request/token counters and latency histograms
// (adapter="" is the base model), plus gauges read at scrape time.
import type { AdapterRegistry } from '../adapters/adapter-registry.js';
import type { BatchScheduler } from '../scheduler/batch-scheduler.js';
import type { EnginePort } from '../scheduler/engine-port.js';
import { Counter, Gauge, Histogram } from './prometheus.js';

const LATENCY = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const RESIDENCY = { registered: 0, loading: 1, resident: 2 } as const;

export class Metrics {
  private readonly requests = new Counter('expertweave_requests_total', 'Finished requests by adapter and finish reason.');
  private readonly errors = new Counter('expertweave_request_errors_total', 'Refused or failed requests by adapter and error code.');
  private readonly promptTokens = new Counter('expertweave_prompt_tokens_total', 'Prompt tokens of finished requests.');
  private readonly completionTokens = new Counter('expertweave_completion_tokens_total', 'Generated tokens of finished requests.');
  private readonly ttft = new Histogram('expertweave_time_to_first_token_seconds', 'Time from request to its first token.', LATENCY);
  private readonly latency = new Histogram('expertweave_request_duration_seconds', 'Time from request to its end.', LATENCY);
  private readonly stepTime = new Histogram('expertweave_step_duration_seconds', 'Engine step wall time.', LATENCY);
  private readonly batchSize = new Histogram('expertweave_batch_sequences', 'Sequences per engine step.', [1, 2, 4, 8, 16, 32, 64, 128, 256]);

  requestDone(adapter: string, reason: string, prompt: number, completion: number, seconds: number): void {
    this.requests.inc({ adapter, finish_reason: reason });
    this.promptTokens.inc({ adapter }, prompt);
    this.completionTokens.inc({ adapter }, completion);
    this.latency.observe({ adapter }, seconds);
  }

  requestError(adapter: string, code: string): void {
    this.errors.inc({ adapter, code });
  }

  observeTtft(adapter: string, seconds: number): void {
    this.ttft.observe({ adapter }, seconds);
  }

  observeStep(seconds: number, sequences: number): void {
    this.stepTime.observe({}, seconds);
    this.batchSize.observe({}, sequences);
  }

  render(engine: EnginePort, scheduler: BatchScheduler, registry: AdapterRegistry): string {
    const kv = engine.kvStats();
    const gauges: Gauge[] = [];
    const g = (name: string, help: string, value: number, labels: Record<string, string> = {}) => {
      const gauge = new Gauge(name, help);
      gauge.set(labels, value);
      gauges.push(gauge);
      return gauge;
    };
    g('expertweave_queue_waiting', 'Requests waiting for admission.', scheduler.stats.waiting);
    g('expertweave_sequences_running', 'Sequences admitted to the engine.', scheduler.stats.running);
    g('expertweave_kv_blocks_total', 'KV-cache blocks.', kv.totalBlocks);
    g('expertweave_kv_blocks_free', 'Free KV-cache blocks.', kv.freeBlocks);
    const preemptions = new Counter('expertweave_preemptions_total', 'Sequences preempted for lack of KV blocks.');
    preemptions.set({}, scheduler.stats.preemptions);
    const residency = new Gauge('expertweave_adapter_residency', 'Adapter residency: 0 registered (on disk), 1 loading, 2 resident.');
    const loads = new Counter('expertweave_adapter_loads_total', 'Adapter loads into the expert pool.');
    const evictions = new Counter('expertweave_adapter_evictions_total', 'Adapter evictions from the expert pool.');
    for (const e of registry.list()) {
      residency.set({ adapter: e.name }, RESIDENCY[e.state]);
      loads.set({ adapter: e.name }, e.loads);
      evictions.set({ adapter: e.name }, e.evictions);
    }
    g('expertweave_adapter_resident_bytes', 'Bytes of resident adapters.', registry.residentBytes());
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
