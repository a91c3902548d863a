// Streaming detokenization: turns generated ids into text pieces as they arrive,
// emitting only complete characters. A byte-level token can end inside a
// multi-byte UTF-8 character; decoding it alone yields U+FFFD, so such text is held
// back until the following tokens complete it. Decoding a few tokens of context
// before the new ones keeps word-boundary spaces right (SentencePiece-style
// decoders drop a leading space at the start of a decode). Same scheme as vLLM's
// detokenize_incrementally. Where nothing is held back and the tokenizer knows a token's text
// on its own (TextTokenizer.streamPiece: a ByteLevel decoder anywhere, a SentencePiece one
// after a first token), that cached text is emitted when it is whole characters: the same
// piece the two decodes would give, for one map lookup (the two decodes cost about 2.5 us a
// token, the largest part of the scheduler's work).
import type { TextTokenizer } from './tokenizer.js';

const REPLACEMENT = '\uFFFD';
const CONTEXT_TOKENS = 5;

export class IncrementalDetokenizer {
  private readonly ids: number[];
  private prefixOffset: number;
  private readOffset: number;
  /** Whether ids[prefixOffset, readOffset) holds a token that reaches the decoder (text, not special
   * or unknown), so that an 'after-first' decoder does not strip the next token's leading space. */
  private windowHasText: boolean;

  /** `context`: the ids before the first one pushed (usually the prompt). */
  constructor(
    private readonly tokenizer: TextTokenizer,
    context: readonly number[] = [],
  ) {
    this.ids = [...context];
    this.readOffset = this.ids.length;
    this.prefixOffset = Math.max(0, this.readOffset - CONTEXT_TOKENS);
    this.windowHasText = this.hasText(this.prefixOffset, this.readOffset);
  }

  /** Adds one id; returns the newly completed text ('' while a character is incomplete). */
  push(id: number): string {
    this.ids.push(id);
    const mode = this.tokenizer.streamDecoding;
    if (this.readOffset === this.ids.length - 1 && (mode === 'per-token' || (mode === 'after-first' && this.windowHasText))) {
      // Nothing held back: the two decodes below differ by exactly this token's text when
      // that is valid UTF-8 on its own (it then starts a character, which ends a partial one
      // before it the same way in both decodes).
      const piece = this.tokenizer.streamPiece(id);
      if (piece !== undefined && piece !== '' && !piece.includes(REPLACEMENT)) {
        this.prefixOffset = this.readOffset;
        this.readOffset = this.ids.length;
        this.windowHasText = true; // the token made text, so it reached the decoder
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
    this.windowHasText = this.hasText(this.prefixOffset, this.readOffset);
    return full.slice(prefix.length);
  }

  /** Whether one of ids[from, to) decodes to text alone (so it reaches the decoder; a token that
   * reaches it with no text alone, a lone '▁', says false: the slow path then, never a wrong piece). */
  private hasText(from: number, to: number): boolean {
    for (let i = from; i < to; i++) if (this.tokenizer.piece(this.ids[i]) !== '') return true;
    return false;
  }
}
