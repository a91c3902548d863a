import assert from 'node:assert/strict';
import { test } from 'node:test';

import { packStepRequest } from '../../lib/engine/engine.js';

test('packStepRequest lays chunks out struct-of-arrays, tokens concatenated in chunk order', () => {
  const req = packStepRequest([
    { seqId: 7, tokens: [1, 2, 3], sample: false },
    { seqId: 9, adapter: 2, tokens: Int32Array.of(42), logprobs: true, temperature: 0.5, topK: 40, topP: 0.9, seed: 2 ** 40 },
  ]);
  assert.deepEqual(req.seqIds, Int32Array.of(7, 9));
  assert.deepEqual(req.adapters, Int32Array.of(0, 2));
  assert.deepEqual(req.nTokens, Int32Array.of(3, 1));
  assert.deepEqual(req.tokens, Int32Array.of(1, 2, 3, 42));
  assert.deepEqual(req.sample, Uint8Array.of(0, 1));
  assert.deepEqual(req.logprobs, Uint8Array.of(0, 1));
  assert.deepEqual(req.temperature, Float32Array.of(0, 0.5));
  assert.deepEqual(req.topK, Int32Array.of(0, 40));
  assert.deepEqual(req.topP, Float32Array.of(1, 0.9));
  assert.deepEqual(req.seeds, Float64Array.of(0, 2 ** 40));
  assert.equal(req.returnLogits, undefined);
  assert.equal(packStepRequest([{ seqId: 0, tokens: [1] }], true).returnLogits, true);
});

test('packStepRequest refuses values a typed array would silently truncate', () => {
  assert.throws(() => packStepRequest([{ seqId: 0, tokens: [1, 2.5] }]), { name: 'TypeError', message: /chunk 0: tokens\[1\]/ });
  assert.throws(() => packStepRequest([{ seqId: 2 ** 31, tokens: [1] }]), { name: 'TypeError', message: /seqId/ });
  assert.throws(() => packStepRequest([{ seqId: 0, tokens: [NaN] }]), TypeError);
  assert.throws(() => packStepRequest([{ seqId: 0, tokens: [1], topK: 1.5 }]), { message: /topK/ });
});
