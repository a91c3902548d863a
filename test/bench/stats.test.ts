// bench/lib/stats.ts against hand-computed values (numpy's default quantile, type 7).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { bootstrapMedianCI, mean, median, pairedRatios, quantile, spread, stddev, summarize, verdict } from '../../bench/lib/stats.js';

test('quantiles interpolate between order statistics like numpy.quantile', () => {
  assert.equal(quantile([4, 1, 3, 2], 0.5), 2.5);
  assert.equal(quantile([1, 2, 3, 4], 0.25), 1.75);
  assert.equal(quantile([7], 0.99), 7);
  const hundred = Array.from({ length: 100 }, (_, i) => i + 1);
  assert.ok(Math.abs(quantile(hundred, 0.99) - 99.01) < 1e-9);
  assert.equal(quantile(hundred, 0), 1);
  assert.equal(quantile(hundred, 1), 100);
  assert.ok(Number.isNaN(quantile([], 0.5)));
  assert.throws(() => quantile([1], 1.5), RangeError);
  assert.equal(median([5, 1, 9]), 5);
});

test('summaries, means and spreads', () => {
  const s = summarize([3, 1, 2, 10]);
  assert.deepEqual({ ...s, p99: Number(s.p99.toFixed(2)) }, { n: 4, min: 1, p50: 2.5, p99: 9.79, max: 10, mean: 4 });
  assert.equal(summarize([]).n, 0);
  assert.equal(mean([1, 2, 3, 6]), 3);
  assert.ok(Math.abs(stddev([2, 4, 4, 4, 5, 5, 7, 9]) - 2.138089935) < 1e-8);
  assert.deepEqual(spread([1.1, 0.9, NaN, 1.0]), { value: 1.0, min: 0.9, max: 1.1, n: 3 });
  const r = pairedRatios([2, 3, 8], [1, 3, 4]);
  assert.deepEqual(r, { value: 2, min: 1, max: 2, n: 3 });
  assert.throws(() => pairedRatios([1], [1, 2]), RangeError);
});

test('the bootstrap interval of a median is deterministic, contains the estimate and narrows with more data', () => {
  const xs = Array.from({ length: 60 }, (_, i) => ((i * 37) % 60) - 20); // -20..39, median 9.5
  const a = bootstrapMedianCI(xs);
  assert.deepEqual(bootstrapMedianCI(xs), a);
  assert.equal(a.estimate, 9.5);
  assert.ok(a.lo <= 9.5 && 9.5 <= a.hi && a.lo > -5 && a.hi < 25, JSON.stringify(a));
  const wide = bootstrapMedianCI(xs.slice(0, 10));
  assert.ok(wide.hi - wide.lo > a.hi - a.lo);
  assert.deepEqual(bootstrapMedianCI([3, 3, 3]), { estimate: 3, lo: 3, hi: 3 });
});

test('verdicts: resolved when the interval excludes 0, bounded when it lies within the tolerance', () => {
  assert.equal(verdict({ estimate: 1, lo: 0.5, hi: 2 }, 0.1), 'resolved');
  assert.equal(verdict({ estimate: -1, lo: -2, hi: -0.5 }, 0.1), 'resolved');
  assert.equal(verdict({ estimate: 0, lo: -0.05, hi: 0.08 }, 0.1), 'bounded');
  assert.equal(verdict({ estimate: 0, lo: -0.5, hi: 0.08 }, 0.1), 'unresolved');
});
