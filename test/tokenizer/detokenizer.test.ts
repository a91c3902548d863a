import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
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

/** The two-decode scheme (vLLM's detokenize_incrementally) on every token: the oracle for the cached fast path. */
function windowedPieces(tok: TextTokenizer, context: readonly number[], ids: readonly number[]): string[] {
  const all = [...context];
  let read = all.length;
  let prefixAt = Math.max(0, read - 5);
  const decode = (xs: number[]) => tok.decode(xs, { skipSpecialTokens: true, cleanUpSpaces: false });
  const emit = (final: boolean) => {
    const prefix = decode(all.slice(prefixAt, read));
    const full = decode(all.slice(prefixAt));
    if (full.length <= prefix.length || (!final && full.endsWith('\uFFFD'))) return '';
    [prefixAt, read] = [read, all.length];
    return full.slice(prefix.length);
  };
  const pieces = ids.map((id) => (all.push(id), emit(false)));
  pieces.push(emit(true));
  return pieces;
}

test('the cached per-token path gives the two-decode pieces exactly, on random ids with split characters, specials and unknown ids', async () => {
  const embedded = (await TextTokenizer.load(join(repoRoot(), 'models', 'default')))!;
  const fixture = (await TextTokenizer.load(FIXTURE))!;
  let state = 12345;
  const rand = (n: number) => ((state = (Math.imul(state, 1103515245) + 12345) >>> 0) >>> 8) % n;
  for (const tok of [embedded, fixture]) {
    assert.equal(tok.contextFree, true, 'both are ByteLevel tokenizers: the fast path is on');
    const vocab = tok.encode('héllo 世界 🎉 the quick brown fox', false);
    // Byte tokens (split characters), the text's own tokens, the specials, ids past the vocabulary.
    const pool = [...vocab, 0x96, 0xe4, 0xb8, 0xf0, 0x9f, 0x8e, 0x89, 0x80, 0xff, 0, 1, 2, 3, 100_000, 259, 265];
    let fast = 0;
    for (let trial = 0; trial < 300; trial++) {
      const context = Array.from({ length: rand(8) }, () => pool[rand(pool.length)]);
      const ids = Array.from({ length: 1 + rand(24) }, () => pool[rand(pool.length)]);
      const detok = new IncrementalDetokenizer(tok, context);
      const pieces = ids.map((id) => detok.push(id));
      pieces.push(detok.flush());
      assert.deepEqual(pieces, windowedPieces(tok, context, ids), `context ${context}, ids ${ids}`);
      fast += pieces.filter((p) => p !== '').length;
    }
    assert.ok(fast > 1000, 'the trials emit text');
  }
});

test('a decoder that is not context-free (SentencePiece Metaspace) keeps the two decodes', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ew-metaspace-'));
  const vocab = { '<unk>': 0, '<s>': 1, '</s>': 2, '▁hello': 3, '▁world': 4, hello: 5 };
  writeFileSync(
    join(dir, 'tokenizer.json'),
    JSON.stringify({
      version: '1.0',
      added_tokens: [{ id: 1, content: '<s>', special: true, single_word: false, lstrip: false, rstrip: false, normalized: false }],
      normalizer: null,
      pre_tokenizer: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
      post_processor: null,
      decoder: { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false },
      model: { type: 'BPE', vocab, merges: [], unk_token: '<unk>', fuse_unk: true, byte_fallback: false },
    }),
  );
  const tok = (await TextTokenizer.load(dir))!;
  assert.equal(tok.contextFree, false);
  // Alone, '▁world' decodes to 'world' (the leading space is stripped at the start of a
  // decode); after 'hello' in context it must keep its space.
  assert.equal(tok.piece(4), 'world');
  const detok = new IncrementalDetokenizer(tok, [3]);
  assert.equal(detok.push(4), ' world');
  assert.equal(detok.push(3), ' hello');
});
