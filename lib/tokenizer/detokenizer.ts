// Streaming detokenization: turns generated ids into text pieces as they arrive,
// emitting only complete characters. A byte-level token can end inside a
// multi-byte UTF-8 character; decoding it alone yields U+FFFD, so such text is held
// back until the following tokens complete it. Decoding a few tokens of context
// before the new ones keeps word-boundary spaces right (SentencePiece-style
// decoders drop a leading space at the start of a decode). Same scheme as vLLM's
// detokenize_incrementally. Where decoding is context-free (a ByteLevel decoder) and
// nothing is held back, a token's text is its own cached decode when that is whole
// characters: the same piece the two decodes would give, for one map lookup (the
// two decodes cost about 2.5 us a token, the largest part of the scheduler's work).
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
    if (this.tokenizer.contextFree && this.readOffset === this.ids.length - 1) {
      // Nothing held back: with a context-free decoder the two decodes below differ by
      // exactly this token's text when that is valid UTF-8 on its own (it then starts a
      // character, which ends a partial one before it the same way in both decodes).
      const piece = this.tokenizer.piece(id);
      if (piece !== '' && !piece.includes(REPLACEMENT)) {
        this.prefixOffset = this.readOffset;
        this.readOffset = this.ids.length;
        return piece;
      }
    }
    return this.emit(false);
  }

  /** Text still held back at the end of generation (an incomplete character decodes to U+FFFD). */
  flush(): string {
    return this.emit(true);
  }

  private emit(final: boolean): string {
    const prefix = this.tokenizer.streamText(this.ids.slice(this.prefixOffset, this.readOffset));
    const full = this.tokenizer.streamText(this.ids.slice(this.prefixOffset));
    if (full.length <= prefix.length || (!final && full.endsWith(REPLACEMENT))) return '';
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return full.slice(prefix.length);
  }
}
