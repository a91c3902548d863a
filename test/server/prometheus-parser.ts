// A strict parser of the Prometheus text format (0.0.4), for tests: every line is a
// HELP/TYPE comment or a sample of a declared family; histograms are cumulative.
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (-?[0-9.e+-]+|NaN|\+Inf|-Inf)$/;
const LABEL = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/;

export function parsePrometheus(text: string): Sample[] {
  if (!text.endsWith('\n')) throw new Error('exposition must end with a newline');
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  for (const line of text.slice(0, -1).split('\n')) {
    if (line.startsWith('# HELP ')) continue;
    const t = /^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped)$/.exec(line);
    if (t) {
      if (types.has(t[1])) throw new Error(`family ${t[1]} declared twice`);
      types.set(t[1], t[2]);
      continue;
    }
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`malformed line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    let rest = m[3] ?? '';
    while (rest !== '') {
      const l = LABEL.exec(rest);
      if (!l) throw new Error(`malformed labels in ${JSON.stringify(line)}`);
      labels[l[1]] = l[2];
      rest = rest.slice(l[0].length);
    }
    const name = m[1];
    const family = types.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
    const type = types.get(family);
    if (!type) throw new Error(`sample ${name} has no # TYPE`);
    if (family !== name && type !== 'histogram' && type !== 'summary') throw new Error(`${name}: suffix on a ${type}`);
    const value = Number(m[4].replace('+Inf', 'Infinity').replace('-Inf', '-Infinity'));
    if (Number.isNaN(value) && m[4] !== 'NaN') throw new Error(`bad value in ${JSON.stringify(line)}`);
    samples.push({ name, labels, value });
  }
  // Buckets must be cumulative and end at +Inf equal to _count.
  const buckets = new Map<string, Sample[]>();
  for (const s of samples.filter((s) => s.name.endsWith('_bucket'))) {
    const { le, ...rest } = s.labels;
    const key = s.name + JSON.stringify(rest);
    buckets.set(key, [...(buckets.get(key) ?? []), s]);
  }
  for (const [key, series] of buckets) {
    for (let i = 1; i < series.length; i++) if (series[i].value < series[i - 1].value) throw new Error(`${key}: buckets not cumulative`);
    if (series.at(-1)!.labels.le !== '+Inf') throw new Error(`${key}: last bucket is not +Inf`);
  }
  return samples;
}
