/**
 * The checks a generate() call makes at the call, so a bad request fails there (naming the field)
 * and not later when its result is consumed: the prompt's ids against the context and the
 * vocabulary, and the generation options (sampling, min-p, logprobs, max tokens, stop strings).
 */
import type { GenerateOptions } from '../api/types.js';
import { InvalidRequestError } from '../errors.js';
import { LOGPROBS_MAX_TOP } from '../kernels/logprobs.js';
import type { ModelSpec } from '../model/spec.js';
import { samplingOf, validateSampling } from './sampling/params.js';

/** Refuses an empty prompt, one longer than the context, or an id outside the vocabulary. */
export function checkPrompt(ids: readonly number[], contextLength: number, spec: ModelSpec): void {
  if (ids.length === 0) {
    throw new InvalidRequestError(
      'the prompt is empty and the tokenizer adds no BOS token: give at least one token',
    );
  }
  if (ids.length > contextLength) {
    throw new InvalidRequestError(
      `the prompt is ${ids.length} tokens, longer than the context of ${contextLength} tokens` +
        (contextLength < spec.maxPositionEmbeddings
          ? ` (the model allows ${spec.maxPositionEmbeddings}; raise contextLength / --context)`
          : ` (max_position_embeddings of the model)`),
    );
  }
  for (const id of ids) {
    if (!Number.isInteger(id) || id < 0 || id >= spec.vocabSize) {
      throw new InvalidRequestError(`token id ${id} is outside the vocabulary (0..${spec.vocabSize - 1})`);
    }
  }
}

/** Refuses generation options out of range. */
export function checkGenerateOptions(opts: GenerateOptions): void {
  validateSampling(samplingOf(opts));
  const minP = opts.minP;
  if (minP !== undefined && !(minP >= 0 && minP <= 1)) {
    throw new InvalidRequestError(`minP is ${minP}; expected a number in [0, 1]`);
  }
  const lp = opts.logprobs;
  if (lp !== undefined && (!Number.isInteger(lp) || lp < 0 || lp > LOGPROBS_MAX_TOP)) {
    throw new InvalidRequestError(`logprobs is ${lp}; expected an integer in [0, ${LOGPROBS_MAX_TOP}]`);
  }
  const m = opts.maxTokens;
  if (m !== undefined && (!Number.isInteger(m) || m < 0)) {
    throw new InvalidRequestError(`maxTokens is ${m}; expected an integer >= 0`);
  }
  if (opts.stop !== undefined) {
    if (!Array.isArray(opts.stop) || opts.stop.some((s) => typeof s !== 'string' || s.length === 0)) {
      throw new InvalidRequestError('stop must be a list of non-empty strings');
    }
  }
}
