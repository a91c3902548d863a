// Text <-> token ids for a model directory, through @huggingface/tokenizers (the
// model's own tokenizer.json and tokenizer_config.json). Models without a
// tokenizer.json still serve token-id prompts.
import { Tokenizer } from '@huggingface/tokenizers';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';

export const NO_TOKENIZER_MESSAGE = 'model has no tokenizer.json; pass token ids';

export class TextTokenizer {
  /**
   * Whether decoding is per-token concatenation, a token's text not depending on its
   * neighbours once they end on a character boundary: true for a plain ByteLevel decoder
   * (GPT-2 style: DeepSeek, Qwen, the embedded model); SentencePiece-style decoders strip a
   * leading space at the start of a decode, so they are not.
   */
  readonly contextFree: boolean;
  /** streamText([id]) per id (see piece). */
  private readonly pieces = new Map<number, string>();

  private constructor(
    private readonly tok: Tokenizer,
    decoderType: unknown,
  ) {
    this.contextFree = decoderType === 'ByteLevel';
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
      return new TextTokenizer(new Tokenizer(json, config), (json as { decoder?: { type?: unknown } | null }).decoder?.type);
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
