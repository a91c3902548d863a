// bench/lib/svg.ts: well-formed SVG, escaped text, points where the axes put them.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { barChartSvg, escapeXml, lineChartSvg, niceTicks } from '../../bench/lib/svg.js';

/** Tags balance and nest (a small well-formedness check: no XML parser in Node). */
function assertWellFormed(svg: string): void {
  const stack: string[] = [];
  for (const m of svg.matchAll(/<(\/?)([a-zA-Z]+)[^>]*?(\/?)>/g)) {
    if (m[3] === '/') continue;
    if (m[1] === '/') assert.equal(stack.pop(), m[2], `closing </${m[2]}>`);
    else stack.push(m[2]);
  }
  assert.deepEqual(stack, []);
  assert.ok(!/&(?!(lt|gt|amp|quot|apos);)/.test(svg), 'bare ampersand');
}

test('nice ticks are round and cover the range', () => {
  assert.deepEqual(niceTicks(0, 1.23, 5), [0, 0.25, 0.5, 0.75, 1, 1.25]);
  assert.deepEqual(niceTicks(0, 20, 4), [0, 5, 10, 15, 20]);
  const t = niceTicks(0.93, 1.17, 5);
  assert.ok(t[0] <= 0.93 && t[t.length - 1] >= 1.17);
  assert.deepEqual(niceTicks(3, 3, 5), [2.6, 2.8, 3, 3.2, 3.4], 'a flat range is padded by 10%');
  assert.throws(() => niceTicks(0, Infinity), RangeError);
});

test('a line chart: one polyline and one marker per point, escaped labels, the top point at the top of the plot', () => {
  const svg = lineChartSvg({
    title: 'TTFT <ratio> & TPOT',
    xLabel: 'adapters',
    yLabel: 'ratio',
    series: [
      { name: 'a', points: [[0, 1], [5, 1.5], [20, 2]], ranges: [[1, 1], [1.4, 1.6], [1.9, 2]] },
      { name: 'b', points: [[0, 1], [20, NaN]] },
    ],
    reference: { y: 1, label: 'base' },
    note: 'machine & date',
  });
  assertWellFormed(svg);
  assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.ok(svg.includes('TTFT &lt;ratio&gt; &amp; TPOT') && svg.includes('machine &amp; date'));
  assert.equal((svg.match(/<polyline/g) ?? []).length, 1, 'series b has one finite point: no line');
  assert.equal((svg.match(/<circle/g) ?? []).length, 4);
  // Ticks 1..2 and 0..20: the point (20, 2) sits at the plot's top right corner (margin 40; 70 + 550 wide),
  // its series drawn 2 px left of centre (two series side by side); (0, 1) at the bottom left.
  assert.ok(svg.includes('cx="618.0" cy="40.0"'), 'point (20, 2) at the top right corner of the plot');
  assert.ok(svg.includes('cx="68.0" cy="350.0"'), 'point (0, 1) at the bottom left corner');
  assert.match(svg, /width="(\d+)"/);
  assert.ok(Number(/width="(\d+)"/.exec(svg)![1]) >= 70 + 550 + 120, 'room for the legend right of the plot');
});

test('a bar chart: one bar per finite value, values labelled; mismatched series are refused', () => {
  const svg = barChartSvg({ title: 't', yLabel: 'tok/s', groups: ['prefill', 'decode'], series: [{ name: 'ours', values: [10, 20] }, { name: 'merged', values: [8, NaN] }] });
  assertWellFormed(svg);
  assert.equal((svg.match(/<rect /g) ?? []).length - 1 - 2, 3, 'background + 2 legend swatches + 3 bars');
  assert.ok(svg.includes('>20</text>') && svg.includes('>8</text>'));
  assert.throws(() => barChartSvg({ title: 't', yLabel: 'y', groups: ['a'], series: [{ name: 's', values: [1, 2] }] }), RangeError);
  assert.equal(escapeXml(`"a'<`), '&quot;a&apos;&lt;');
});
