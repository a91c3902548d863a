// Text <-> token ids for a model directory, through @huggingface/tokenizers (the
// model's own tokenizer.json and tokenizer_config.json). Models without a
// tokenizer.json still serve token-id prompts.
import { Tokenizer } from '@huggingface/tokenizers';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

export const NO_TOKENIZER_MESSAGE = 'model has no tokenizer.json; pass token ids';

/**
 * How a stream can find a token's text without decoding its neighbours:
 * - 'per-token': a plain ByteLevel decoder (GPT-2 style: DeepSeek, Qwen, the embedded model) joins
 *   per-token texts, so a token's text is its own decode wherever it stands (once its neighbours end on
 *   a character boundary);
 * - 'after-first': a SentencePiece decoder (Metaspace, or Llama/Mistral/Mixtral's Replace '▁' -> ' ',
 *   ByteFallback, Fuse, Strip one leading space) joins per-token texts too, but drops the leading
 *   space of the first token that reaches it; after any such token a token's text is its continuation
 *   (see streamPiece);
 * - 'windowed': anything else; only the two decodes of IncrementalDetokenizer are exact.
 */
export type StreamDecoding = 'per-token' | 'after-first' | 'windowed';

type DecoderJson = { type?: unknown; decoders?: unknown; start?: unknown; stop?: unknown } | null | undefined;

/** The StreamDecoding of a tokenizer.json `decoder`; 'windowed' unless its shape is one known to be per-token. */
export function streamDecodingOf(decoder: DecoderJson): StreamDecoding {
  if (!decoder) return 'windowed';
  if (decoder.type === 'ByteLevel') return 'per-token';
  if (decoder.type === 'Metaspace') return 'after-first';
  if (decoder.type !== 'Sequence' || !Array.isArray(decoder.decoders)) return 'windowed';
  // Per-token steps (Replace, ByteFallback), then Fuse, then at most one Strip of one leading
  // character: Replace or ByteFallback after Fuse could match across tokens, and a Strip of more
  // than the first character, or of trailing ones, is not a first-token-only change.
  const steps = decoder.decoders as DecoderJson[];
  const fuse = steps.findIndex((d) => d?.type === 'Fuse');
  if (fuse < 0) return 'windowed';
  const before = steps.slice(0, fuse).every((d) => d?.type === 'Replace' || d?.type === 'ByteFallback');
  const after = steps.slice(fuse + 1);
  const strip = after.every((d) => d?.type === 'Strip' && (d.start === 0 || d.start === 1) && d.stop === 0);
  return before && after.length <= 1 && strip ? 'after-first' : 'windowed';
}

export class TextTokenizer {
  readonly streamDecoding: StreamDecoding;
  /** streamText([id]) per id (see piece). */
  private readonly pieces = new Map<number, string>();
  /** streamPiece per id ('after-first'); null where its text did not follow the anchor's. */
  private readonly continuations = new Map<number, string | null>();
  /** 'after-first': a token whose text is plain and non-empty, and that text: continuations are decoded after it. */
  private anchor: { id: number; text: string } | null | undefined;

  private constructor(
    private readonly tok: Tokenizer,
    decoder: DecoderJson,
  ) {
    this.streamDecoding = streamDecodingOf(decoder);
  }

  /** Loads <modelDir>/tokenizer.json (and tokenizer_config.json when present); null when absent. */
  static async load(modelDir: string): Promise<TextTokenizer | null> {
    const tokenizerPath = join(modelDir, 'tokenizer.json');
    if (!existsSync(tokenizerPath)) return null;
    const configPath = join(modelDir, 'tokenizer_config.json');
    const readJson = async (path: string): Promise<object> => {
      try {
        return JSON.parse(await readFile(path, 'utf8')) as object;
      } catch (err) {
        throw new Error(`cannot read ${path}: ${(err as Error).message}`);
      }
    };
    const json = await readJson(tokenizerPath);
    const config = existsSync(configPath) ? await readJson(configPath) : {};
    try {
      return new TextTokenizer(new Tokenizer(json, config), (json as { decoder?: DecoderJson }).decoder);
    } catch (err) {
      throw new Error(`cannot build a tokenizer from ${tokenizerPath}: ${(err as Error).message}`);
    }
  }

