// A strict parser of the Prometheus text format (0.0.4), for tests: every line is a
// HELP/TYPE comment or a sample of a declared family, a family's lines form one group,
// no series repeats, histograms are cumulative. lintPrometheus adds the rules of
// `promtool check metrics` (client_golang's promlint: prometheus/testutil/promlint/
// validations), so CI checks them without promtool.
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface Family {
  name: string;
  type: string;
  help: string | undefined;
  samples: Sample[];
}

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const SAMPLE = new RegExp(`^(${NAME})(\\{(.*)\\})? (-?[0-9.e+-]+|NaN|\\+Inf|-Inf)$`);
const LABEL = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)/;
const SUFFIXES: Record<string, RegExp> = { histogram: /_(bucket|sum|count)$/, summary: /_(sum|count)$/ };

function unescape(v: string): string {
  return v.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
}

/** Families in exposition order; throws on anything a Prometheus scrape would reject or misread. */
export function parseFamilies(text: string): Family[] {
  if (!text.endsWith('\n')) throw new Error('exposition must end with a newline');
  const families = new Map<string, Family>();
  const declare = (name: string): Family => {
    let f = families.get(name);
    if (!f) families.set(name, (f = { name, type: 'untyped', help: undefined, samples: [] }));
    return f;
  };
  const closed = new Set<string>();
  let current: string | undefined;
  const enter = (name: string) => {
    if (name === current) return;
    if (closed.has(name)) throw new Error(`lines of ${name} are not one group`);
    if (current !== undefined) closed.add(current);
    current = name;
  };
  const seen = new Set<string>();
  for (const line of text.slice(0, -1).split('\n')) {
    const help = new RegExp(`^# HELP (${NAME}) ?(.*)$`).exec(line);
    if (help) {
      enter(help[1]);
      const f = declare(help[1]);
      if (f.help !== undefined) throw new Error(`second HELP for ${help[1]}`);
      f.help = help[2];
      continue;
    }
    const t = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`).exec(line);
    if (t) {
      enter(t[1]);
      const f = declare(t[1]);
      if (f.samples.length > 0 || f.type !== 'untyped') throw new Error(`TYPE of ${t[1]} repeated or after its samples`);
      f.type = t[2];
      continue;
    }
    if (line.startsWith('#')) throw new Error(`unexpected comment: ${JSON.stringify(line)}`);
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`malformed line: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    let rest = m[3] ?? '';
    while (rest !== '') {
      const l = LABEL.exec(rest);
      if (!l) throw new Error(`malformed labels in ${JSON.stringify(line)}`);
      if (l[1] in labels) throw new Error(`label ${l[1]} twice in ${JSON.stringify(line)}`);
      labels[l[1]] = unescape(l[2]);
      rest = rest.slice(l[0].length);
    }
    const name = m[1];
    const base = name.replace(/_(bucket|sum|count)$/, '');
    const family = families.has(name) ? name : base;
    const f = families.get(family);
    if (!f || f.type === 'untyped') throw new Error(`sample ${name} has no # TYPE`);
    if (family !== name && !SUFFIXES[f.type]?.test(name)) throw new Error(`${name}: suffix on a ${f.type}`);
    if (family === name && SUFFIXES[f.type]) throw new Error(`${name}: a ${f.type} sample needs a _bucket/_sum/_count suffix`);
    enter(family);
    const value = Number(m[4].replace('+Inf', 'Infinity').replace('-Inf', '-Infinity'));
    if (Number.isNaN(value) && m[4] !== 'NaN') throw new Error(`bad value in ${JSON.stringify(line)}`);
    const id = name + JSON.stringify(Object.entries(labels).sort());
    if (seen.has(id)) throw new Error(`series repeated: ${line}`);
    seen.add(id);
    f.samples.push({ name, labels, value });
  }
  for (const f of families.values()) {
    if (f.type !== 'histogram') continue;
    // Buckets must be cumulative and end at +Inf equal to _count.
    const series = new Map<string, Sample[]>();
    for (const s of f.samples.filter((s) => s.name.endsWith('_bucket'))) {
      const { le, ...rest } = s.labels;
      if (le === undefined) throw new Error(`${s.name} without le`);
      const k = JSON.stringify(Object.entries(rest).sort());
      series.set(k, [...(series.get(k) ?? []), s]);
    }
    for (const [k, buckets] of series) {
      for (let i = 1; i < buckets.length; i++) if (buckets[i].value < buckets[i - 1].value) throw new Error(`${f.name}${k}: buckets not cumulative`);
      if (buckets.at(-1)!.labels.le !== '+Inf') throw new Error(`${f.name}${k}: last bucket is not +Inf`);
      const count = f.samples.find((s) => s.name === `${f.name}_count` && JSON.stringify(Object.entries(s.labels).sort()) === k);
      if (count?.value !== buckets.at(-1)!.value) throw new Error(`${f.name}${k}: +Inf bucket differs from _count`);
    }
  }
  return [...families.values()];
}

