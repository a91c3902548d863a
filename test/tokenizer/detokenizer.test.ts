import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { IncrementalDetokenizer } from '../../lib/tokenizer/detokenizer.js';
import { TextTokenizer, streamDecodingOf } from '../../lib/tokenizer/tokenizer.js';
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
    assert.equal(tok.streamDecoding, 'per-token', 'both are ByteLevel tokenizers: the fast path is on');
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

/** A SentencePiece tokenizer.json in a temporary directory: BPE with byte fallback (<0x00>..<0xFF>), no merges. */
function sentencePieceTokenizer(decoder: object): string {
  const dir = mkdtempSync(join(tmpdir(), 'ew-sentencepiece-'));
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  for (const t of ['▁', '▁hello', '▁world', 'hello', 'o', '▁a', 'a', '▁▁', 'é', '▁世界']) vocab[t] = Object.keys(vocab).length;
  const special = (id: number, content: string) => ({ id, content, special: true, single_word: false, lstrip: false, rstrip: false, normalized: false });
  writeFileSync(
    join(dir, 'tokenizer.json'),
    JSON.stringify({
      version: '1.0',
      added_tokens: [special(1, '<s>'), special(2, '</s>')],
      normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
      pre_tokenizer: null,
      post_processor: null,
      decoder,
      model: { type: 'BPE', vocab, merges: [], unk_token: '<unk>', fuse_unk: true, byte_fallback: true },
    }),
  );
  return dir;
}

// Llama 2, Mistral, Mixtral: tokenizer.json's decoder.
const LLAMA_DECODER = {
  type: 'Sequence',
  decoders: [
    { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
    { type: 'ByteFallback' },
    { type: 'Fuse' },
    { type: 'Strip', content: ' ', start: 1, stop: 0 },
  ],
};
const METASPACE_DECODER = { type: 'Metaspace', replacement: '▁', prepend_scheme: 'first', split: false };

test('SentencePiece decoders: a token keeps its leading space after context, loses it first', async () => {
  for (const decoder of [LLAMA_DECODER, METASPACE_DECODER]) {
    const tok = (await TextTokenizer.load(sentencePieceTokenizer(decoder)))!;
    const id = (t: string) => tok.tokenToId(t)!;
    assert.equal(tok.streamDecoding, 'after-first');
    // Alone, '▁world' decodes to 'world' (the leading space is stripped at the start of a
    // decode); after 'hello' in context it keeps its space, and so on after it.
    assert.equal(tok.piece(id('▁world')), 'world');
    const detok = new IncrementalDetokenizer(tok, [id('▁hello')]);
    assert.equal(detok.push(id('▁world')), ' world');
    assert.equal(detok.push(id('▁hello')), ' hello');
    // After only a special token (<s>), the first text token still loses its space.
    const afterBos = new IncrementalDetokenizer(tok, [1]);
    assert.equal(afterBos.push(id('▁world')), 'world');
    assert.equal(afterBos.push(id('▁world')), ' world');
  }
});

test('SentencePiece decoders: the cached path gives the two-decode pieces exactly and skips most decodes', async () => {
  for (const decoder of [LLAMA_DECODER, METASPACE_DECODER]) {
    const tok = (await TextTokenizer.load(sentencePieceTokenizer(decoder)))!;
    const id = (t: string) => tok.tokenToId(t)!;
    const byte = (b: number) => 3 + b;
    // Text tokens, a lone '▁', é and 世 as bytes (C3 A9, E4 B8 96), stray continuation bytes,
    // specials, the unknown token and ids past the vocabulary.
    const pool = ['▁', '▁hello', '▁world', 'hello', 'o', '▁a', 'a', '▁▁', 'é', '▁世界'].map(id);
    pool.push(byte(0xc3), byte(0xa9), byte(0xe4), byte(0xb8), byte(0x96), byte(0x41), byte(0x80), 0, 1, 2, 100_000);
    let state = 777;
    const rand = (n: number) => ((state = (Math.imul(state, 1103515245) + 12345) >>> 0) >>> 8) % n;
    const realDecode = tok.decode.bind(tok);
    let decodes = 0;
    tok.decode = (ids, options) => (decodes++, realDecode(ids, options));
    let [pushed, oracle] = [0, 0];
    // Two draws in three from the text tokens, as in generated text.
    const draw = () => (rand(3) < 2 ? pool[rand(10)] : pool[rand(pool.length)]);
    for (let trial = 0; trial < 300; trial++) {
      const context = Array.from({ length: rand(8) }, draw);
      const ids = Array.from({ length: 1 + rand(24) }, draw);
      decodes = 0;
      const detok = new IncrementalDetokenizer(tok, context);
      const pieces = ids.map((x) => detok.push(x));
      pieces.push(detok.flush());
      const ours = decodes;
      decodes = 0;
      assert.deepEqual(pieces, windowedPieces(tok, context, ids), `${decoder.type}: context ${context}, ids ${ids}`);
      if (trial >= 100) [pushed, oracle] = [pushed + ours, oracle + decodes]; // after the caches are warm
    }
    // Text tokens mostly take the cached path; split characters, specials and unknown ids do not.
    assert.ok(pushed < 0.5 * oracle, `${decoder.type}: ${pushed} decodes against the two-decode scheme's ${oracle}`);
  }
});

test('only decoders known to join per-token texts take the cached path', () => {
  assert.equal(streamDecodingOf({ type: 'ByteLevel' }), 'per-token');
  assert.equal(streamDecodingOf(METASPACE_DECODER), 'after-first');
  assert.equal(streamDecodingOf(LLAMA_DECODER), 'after-first');
  assert.equal(streamDecodingOf(null), 'windowed');
  assert.equal(streamDecodingOf({ type: 'WordPiece' }), 'windowed');
  assert.equal(streamDecodingOf({ type: 'CTC' }), 'windowed'); // merges repeated tokens
  const steps = LLAMA_DECODER.decoders;
  // A Replace after Fuse can match across tokens; a Strip of two leading or any trailing characters is not first-token-only.
  assert.equal(streamDecodingOf({ type: 'Sequence', decoders: [steps[2], steps[0], steps[3]] }), 'windowed');
  assert.equal(streamDecodingOf({ type: 'Sequence', decoders: [...steps.slice(0, 3), { ...steps[3], start: 2 }] }), 'windowed');
  assert.equal(streamDecodingOf({ type: 'Sequence', decoders: [...steps.slice(0, 3), { ...steps[3], stop: 1 }] }), 'windowed');
  assert.equal(streamDecodingOf({ type: 'Sequence', decoders: steps.filter((d) => d.type !== 'Fuse') }), 'windowed');
});
