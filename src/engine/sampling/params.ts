/** Sampling settings of a request: defaults, checks, and the one question the step asks of them. */
import type { GenerateOptions, SamplingParams } from '../../api/types.js';
import { InvalidRequestError } from '../../errors.js';

export const DEFAULT_SAMPLING: SamplingParams = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 };

/** True when the GPU argmax alone gives the answer. */
export function isPlainGreedy(p: SamplingParams): boolean {
  return p.temperature === 0 && p.repetitionPenalty === 1;
}

/** A request's sampling settings, defaults filled in. */
export function samplingOf(opts: GenerateOptions): SamplingParams {
  return {
    temperature: opts.temperature ?? DEFAULT_SAMPLING.temperature,
    topK: opts.topK ?? DEFAULT_SAMPLING.topK,
    topP: opts.topP ?? DEFAULT_SAMPLING.topP,
    repetitionPenalty: opts.repetitionPenalty ?? DEFAULT_SAMPLING.repetitionPenalty,
  };
}

/** Refuses settings no sampler can honour, naming the field. */
export function validateSampling(p: SamplingParams): void {
  const bad = (field: string, v: number, want: string) => {
    throw new InvalidRequestError(`${field} is ${v}; expected ${want}`);
  };
  if (!(p.temperature >= 0) || !Number.isFinite(p.temperature))
    bad('temperature', p.temperature, 'a number >= 0');
  if (!Number.isInteger(p.topK) || p.topK < 0) bad('topK', p.topK, 'an integer >= 0 (0 = off)');
  if (!(p.topP > 0 && p.topP <= 1)) bad('topP', p.topP, 'a number in (0, 1]');
  if (!(p.repetitionPenalty > 0) || !Number.isFinite(p.repetitionPenalty)) {
    bad('repetitionPenalty', p.repetitionPenalty, 'a number > 0');
  }
}
