// Streaming detokenization: turns generated ids into text pieces as they arrive,
// emitting only complete characters. A byte-level token can end inside a
// multi-byte UTF-8 character; decoding it alone yields U+FFFD, so such text is held
// back until the following tokens complete it. Decoding a few tokens of context
// before the new ones keeps word-boundary spaces right (SentencePiece-style
// decoders drop a leading space at the start of a decode). Same scheme as vLLM's
// detokenize_incrementally.
import type { TextTokenizer } from './tokenizer.js';

const REPLACEMENT = '\uFFFD';
const CONTEXT_TOKENS = 5;

export class IncrementalDetokenizer {
  private readonly ids: number[];
  private prefixOffset: number;
  private readOffset: number;

  /** `context`: the ids before the first one pushed (usually the prompt). */
  constructor(
    private readonly tokenizer: TextTokenizer,
    context: readonly number[] = [],
  ) {
    this.ids = [...context];
    this.readOffset = this.ids.length;
    this.prefixOffset = Math.max(0, this.readOffset - CONTEXT_TOKENS);
  }

  /** Adds one id; returns the newly completed text ('' while a character is incomplete). */
  push(id: number): string {
    this.ids.push(id);
    return this.emit(false);
  }

  /** Text still held back at the end of generation (an incomplete character decodes to U+FFFD). */
  flush(): string {
    return this.emit(true);
  }

  private emit(final: boolean): string {
    // Cleanup of tokenization spaces can rewrite text before the new tokens, which
    // would break the prefix relation this relies on, so it stays off here.
    const decode = (ids: number[]) => this.tokenizer.decode(ids, { skipSpecialTokens: true, cleanUpSpaces: false });
    const prefix = decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = decode(this.ids.slice(this.prefixOffset));
    if (full.length <= prefix.length || (!final && full.endsWith(REPLACEMENT))) return '';
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return full.slice(prefix.length);
  }
}
