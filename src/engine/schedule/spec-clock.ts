/**
 * Whether speculation pays on this engine, in wall time: the tokens per millisecond of its
 * verifying steps against those of plain pipelined decode, each a decaying sum over recent steps
 * (all sequences of a step together). A verifying step runs unpipelined and computes a row per
 * guess, so what it costs against a pipelined step depends on the device (on a CPU adapter every
 * row costs nearly a full row's work; on a GPU a decode step is bound by reading the weights):
 * measured, not assumed.
 */

/** Weight of the older steps at each new one: about the last 10 steps count. */
const DECAY = 0.9;
/** Tokens each side needs (decayed) before the comparison is trusted. */
const MIN_TOKENS = 4;
/**
 * Steps of the engine that every greedy sequence decodes plainly after a probe found verifying
 * slower: FIRST_REST, doubling after each such probe up to MAX_REST, back to FIRST_REST after a
 * probe that pays.
 */
const FIRST_REST = 32;
const MAX_REST = 128;

export class SpecClock {
  private readonly plain = { ms: 0, tokens: 0 };
  private readonly spec = { ms: 0, tokens: 0 };
  private rest = FIRST_REST;
  private restUntil = 0;

  /** `steps`: the engine's steps so far (pipelined ones counted as they are submitted). */
  constructor(private readonly steps: () => number = () => 0) {}

  /**
   * Every greedy sequence rests (a probe found verifying slower). The verifying steps' account
   * starts afresh, so the next probe is judged by its own steps (a request that copies its prompt
   * is not held back by the guesses of one that did not).
   */
  restAll(): void {
    this.restUntil = this.steps() + this.rest;
    this.rest = Math.min(MAX_REST, this.rest * 2);
    this.spec.ms = 0;
    this.spec.tokens = 0;
  }

  /** A probe paid: the next rest is short again. */
  paid(): void {
    this.rest = FIRST_REST;
  }

  /**
   * Two probes in a row found verifying slower (the rest has doubled to MAX_REST): new sequences
   * join the rest too rather than probing first, so an engine serving many short requests where
   * guesses do not pay stops paying a probe per request (the int4 bench model on lavapipe, 4
   * requests of 32 tokens at a time: 0.82x and 0.86x of plain decode before, 0.95x and 0.94x).
   */
  get settled(): boolean {
    return this.rest >= MAX_REST;
  }

  /** Within a rest of every greedy sequence. */
  get resting(): boolean {
    return this.steps() < this.restUntil;
  }

  /** Adds a step (or a pipelined burst) of `ms` wall time that produced `tokens`. */
  add(kind: 'plain' | 'spec', ms: number, tokens: number): void {
    const a = kind === 'plain' ? this.plain : this.spec;
    a.ms = a.ms * DECAY + ms;
    a.tokens = a.tokens * DECAY + tokens;
  }

  /** Plain decoding has been timed. */
  get knowsPlain(): boolean {
    return this.plain.tokens >= MIN_TOKENS;
  }

  /** Verifying steps produced tokens more slowly than plain decoding lately; null: not known yet. */
  slower(): boolean | null {
    if (!this.knowsPlain || this.spec.tokens < MIN_TOKENS) return null;
    return this.spec.tokens * this.plain.ms < this.plain.tokens * this.spec.ms;
  }
}
