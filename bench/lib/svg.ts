// Small hand-written SVG charts for bench/results: line charts (a metric against a
// numeric x such as the adapter count) and grouped bar charts (two systems side by
// side per group). Self-contained files, no dependencies, text escaped.

export interface LineSeries {
  name: string;
  points: readonly (readonly [number, number])[];
  /** Optional error bars: [low, high] per point, in y units. */
  ranges?: readonly (readonly [number, number])[];
}

export interface LineChart {
  title: string;
  xLabel: string;
  yLabel: string;
  series: readonly LineSeries[];
  /** Horizontal reference line (e.g. 1.0 for a ratio). */
  reference?: { y: number; label: string };
  /** Footnote under the chart (machine, date, commit). */
  note?: string;
}

export interface BarChart {
  title: string;
  yLabel: string;
  groups: readonly string[];
  /** One value per group for each series; NaN leaves a gap. */
  series: readonly { name: string; values: readonly number[] }[];
  note?: string;
}

const PLOT_W = 550;
const H = 420;
const M = { left: 70, top: 40, bottom: 70 };

/** Chart geometry: the right margin holds the legend, as wide as its longest name. */
function layout(names: readonly string[]): { W: number; right: number } {
  const right = Math.max(120, 45 + 7 * Math.max(0, ...names.map((n) => n.length)));
  return { W: M.left + PLOT_W + right, right };
}
const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#ff7f0e', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];

export function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => ({ '<': '&lt;', '>': '&gt;', '&': '&amp;', '"': '&quot;', "'": '&apos;' })[c]!);
}

/** Round, evenly spaced tick values covering [lo, hi] (about `count` of them). */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) throw new RangeError(`niceTicks: bounds must be finite, got ${lo}, ${hi}`);
  if (hi < lo) [lo, hi] = [hi, lo];
  if (hi === lo) {
    const pad = lo === 0 ? 1 : Math.abs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  const raw = (hi - lo) / Math.max(1, count);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw)!;
  const first = Math.floor(lo / step) * step;
  const ticks: number[] = [];
  for (let v = first; v <= hi + step * 1e-9; v += step) ticks.push(Number(v.toPrecision(12)));
  if (ticks[ticks.length - 1] < hi) ticks.push(Number((ticks[ticks.length - 1] + step).toPrecision(12)));
  return ticks;
}

function fmt(v: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e7 || a < 1e-3) return v.toExponential(1);
  return String(Number(v.toPrecision(4)));
}

const n2 = (v: number) => v.toFixed(1);

function frame(W: number, title: string, note: string | undefined, body: string[]): string {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="white"/>`,
    `<text x="${M.left + PLOT_W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${escapeXml(title)}</text>`,
    ...body,
    note ? `<text x="${M.left}" y="${H - 10}" font-size="10" fill="#555">${escapeXml(note)}</text>` : '',
    '</svg>',
    '',
  ].join('\n');
}

function yAxis(W: number, right: number, ticks: number[], y: (v: number) => number, label: string): string[] {
  const out = [`<line x1="${M.left}" y1="${M.top}" x2="${M.left}" y2="${H - M.bottom}" stroke="black"/>`];
  for (const t of ticks) {
    out.push(`<line x1="${M.left - 4}" y1="${n2(y(t))}" x2="${W - right}" y2="${n2(y(t))}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${M.left - 7}" y="${n2(y(t) + 4)}" text-anchor="end">${fmt(t)}</text>`);
  }
  const cy = (M.top + H - M.bottom) / 2;
  out.push(`<text x="16" y="${cy}" text-anchor="middle" transform="rotate(-90 16 ${cy})">${escapeXml(label)}</text>`);
  return out;
}

function legend(W: number, right: number, names: readonly string[]): string[] {
  return names.flatMap((name, i) => {
    const y = M.top + 10 + i * 20;
    const x = W - right + 15;
    return [
      `<rect x="${x}" y="${y - 9}" width="14" height="10" fill="${COLORS[i % COLORS.length]}"/>`,
      `<text x="${x + 20}" y="${y}">${escapeXml(name)}</text>`,
    ];
  });
}

