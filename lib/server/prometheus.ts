// A minimal Prometheus text-format (0.0.4) writer: counters, gauges and histograms
// with labels. Enough for /metrics without a dependency. Callers bound the label
// values (metrics.ts only labels with registered adapters) and drop stale series.
type Labels = Record<string, string>;

const SPECIAL = /[\\\n"]/;

/** `k="v",...` with the format's escapes (most values need none: checked first, scrapes are frequent). */
function labelPairs(labels: Labels): string {
  return Object.entries(labels)
    .map(([k, v]) => `${k}="${SPECIAL.test(v) ? v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"') : v}"`)
    .join(',');
}

function labelText(labels: Labels): string {
  const pairs = labelPairs(labels);
  return pairs ? `{${pairs}}` : '';
}

function key(labels: Labels): string {
  return JSON.stringify(Object.entries(labels).sort());
}

abstract class Family {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: string,
  ) {}
  abstract samples(): string[];
  render(): string {
    return [`# HELP ${this.name} ${this.help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`, `# TYPE ${this.name} ${this.type}`, ...this.samples()].join('\n') + '\n';
  }
}

export class Counter extends Family {
  private readonly values = new Map<string, { labels: Labels; value: number }>();
  constructor(name: string, help: string, type = 'counter') {
    super(name, help, type);
  }
  inc(labels: Labels = {}, by = 1): void {
    const k = key(labels);
    const v = this.values.get(k);
    if (v) v.value += by;
    else this.values.set(k, { labels, value: by });
  }
  set(labels: Labels, value: number): void {
    this.values.set(key(labels), { labels, value });
  }
  clear(): void {
    this.values.clear();
  }
  /** Drops every series whose labels fail `keep`. */
  retain(keep: (labels: Labels) => boolean): void {
    for (const [k, v] of this.values) if (!keep(v.labels)) this.values.delete(k);
  }
  samples(): string[] {
    return [...this.values.values()].map((v) => `${this.name}${labelText(v.labels)} ${v.value}`);
  }
}

export class Gauge extends Counter {
  constructor(name: string, help: string) {
    super(name, help, 'gauge');
  }
}

export class Histogram extends Family {
  private readonly series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  constructor(
    name: string,
    help: string,
    private readonly buckets: readonly number[],
  ) {
    super(name, help, 'histogram');
  }
  observe(labels: Labels, value: number): void {
    const k = key(labels);
    let s = this.series.get(k);
    if (!s) {
      s = { labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 };
      this.series.set(k, s);
    }
    this.buckets.forEach((b, i) => {
      if (value <= b) s!.counts[i]++;
    });
    s.sum += value;
    s.count++;
  }
  /** Drops every series whose labels fail `keep`. */
  retain(keep: (labels: Labels) => boolean): void {
    for (const [k, v] of this.series) if (!keep(v.labels)) this.series.delete(k);
  }
  samples(): string[] {
    const out: string[] = [];
    for (const s of this.series.values()) {
      const pairs = labelPairs(s.labels);
      const bucket = `${this.name}_bucket{${pairs ? pairs + ',' : ''}le="`;
      this.buckets.forEach((b, i) => out.push(`${bucket}${b}"} ${s.counts[i]}`));
      out.push(`${bucket}+Inf"} ${s.count}`);
      const text = pairs ? `{${pairs}}` : '';
      out.push(`${this.name}_sum${text} ${s.sum}`, `${this.name}_count${text} ${s.count}`);
    }
    return out;
  }
}
