import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';

import { IncrementalDetokenizer } from '../../lib/tokenizer/detokenizer.js';
import { TextTokenizer } from '../../lib/tokenizer/tokenizer.js';
import { repoRoot } from '../helpers/paths.js';

const FIXTURE = join(repoRoot(), 'test', 'tokenizer', 'fixtures', 'byte-bpe');

test('streamed pieces concatenate to the full text and never split a character', async () => {
  const tok = (await TextTokenizer.load(FIXTURE))!;
  const text = 'héllo 世界 🎉 hello world';
  const ids = tok.encode(text, false);
  const detok = new IncrementalDetokenizer(tok);
  const pieces = ids.map((id) => detok.push(id));
  pieces.push(detok.flush());
  assert.equal(pieces.join(''), text);
  for (const p of pieces) assert.ok(!p.includes('\uFFFD'), `piece ${JSON.stringify(p)} has a broken character`);
});

test('a token ending inside a character is held back until the character completes', async () => {
  const tok = (await TextTokenizer.load(FIXTURE))!;
  const detok = new IncrementalDetokenizer(tok);
  // 世 = E4 B8 96: token 265 holds E4 B8, then the single byte 0x96.
  assert.equal(detok.push(265), '');
  assert.equal(detok.push(0x96), '世');
  // 🎉 = F0 9F 8E 89, one byte per token.
  assert.equal(detok.push(0xf0), '');
  assert.equal(detok.push(0x9f), '');
  assert.equal(detok.push(0x8e), '');
  assert.equal(detok.push(0x89), '🎉');
});

test('flush emits an incomplete trailing character as U+FFFD', async () => {
  const tok = (await TextTokenizer.load(FIXTURE))!;
  const detok = new IncrementalDetokenizer(tok);
  assert.equal(detok.push(259), 'hello');
  assert.equal(detok.push(0xe4), '');
  assert.equal(detok.flush(), '\uFFFD');
});

test('with the prompt as context, the continuation keeps its leading space and skips specials', async () => {
  const tok = (await TextTokenizer.load(FIXTURE))!;
  const prompt = tok.encode('hello');
  const detok = new IncrementalDetokenizer(tok, prompt);
  assert.equal(detok.push(264), ' world');
  assert.equal(detok.push(267), ''); // </s> is special: not text
  assert.equal(detok.flush(), '');
});
