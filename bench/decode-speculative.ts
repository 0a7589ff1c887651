/**
 * `kiln bench decode --speculative`: greedy decode of the same requests on a plain engine and a
 * speculative one (the same model and options otherwise), alternated round by round (plain,
 * speculative, plain, ...) so that other load on the machine falls on both alike; medians of the
 * rounds, the speedup and the guesses accepted per verifying step. The plain engine keeps the
 * default pipelined decode, so the speedup is against what a user gets without speculation.
 */
import type { GenerateOptions } from '../src/api/types.js';
import type { Engine } from '../src/engine/engine.js';

const round = (x: number) => Math.round(x * 100) / 100;
const median = (xs: readonly number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
};

export interface SpeculativeBenchRow {
  batch: number;
  prompt_tokens: number;
  tokens_per_request: number;
  rounds: number;
  /** Median over the rounds of generated tokens per second of wall time. */
  plain_tokens_per_s: number;
  speculative_tokens_per_s: number;
  /** Median of the per-round ratios speculative / plain (each pair run back to back). */
  speedup: number;
  /** Over all speculative rounds: verifying steps, and the guesses they drafted and accepted. */
  verifying_steps: number;
  drafted_per_verifying_step: number;
  accepted_per_verifying_step: number;
}

/** Tokens of the text repeated after it in a copy prompt: the cue the continuation retells from. */
const COPY_CUE = 10;

/**
 * A prompt whose continuation copies it, prompt lookup's case (a quoted passage, code being
 * edited, a document read back): the model's own greedy text of `length` tokens from BOS, then
 * BOS and the text's first COPY_CUE tokens again, so the greedy continuation is the text once
 * more. It is the model's greedy text because small models do not retell an arbitrary text they
 * have read (BabyLlama continues a sampled story after its first tokens with its own words), but
 * from the same cue write their greedy text again: the continuation copies the prompt either way.
 */
export async function copyPrompt(e: Engine, length: number): Promise<number[]> {
  const opts: GenerateOptions = { maxTokens: length, temperature: 0, ignoreEos: true };
  const text = (await e.generate([1], opts).result()).tokenIds;
  return [1, ...text, 1, ...text.slice(0, COPY_CUE)];
}

/**
 * `batch` requests with distinct prompts of `promptTokens` ids (the first a BOS), `tokens` greedy
 * tokens each, on each engine per round; a warm-up round on each first. A prompt may be given
 * (`prompt(k)`, k = round * 1000 + request) to bench a task whose continuation copies it
 * (`copyPrompt`).
 */
export async function benchSpeculative(
  plain: Engine,
  spec: Engine,
  o: {
    batch: number;
    promptTokens: number;
    tokens: number;
    rounds: number;
    prompt?: (i: number) => number[];
  },
): Promise<SpeculativeBenchRow> {
  const V = Math.max(1, plain.tokenizer.vocabSize - 3);
  const prompt =
    o.prompt ??
    ((i: number) => [
      1,
      ...Array.from({ length: o.promptTokens - 1 }, (_, j) => 3 + ((j * 37 + i * 101) % V)),
    ]);
  const opts: GenerateOptions = { maxTokens: o.tokens, temperature: 0, ignoreEos: true };
  // Each round its own prompts (no prefix-cache hits across rounds), the same on both engines.
  const run = async (e: Engine, r: number) => {
    const t0 = performance.now();
    const got = await Promise.all(
      Array.from({ length: o.batch }, (_, i) => e.generate(prompt(r * 1000 + i), opts).result()),
    );
    const n = got.reduce((a, g) => a + g.tokenIds.length, 0);
    return n / ((performance.now() - t0) / 1000);
  };
  await run(plain, 0);
  await run(spec, 0);
  const before = spec.stats();
  const p: number[] = [];
  const s: number[] = [];
  for (let r = 1; r <= o.rounds; r++) {
    p.push(await run(plain, r));
    s.push(await run(spec, r));
  }
  const after = spec.stats();
  const steps = after.speculativeSteps - before.speculativeSteps;
  const per = (x: number) => (steps > 0 ? round(x / steps) : 0);
  return {
    batch: o.batch,
    prompt_tokens: prompt(0).length,
    tokens_per_request: o.tokens,
    rounds: o.rounds,
    plain_tokens_per_s: round(median(p)),
    speculative_tokens_per_s: round(median(s)),
    speedup: round(median(s.map((x, i) => x / (p[i] as number)))),
    verifying_steps: steps,
    drafted_per_verifying_step: per(after.draftedTokens - before.draftedTokens),
    accepted_per_verifying_step: per(after.acceptedTokens - before.acceptedTokens),
  };
}
