// bench/lib/args.ts: numbers and lists parsed and checked; unknown options refused.
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { benchArgs } from '../../bench/lib/args.js';

test('benchmark options: defaults, numbers, lists, --quick, and refusals', () => {
  const d = { rate: 2, counts: [0, 5] };
  assert.deepEqual(benchArgs(d, []), { rate: 2, counts: [0, 5], quick: false });
  assert.deepEqual(benchArgs(d, ['--rate', '1.5', '--counts', '1,10,20', '--quick']), { rate: 1.5, counts: [1, 10, 20], quick: true });
  assert.throws(() => benchArgs(d, ['--rate', 'fast']), /--rate: expected a non-negative number/);
  assert.throws(() => benchArgs(d, ['--counts', '1,,2']), /--counts/);
  assert.throws(() => benchArgs(d, ['--nope', '1']), /Unknown option/);
});
