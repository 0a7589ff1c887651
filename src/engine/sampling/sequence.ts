/**
 * One request's sampler: its settings, its seeded random numbers and its logit edits, whichever
 * end draws. Every token at a temperature above 0 takes exactly one uniform from the request's own
 * generator, on the GPU path (the `u` of its row) or the CPU path, which follow the same rules: a
 * seed reproduces the same tokens alone or batched, after a preemption, and on either path.
 *
 * Edits come in the order both paths apply them: the repetition penalty, then the logit bias and
 * the presence / frequency penalties (one additive edit per token id), then the grammar's mask,
 * then argmax or the draw, then (when asked) the logprobs of that row as it stands: at temperature
 * 1, after every edit (min-p included), so they describe the distribution the token was chosen
 * from before temperature and top-k / top-p (shaders/logprobs.wgsl, its twin logprobs.ref.ts).
 */
import type { LogitAdjustments, SamplingParams, TokenLogprobs } from '../../api/types.js';
import { logitAdjustRef } from '../../kernels/logit-adjust.ref.js';
import { logprobsRef } from '../../kernels/logprobs.ref.js';
import { applyRepetitionPenalty, sampleToken } from './cpu.js';
import type { RowAdjust, RowSampling } from './gpu.js';
import type { TokenMatcher } from './grammar.js';
import { isPlainGreedy } from './params.js';
import { Rng } from './rng.js';

export class SequenceSampler {
  /** The GPU argmax gives this request's tokens (after its edits, if any). */
  readonly greedy: boolean;
  /** The request edits logits (bias, presence / frequency penalties or a grammar). */
  readonly adjusts: boolean;
  /** A grammar constrains the tokens (its matcher's state moves only with accepted tokens). */
  readonly constrained: boolean;
  private readonly rng: Rng;
  /** T·ln(min_p) when min-p is on. */
  private readonly minPOffset: number | null;
  /** Times each generated token was drawn (the presence / frequency penalties). */
  private readonly counts = new Map<number, number>();

  constructor(
    readonly params: SamplingParams,
    seed: number,
    private readonly adjustments: LogitAdjustments = {},
    private readonly matcher: TokenMatcher | null = null,
    /** Alternatives reported per token (null: no logprobs), by the logprobs kernel after the draw. */
    readonly logprobs: number | null = null,
  ) {
    this.greedy = isPlainGreedy(params);
    this.rng = new Rng(seed);
    const a = adjustments;
    this.minPOffset =
      (a.minP ?? 0) > 0 && params.temperature > 0 ? params.temperature * Math.log(a.minP as number) : null;
    this.constrained = matcher !== null;
    this.adjusts =
      matcher !== null ||
      this.minPOffset !== null ||
      (a.logitBias !== undefined && Object.keys(a.logitBias).length > 0) ||
      (a.presencePenalty ?? 0) !== 0 ||
      (a.frequencyPenalty ?? 0) !== 0;
  }

  /**
   * This request's row of a GPU-sampled step: a uniform drawn for it unless its temperature is 0.
   * A speculative step takes one per row (the last token's and each guess's), drawn in row order.
   */
  gpuRow(context: readonly number[]): RowSampling {
    const p = this.params;
    return {
      temperature: p.temperature,
      topK: p.topK,
      topP: p.topP,
      u: p.temperature > 0 ? this.rng.next() : 0,
      repetitionPenalty: p.repetitionPenalty,
      context,
    };
  }

  /**
   * The edits and mask of the next token (null when the request has none); `after`: tokens assumed
   * drawn before it (a speculative row's earlier guesses, counted by the presence / frequency
   * penalties; never given with a grammar, whose matcher moves only with accepted tokens).
   */
  async rowAdjust(after: readonly number[] = []): Promise<RowAdjust | null> {
    if (!this.adjusts) return null;
    const edits = new Map<number, number>();
    const a = this.adjustments;
    for (const [id, bias] of Object.entries(a.logitBias ?? {})) edits.set(Number(id), bias);
    const presence = a.presencePenalty ?? 0;
    const frequency = a.frequencyPenalty ?? 0;
    if (presence !== 0 || frequency !== 0) {
      const counts = new Map(this.counts);
      for (const id of after) counts.set(id, (counts.get(id) ?? 0) + 1);
      for (const [id, n] of counts) edits.set(id, (edits.get(id) ?? 0) - presence - frequency * n);
    }
    return {
      edits,
      mask: this.matcher ? await this.matcher.mask() : null,
      ...(this.minPOffset !== null ? { minPOffset: this.minPOffset } : {}),
    };
  }

  /**
   * Records a drawn token (not an end-of-sequence one). False when the grammar has ended (the
   * token completed it and only end-of-sequence could follow, or it was refused).
   */
  accept(id: number): boolean {
    this.counts.set(id, (this.counts.get(id) ?? 0) + 1);
    if (!this.matcher) return true;
    return this.matcher.accept(id) && !this.matcher.terminated;
  }

  /**
   * The next token drawn on the CPU from a read-back logits row (modified in place), with its
   * logprobs when the request asks for them: the CPU sampling path only (EngineOptions.sampling
   * 'cpu'), where the row is on the CPU anyway; GPU steps get them from the logprobs kernel.
   */
  cpu(
    logits: Float32Array,
    context: readonly number[],
    adjust: RowAdjust | null,
  ): {
    id: number;
    logprob?: Omit<TokenLogprobs, 'token' | 'top'> & { top: { id: number; logprob: number }[] };
  } {
    const p = this.params;
    applyRepetitionPenalty(logits, context, p.repetitionPenalty);
    // Into a Float32Array each sum rounds to f32, as the kernel's.
    if (adjust) logitAdjustRef(logits, adjust);
    const id = sampleToken(logits, { ...p, repetitionPenalty: 1 }, this.rng, context);
    if (this.logprobs === null) return { id };
    // The logprobs kernel's float64 twin: the same numbers the GPU path reports.
    const lp = logprobsRef(logits, this.logprobs, id);
    return { id, logprob: { logprob: lp.logprob, top: lp.top } };
  }

  dispose(): void {
    this.matcher?.dispose();
  }
}
