/**
 * One request's sampler: its settings and its seeded random numbers, whichever end draws. Every
 * token at a temperature above 0 takes exactly one uniform from the request's own generator, on
 * the GPU path (the `u` of its row) or the CPU path, which follow the same rules: a seed
 * reproduces the same tokens alone or batched, after a preemption, and on either path.
 */
import type { SamplingParams } from '../../api/types.js';
import { sampleToken } from './cpu.js';
import type { RowSampling } from './gpu.js';
import { isPlainGreedy } from './params.js';
import { Rng } from './rng.js';

export class SequenceSampler {
  /** The GPU argmax alone gives this request's tokens. */
  readonly greedy: boolean;
  private readonly rng: Rng;

  constructor(
    readonly params: SamplingParams,
    seed: number,
  ) {
    this.greedy = isPlainGreedy(params);
    this.rng = new Rng(seed);
  }

  /** This request's row of a GPU-sampled step: a uniform drawn for it unless its temperature is 0. */
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

  /** The next token drawn on the CPU from a read-back logits row (modified in place). */
  cpu(logits: Float32Array, context: readonly number[]): number {
    return sampleToken(logits, this.params, this.rng, context);
  }
}