export function lineChartSvg(c: LineChart): string {
  const xs = c.series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = c.series.flatMap((s) => [...s.points.map((p) => p[1]), ...(s.ranges ?? []).flat()]).filter(Number.isFinite);
  if (xs.length === 0 || ys.length === 0) throw new RangeError(`lineChartSvg(${c.title}): no points`);
  if (c.reference) ys.push(c.reference.y);
  const xt = niceTicks(Math.min(...xs), Math.max(...xs), 6);
  const yt = niceTicks(Math.min(...ys), Math.max(...ys), 5);
  const { W, right } = layout(c.series.map((s) => s.name));
  const x = (v: number) => M.left + ((v - xt[0]) / (xt[xt.length - 1] - xt[0])) * PLOT_W;
  const y = (v: number) => H - M.bottom - ((v - yt[0]) / (yt[yt.length - 1] - yt[0])) * (H - M.top - M.bottom);
  const body = yAxis(W, right, yt, y, c.yLabel);
  body.push(`<line x1="${M.left}" y1="${H - M.bottom}" x2="${W - right}" y2="${H - M.bottom}" stroke="black"/>`);
  for (const t of xt) {
    body.push(`<line x1="${n2(x(t))}" y1="${H - M.bottom}" x2="${n2(x(t))}" y2="${H - M.bottom + 4}" stroke="black"/>`);
    body.push(`<text x="${n2(x(t))}" y="${H - M.bottom + 17}" text-anchor="middle">${fmt(t)}</text>`);
  }
  body.push(`<text x="${M.left + PLOT_W / 2}" y="${H - M.bottom + 36}" text-anchor="middle">${escapeXml(c.xLabel)}</text>`);
  if (c.reference) {
    const ry = n2(y(c.reference.y));
    body.push(`<line x1="${M.left}" y1="${ry}" x2="${W - right}" y2="${ry}" stroke="#888" stroke-dasharray="5,4"/>`);
    body.push(`<text x="${W - right - 4}" y="${Number(ry) - 4}" text-anchor="end" fill="#555">${escapeXml(c.reference.label)}</text>`);
  }
  c.series.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    // Series side by side by a few pixels, so error bars at the same x stay apart.
    const sx = (v: number) => x(v) + (i - (c.series.length - 1) / 2) * 4;
    const pts = s.points.filter((p) => Number.isFinite(p[1]));
    if (pts.length > 1) body.push(`<polyline fill="none" stroke="${color}" stroke-width="2" points="${pts.map((p) => `${n2(sx(p[0]))},${n2(y(p[1]))}`).join(' ')}"/>`);
    s.points.forEach((p, j) => {
      const r = s.ranges?.[j];
      if (r && Number.isFinite(r[0]) && Number.isFinite(r[1])) {
        body.push(`<line x1="${n2(sx(p[0]))}" y1="${n2(y(r[0]))}" x2="${n2(sx(p[0]))}" y2="${n2(y(r[1]))}" stroke="${color}"/>`);
      }
      if (Number.isFinite(p[1])) body.push(`<circle cx="${n2(sx(p[0]))}" cy="${n2(y(p[1]))}" r="3.5" fill="${color}"/>`);
    });
  });
  body.push(...legend(W, right, c.series.map((s) => s.name)));
  return frame(W, c.title, c.note, body);
}

export function barChartSvg(c: BarChart): string {
  const vals = c.series.flatMap((s) => s.values).filter(Number.isFinite);
  if (vals.length === 0 || c.groups.length === 0) throw new RangeError(`barChartSvg(${c.title}): no values`);
  for (const s of c.series) {
    if (s.values.length !== c.groups.length) throw new RangeError(`barChartSvg(${c.title}): series ${s.name} has ${s.values.length} values for ${c.groups.length} groups`);
  }
  const { W, right } = layout(c.series.map((s) => s.name));
  const yt = niceTicks(Math.min(0, ...vals), Math.max(...vals), 5);
  const y = (v: number) => H - M.bottom - ((v - yt[0]) / (yt[yt.length - 1] - yt[0])) * (H - M.top - M.bottom);
  const body = yAxis(W, right, yt, y, c.yLabel);
  body.push(`<line x1="${M.left}" y1="${n2(y(0))}" x2="${W - right}" y2="${n2(y(0))}" stroke="black"/>`);
  const groupW = PLOT_W / c.groups.length;
  const barW = (groupW * 0.8) / c.series.length;
  c.groups.forEach((g, gi) => {
    const gx = M.left + gi * groupW + groupW * 0.1;
    body.push(`<text x="${n2(gx + groupW * 0.4)}" y="${H - M.bottom + 17}" text-anchor="middle">${escapeXml(g)}</text>`);
    c.series.forEach((s, si) => {
      const v = s.values[gi];
      if (!Number.isFinite(v)) return;
      const top = Math.min(y(v), y(0));
      const h = Math.abs(y(v) - y(0));
      const bx = gx + si * barW;
      body.push(`<rect x="${n2(bx)}" y="${n2(top)}" width="${n2(barW - 2)}" height="${n2(h)}" fill="${COLORS[si % COLORS.length]}"/>`);
      body.push(`<text x="${n2(bx + barW / 2 - 1)}" y="${n2(top - 3)}" text-anchor="middle" font-size="10">${fmt(v)}</text>`);
    });
  });
  body.push(...legend(W, right, c.series.map((s) => s.name)));
  return frame(W, c.title, c.note, body);
}