export function parsePrometheus(text: string): Sample[] {
  return parseFamilies(text).flatMap((f) => f.samples);
}

// promlint's tables (validations/units.go).
const UNITS: Record<string, string> = {
  amperes: 'amperes', bytes: 'bytes', celsius: 'celsius', grams: 'grams', joules: 'joules', kelvin: 'kelvin',
  meters: 'meters', metres: 'metres', seconds: 'seconds', volts: 'volts',
  minutes: 'seconds', hours: 'seconds', days: 'seconds', weeks: 'seconds', kelvins: 'kelvin', fahrenheit: 'celsius',
  rankine: 'celsius', inches: 'meters', yards: 'meters', miles: 'meters', bits: 'bytes', calories: 'joules',
  pounds: 'grams', ounces: 'grams',
};
const PREFIXES = ['pico', 'nano', 'micro', 'milli', 'centi', 'deci', 'deca', 'hecto', 'kilo', 'kibi', 'mega', 'mibi', 'giga', 'gibi', 'tera', 'tebi', 'peta', 'pebi'];
const ABBREVIATIONS = ['s', 'ms', 'us', 'ns', 'sec', 'b', 'kb', 'mb', 'gb', 'tb', 'pb', 'm', 'h', 'd'];
const CAMEL = /[a-z][A-Z]/;

function unitOf(name: string): [string, string] | undefined {
  for (const part of name.split('_')) {
    if (UNITS[part]) return [part, UNITS[part]];
    for (const p of PREFIXES) if (part.startsWith(p) && UNITS[part.slice(p.length)]) return [part, UNITS[part.slice(p.length)]];
  }
  return undefined;
}

/** promtool's findings, one `NAME text` line each (the format promtool prints), sorted. */
export function lintPrometheus(text: string): string[] {
  const problems: string[] = [];
  for (const f of parseFamilies(text)) {
    const say = (msg: string) => problems.push(`${f.name} ${msg}`);
    const n = f.name;
    const lower = n.toLowerCase();
    if (!f.help) say('no help text');
    const unit = unitOf(n);
    if (unit && unit[0] !== unit[1]) say(`use base unit "${unit[1]}" instead of "${unit[0]}"`);
    if (f.type === 'counter' && !n.endsWith('_total')) say('counter metrics should have "_total" suffix');
    if (f.type !== 'counter' && f.type !== 'untyped' && n.endsWith('_total')) say('non-counter metrics should not have "_total" suffix');
    if (f.type !== 'untyped') {
      if (f.type !== 'histogram' && n.endsWith('_bucket')) say('non-histogram metrics should not have "_bucket" suffix');
      if (f.type !== 'histogram' && f.type !== 'summary' && n.endsWith('_count')) say('non-histogram and non-summary metrics should not have "_count" suffix');
      if (f.type !== 'histogram' && f.type !== 'summary' && n.endsWith('_sum')) say('non-histogram and non-summary metrics should not have "_sum" suffix');
      for (const s of f.samples) {
        if (f.type !== 'histogram' && 'le' in s.labels) say('non-histogram metrics should not have "le" label');
        if (f.type !== 'summary' && 'quantile' in s.labels) say('non-summary metrics should not have "quantile" label');
      }
    }
    for (const t of ['counter', 'gauge', 'histogram', 'summary']) {
      if (lower.includes(`_${t}_`) || lower.endsWith(`_${t}`)) say(`metric name should not include type '${t}'`);
    }
    if (n.includes(':')) say("metric names should not contain ':'");
    if (CAMEL.test(n)) say("metric names should be written in 'snake_case' not 'camelCase'");
    for (const s of f.samples) for (const l of Object.keys(s.labels)) if (CAMEL.test(l)) say("label names should be written in 'snake_case' not 'camelCase'");
    for (const a of ABBREVIATIONS) if (lower.includes(`_${a}_`) || lower.endsWith(`_${a}`)) say('metric names should not contain abbreviated units');
  }
  return [...new Set(problems)].sort();
}
