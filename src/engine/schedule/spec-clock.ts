/**
 * Whether speculation pays on this engine, in wall time, and how many guesses a verifying step
 * should hold: the tokens per millisecond of its verifying steps against those of plain pipelined
 * decode, each a decaying sum over recent steps (all sequences of a step together). A verifying
 * step runs unpipelined and computes a row per guess, so what it costs against a pipelined step
 * depends on the device (on a CPU adapter every row costs nearly a full row's work; on a GPU a
 * decode step is bound by reading the weights): measured, not assumed.
 *
 * The guesses per sequence are capped, and the cap climbs between CAPS by the rates measured at
 * each: up while the next cap is faster, or unmeasured (or measured more than RETRY engine steps
 * ago), not held off, and this one pays or had every guess accepted; down when the one below is
 * faster, holding off the cap dropped from (longer each time a retry is dropped from). Where
 * rows are cheap (a GPU; one sequence of a small model on a CPU adapter, where a step's fixed
 * cost dominates) it climbs to the drafts' own limits; where every row costs about a token's
 * work it stays at the few guesses that can still pay (the int4 bench model at batch 4 on
 * lavapipe: 12 rows 230 ms for 12 tokens, 20 rows 526 ms for 11, 32 rows 774 ms for 16, against
 * 23 ms per token pipelined).
 */

/** Weight of the older steps at each new one: about the last 10 steps count. */
const DECAY = 0.9;
/** Tokens an account needs (decayed) before its rate is trusted. */
const MIN_TOKENS = 4;
/**
 * Steps of the engine that every greedy sequence decodes plainly after a probe found verifying
 * slower: FIRST_REST, doubling after each such probe up to MAX_REST, back to FIRST_REST after a
 * probe that pays.
 */
const FIRST_REST = 32;
const MAX_REST = 128;
/** Most guesses per sequence a verifying step may hold: the levels the cap moves between. */
const CAPS = [1, 2, 4, 8, 16] as const;
/** The cap an engine starts at: 2 guesses (a sequence's first drafts are that short anyway). */
const FIRST_CAP = 1;
/**
 * Engine steps after which a rate is stale: FIRST_REST, so a probe after a rest measures afresh
 * (a request that copies its prompt is not held back by the guesses of one that did not), and a
 * cap found slower is tried again after its hold (below). Plain decoding's account goes stale the
 * same way: the next burst after it replaces it.
 */
const RETRY = FIRST_REST;
/**
 * A cap dropped from is held off for RETRY engine steps, doubling each time a retry is dropped
 * from again, up to MAX_HOLD, and back to RETRY once it measures at least as fast as the cap
 * below: on a device where its rows cost more than they return, every retry costs a step of the
 * wider shape (the int4 bench model at batch 4 on lavapipe: about 300 ms on a 4-second request),
 * and a draft whose guesses are all accepted does not make it pay.
 */
const MAX_HOLD = MAX_REST;

/** Most times its recent cost per token a single step is counted at. */
const OUTLIER = 3;

interface Account {
  ms: number;
  tokens: number;
  /** The engine step at which it was last added to. */
  at: number;
}

/** A cap's hold (MAX_HOLD): the engine step before which it is held off, and its next length. */
interface Hold {
  until: number;
  next: number;
}

export class SpecClock {
  private readonly plain: Account = { ms: 0, tokens: 0, at: 0 };
  /** Verifying steps at each cap of CAPS. */
  private readonly byCap: Account[] = CAPS.map(() => ({ ms: 0, tokens: 0, at: -Infinity }));
  /** Per cap of CAPS. */
  private readonly holds: Hold[] = CAPS.map(() => ({ until: 0, next: RETRY }));
  private capAt: number = FIRST_CAP;
  private rest = FIRST_REST;
  private restUntil = 0;

  /** `steps`: the engine's steps so far (pipelined ones counted as they are submitted). */
  constructor(private readonly steps: () => number = () => 0) {}

