// Reads a /metrics exposition the way llm-d-router's endpoint picker does (v0.10.0,
// pkg/epp/framework/plugins/datalayer/extractor/metrics: spec.go, loraspec.go,
// extractor.go), so tests see what the picker's scorers would see:
// - a spec is `name` or `name{label=value,...}`; a series matches when it has those labels;
// - a gauge spec takes the matching series with the latest timestamp (none carry one: the
//   first), and only gauge or counter values count (anything else reads as 0);
// - the LoRA spec takes the matching series with the largest value (its update time) and
//   splits running/waiting_lora_adapters on ',' (trimmed, empties dropped); max_lora and the
//   cache-info labels are integers (Go's strconv.Atoi) or an error.
import { parseFamilies, type Family, type Sample } from './prometheus-parser.js';

/** One engineConfigs entry of the core-metrics-extractor's parameters. */
export interface EngineConfig {
  name: string;
  queuedRequestsSpec?: string;
  runningRequestsSpec?: string;
  kvUsageSpec?: string;
  loraSpec?: string;
  cacheInfoSpec?: string;
}

export interface EndpointMetrics {
  waitingQueueSize: number;
  runningRequestsSize: number;
  kvCacheUsagePercent: number;
  activeModels: Set<string>;
  waitingModels: Set<string>;
  maxActiveModels: number;
  cacheBlockSize: number;
  cacheNumBlocks: number;
}

interface Spec {
  name: string;
  labels: Record<string, string>;
}

function parseSpec(spec: string): Spec {
  const m = /^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{([^}]*)\})?\s*$/.exec(spec);
  if (!m) throw new Error(`not a valid metric specification: ${spec}`);
  const labels: Record<string, string> = {};
  for (const pair of (m[2] ?? '').split(',').filter((p) => p.trim() !== '')) {
    const l = /^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"?([^"]*?)"?\s*$/.exec(pair);
    if (!l) throw new Error(`invalid label pair ${pair} in ${spec}`);
    labels[l[1]] = l[2];
  }
  return { name: m[1], labels };
}

function atoi(v: string): number {
  if (!/^[+-]?\d+$/.test(v)) throw new Error(`strconv.Atoi: parsing ${JSON.stringify(v)}: invalid syntax`);
  return Number(v);
}

export function extractEndpointMetrics(text: string, engine: EngineConfig): EndpointMetrics {
  const families = new Map<string, Family>(parseFamilies(text).map((f) => [f.name, f]));
  const matching = (spec: Spec) => {
    const f = families.get(spec.name);
    if (!f || f.samples.length === 0) return { f, series: [] as Sample[] };
    const series = f.samples.filter((s) => s.name === spec.name && Object.entries(spec.labels).every(([k, v]) => s.labels[k] === v));
    return { f, series };
  };
  const value = (f: Family, s: Sample) => (f.type === 'gauge' || f.type === 'counter' ? s.value : 0);
  const gauge = (specText: string): number => {
    const spec = parseSpec(specText);
    const { f, series } = matching(spec);
    if (!f) throw new Error(`metric family "${spec.name}" not found`);
    if (series.length === 0) throw new Error(`no matching metric found for "${spec.name}"`);
    return value(f, series[0]);
  };
  const out: EndpointMetrics = {
    waitingQueueSize: 0,
    runningRequestsSize: 0,
    kvCacheUsagePercent: 0,
    activeModels: new Set(),
    waitingModels: new Set(),
    maxActiveModels: 0,
    cacheBlockSize: 0,
    cacheNumBlocks: 0,
  };
  if (engine.queuedRequestsSpec) out.waitingQueueSize = Math.trunc(gauge(engine.queuedRequestsSpec));
  if (engine.runningRequestsSpec) out.runningRequestsSize = Math.trunc(gauge(engine.runningRequestsSpec));
  if (engine.kvUsageSpec) out.kvCacheUsagePercent = gauge(engine.kvUsageSpec);
  if (engine.loraSpec) {
    const { f, series } = matching(parseSpec(engine.loraSpec));
    let latest: Sample | undefined;
    for (const s of series) if (!latest || value(f!, s) > value(f!, latest)) latest = s;
    if (latest) {
      const list = (csv: string | undefined) => new Set((csv ?? '').split(',').map((n) => n.trim()).filter((n) => n !== ''));
      out.activeModels = list(latest.labels.running_lora_adapters);
      out.waitingModels = list(latest.labels.waiting_lora_adapters);
      if (latest.labels.max_lora) out.maxActiveModels = atoi(latest.labels.max_lora);
    }
  }
  if (engine.cacheInfoSpec) {
    const spec = parseSpec(engine.cacheInfoSpec);
    const { f, series } = matching(spec);
    if (!f) throw new Error(`metric family "${spec.name}" not found`);
    if (series.length === 0) throw new Error(`no matching metric found for "${spec.name}"`);
    const { block_size, num_gpu_blocks } = series[0].labels;
    if (block_size) out.cacheBlockSize = atoi(block_size);
    if (num_gpu_blocks) out.cacheNumBlocks = atoi(num_gpu_blocks);
  }
  return out;
}

/** The lora-affinity-scorer's score of one endpoint for a request naming `model` (lora_affinity.go). */
export function loraAffinityScore(m: EndpointMetrics, model: string): number {
  if (m.activeModels.has(model)) return 1.0;
  if (m.activeModels.size + m.waitingModels.size < m.maxActiveModels) return 0.8;
  if (m.waitingModels.has(model)) return 0.6;
  return 0;
}