  /** Token ids of `text`, with the special tokens the tokenizer adds (e.g. BOS) unless told otherwise. */
  encode(text: string, addSpecialTokens = true): number[] {
    return this.tok.encode(text, { add_special_tokens: addSpecialTokens }).ids;
  }

  /**
   * Text of `ids`. Ids the tokenizer does not know (a model's vocabulary is often
   * padded past the tokenizer's) decode to nothing.
   */
  decode(ids: readonly number[], options: { skipSpecialTokens?: boolean; cleanUpSpaces?: boolean } = {}): string {
    const known = ids.filter((id) => this.tok.id_to_token(id) !== undefined);
    if (known.length === 0) return '';
    return this.tok.decode(known, {
      skip_special_tokens: options.skipSpecialTokens ?? false,
      ...(options.cleanUpSpaces === undefined ? {} : { clean_up_tokenization_spaces: options.cleanUpSpaces }),
    });
  }

  /**
   * Text of generated ids as a stream shows it: special tokens skipped, no cleanup of
   * tokenization spaces (the cleanup can rewrite text before later ids, which would break
   * the prefix relation incremental decoding relies on).
   */
  streamText(ids: readonly number[]): string {
    return this.decode(ids, { skipSpecialTokens: true, cleanUpSpaces: false });
  }

  /** streamText of one id alone (cached: a stream asks for each token it makes). */
  piece(id: number): string {
    let text = this.pieces.get(id);
    if (text === undefined) {
      text = this.streamText([id]);
      this.pieces.set(id, text);
    }
    return text;
  }

  /**
   * A token's text in a stream once nothing before it is held back, or undefined where that needs
   * its neighbours ('windowed', or no anchor token): 'per-token' its piece; 'after-first' its text
   * after a plain token (valid only when a token that reaches the decoder precedes it in the decode:
   * IncrementalDetokenizer checks). '' for specials and unknown ids. Cached.
   */
  streamPiece(id: number): string | undefined {
    if (this.streamDecoding === 'per-token') return this.piece(id);
    if (this.streamDecoding !== 'after-first') return undefined;
    let text = this.continuations.get(id);
    if (text === undefined) {
      const anchor = this.anchorToken();
      if (!anchor) return undefined;
      const both = this.streamText([anchor.id, id]);
      text = both.startsWith(anchor.text) ? both.slice(anchor.text.length) : null;
      this.continuations.set(id, text);
    }
    return text ?? undefined;
  }

  private anchorToken(): { id: number; text: string } | null {
    if (this.anchor === undefined) {
      this.anchor = null;
      // A vocabulary token for a short plain word, by its SentencePiece spelling, bare, or encoded.
      const candidates = ['a', 'the', 'x', '0'].flatMap((w) => {
        const encoded = this.encode(w, false);
        return [this.tokenToId(`\u2581${w}`), this.tokenToId(w), encoded.length === 1 ? encoded[0] : undefined];
      });
      for (const id of candidates) {
        const text = id === undefined ? '' : this.piece(id);
        if (/^[A-Za-z0-9]+$/.test(text)) {
          this.anchor = { id: id!, text };
          break;
        }
      }
    }
    return this.anchor;
  }

  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }
}

/** A prompt as text or token ids, to ids. Text needs a tokenizer. */
export function encodePrompt(prompt: string | readonly number[], tokenizer: TextTokenizer | null): number[] {
  if (typeof prompt !== 'string') return [...prompt];
  if (!tokenizer) throw new Error(NO_TOKENIZER_MESSAGE);
  return tokenizer.encode(prompt);
}
