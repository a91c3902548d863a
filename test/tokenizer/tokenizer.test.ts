import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { NO_TOKENIZER_MESSAGE, TextTokenizer, encodePrompt } from '../../lib/tokenizer/tokenizer.js';
import { repoRoot } from '../helpers/paths.js';

// test/tokenizer/fixtures/byte-bpe: byte-level BPE whose ids 0..255 are the bytes,
// then the merges in order: he=256 ll=257 hell=258 hello=259 Ġw=260 or=261
// Ġwor=262 ld=263 Ġworld=264 and 'ä¸'=265 (the first two bytes of 世), <s>=266 </s>=267.
const FIXTURE = join(repoRoot(), 'test', 'tokenizer', 'fixtures', 'byte-bpe');
const BOS = 266;

test('encode applies the merges and the BOS template', async () => {
  const tok = (await TextTokenizer.load(FIXTURE))!;
  assert.deepEqual(tok.encode('hello world'), [BOS, 259, 264]);
  assert.deepEqual(tok.encode('hello world', false), [259, 264]);
  // Unmerged text falls back to one token per byte: 'é' is C3 A9.
  assert.deepEqual(tok.encode('hé', false), [104, 0xc3, 0xa9]);
});

test('decode inverts encode, also for multi-byte text', async () => {
  const tok = (await TextTokenizer.load(FIXTURE))!;
  for (const text of ['hello world', 'héllo 世界 🎉', ' leading space', 'a\nb']) {
    assert.equal(tok.decode(tok.encode(text), { skipSpecialTokens: true }), text);
  }
  assert.equal(tok.decode([BOS, 259]), '<s>hello');
});

test('ids outside the tokenizer vocabulary decode to nothing', async () => {
  const tok = (await TextTokenizer.load(FIXTURE))!;
  assert.equal(tok.decode([259, 5000, 264]), 'hello world');
  assert.equal(tok.decode([5000]), '');
});

test('a model without tokenizer.json: text prompts fail clearly, id prompts work', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ew-notok-'));
  try {
    const tok = await TextTokenizer.load(dir);
    assert.equal(tok, null);
    assert.throws(() => encodePrompt('hello', tok), { message: NO_TOKENIZER_MESSAGE });
    assert.deepEqual(encodePrompt([5, 6, 7], tok), [5, 6, 7]);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test('encodePrompt tokenizes text when a tokenizer exists', async () => {
  const tok = await TextTokenizer.load(FIXTURE);
  assert.deepEqual(encodePrompt('hello', tok), [BOS, 259]);
});