  /**
   * Every greedy sequence rests (a probe found verifying slower). The next probe starts from the
   * cap that did best; by then every cap's rate is stale, so it is judged by its own steps.
   */
  restAll(): void {
    this.capAt = this.best() ?? this.capAt;
    this.restUntil = this.steps() + this.rest;
    this.rest = Math.min(MAX_REST, this.rest * 2);
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

  /** Most guesses a sequence may add to the next verifying step. */
  get cap(): number {
    return CAPS[this.capAt] as number;
  }

  /**
   * Adds a step (or a pipelined burst) of `ms` wall time that produced `tokens`; a verifying
   * step's guesses were drafted under the current cap.
   */
  add(kind: 'plain' | 'spec', ms: number, tokens: number, rows = Infinity): void {
    const a = kind === 'plain' ? this.plain : (this.byCap[this.capAt] as Account);
    const fresh = this.fresh(a);
    // One step counts at most OUTLIER times what its tokens took lately: a pause of the host (a
    // collection, another process) would otherwise set the account for the next several steps.
    if (fresh && a.tokens >= MIN_TOKENS) ms = Math.min(ms, (OUTLIER * tokens * a.ms) / a.tokens);
    a.ms = (fresh ? a.ms * DECAY : 0) + ms;
    a.tokens = (fresh ? a.tokens * DECAY : 0) + tokens;
    a.at = this.steps();
    if (kind === 'spec') this.climb(tokens >= rows);
  }

  /** Plain decoding has been timed. */
  get knowsPlain(): boolean {
    return this.plain.tokens >= MIN_TOKENS;
  }

  /**
   * Verifying steps produced tokens more slowly than plain decoding lately at every cap measured;
   * null: not known yet (plain decoding untimed, nothing measured, or none pays so far and the
   * cap just moved to is unmeasured).
   */
  slower(): boolean | null {
    const b = this.best();
    if (!this.knowsPlain || b === null) return null;
    if ((this.rate(b) as number) >= this.plain.tokens / this.plain.ms) return false;
    return this.rate(this.capAt) === null ? null : true;
  }

  /**
   * Moves the cap one level toward the faster rate (see the class comment): down when the cap
   * below is faster, holding this one off; up when the cap above is, or is unmeasured, not held
   * off, and this one pays or the step accepted every guess (`whole`: the cap, not the guesses,
   * bounded what it produced, as when a passage is being copied on a device where a few guesses
   * do not pay and many do).
   */
  private climb(whole: boolean): void {
    const i = this.capAt;
    const here = this.rate(i);
    if (here === null) return;
    const below = i > 0 ? this.rate(i - 1) : null;
    const hold = this.holds[i] as Hold;
    if (below !== null && below > here) {
      this.capAt = i - 1;
      hold.until = this.steps() + hold.next;
      hold.next = Math.min(MAX_HOLD, hold.next * 2);
      return;
    }
    if (below !== null) hold.next = RETRY;
    if (i + 1 < CAPS.length) {
      const above = this.rate(i + 1);
      const pays = this.knowsPlain && here > this.plain.tokens / this.plain.ms;
      const free = this.steps() >= (this.holds[i + 1] as Hold).until;
      if (above === null ? free && (pays || whole) : above > here) this.capAt = i + 1;
    }
  }

  /** Tokens per ms of verifying steps at CAPS[i]; null: too few tokens, or stale. */
  private rate(i: number): number | null {
    const a = this.byCap[i] as Account;
    return this.fresh(a) && a.tokens >= MIN_TOKENS && a.ms > 0 ? a.tokens / a.ms : null;
  }

  /** The cap with the best rate (its index in CAPS; null: none measured lately). */
  private best(): number | null {
    let at: number | null = null;
    let r = 0;
    CAPS.forEach((_, i) => {
      const x = this.rate(i);
      if (x !== null && (at === null || x > r)) [at, r] = [i, x];
    });
    return at;
  }

  private fresh(a: Account): boolean {
    return this.steps() - a.at < RETRY;
  }
}
