/**
 * Streaming detokenization: generated ids pushed one at a time come out as text as soon as it is
 * complete, never splitting a multi-byte character or losing a SentencePiece space, and the
 * pieces concatenate to the decode of all the ids. Over any tokenizer's `decode` (KilnTokenizer's).
 */

/** What the decoder needs of a tokenizer. */
export interface TextDecoderOf {
  decode(ids: readonly number[], options: { skipSpecialTokens: boolean }): string;
}

/** Options of {@link IncrementalDecoder}. */
export interface IncrementalDecoderOptions {
  /** Leave out special tokens (as KilnTokenizer.decode does). Default false. */
  skipSpecialTokens?: boolean;
}

const REPLACEMENT_CHAR = '\uFFFD';

/**
 * Turns generated token ids, pushed one at a time, into text as soon as it is complete.
 *
 * Each push decodes a short window: the ids from `prefixOffset` on, and the same window without the
 * ids not yet emitted (`readOffset` on). The difference is the new text. Decoding a window rather
 * than single tokens keeps SentencePiece's "strip the leading space" decoder step from eating the
 * space of every streamed word (it strips the window's first space in both decodes alike), and text
 * that ends in U+FFFD (a multi-byte character whose byte-fallback tokens have not all arrived) is
 * held back until the character completes. The concatenation of everything returned equals
 * `decode(allIds)`.
 */
export class IncrementalDecoder {
  private readonly ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;
  private readonly skip: boolean;

  constructor(
    private readonly tokenizer: TextDecoderOf,
    options: IncrementalDecoderOptions = {},
  ) {
    this.skip = options.skipSpecialTokens ?? false;
  }

  private text(from: number, to: number): string {
    return this.tokenizer.decode(this.ids.slice(from, to), { skipSpecialTokens: this.skip });
  }

  /** Adds one generated id; returns the text it completes ("" while a character is still partial). */
  push(id: number): string {
    this.ids.push(id);
    const prefix = this.text(this.prefixOffset, this.readOffset);
    const full = this.text(this.prefixOffset, this.ids.length);
    if (full.length <= prefix.length || full.endsWith(REPLACEMENT_CHAR)) return '';
    const out = full.slice(prefix.length);
    // The next window starts at the ids just emitted, unless they decode to nothing (a skipped
    // special token): a window whose prefix is empty would let the decoder strip a real space.
    if (this.text(this.readOffset, this.ids.length) !== '') this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return out;
  }

  /** Returns what is still held back (a trailing partial character decodes to U+FFFD) and resets. */
  flush(): string {
    const prefix = this.text(this.prefixOffset, this.readOffset);
    const full = this.text(this.prefixOffset, this.ids.length);
    this.ids.length = 0;
    this.prefixOffset = 0;
    this.readOffset = 0;
    return full.length > prefix.length ? full.slice(prefix.length) : '';
  }
}
