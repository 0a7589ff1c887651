/**
 * Draft-free speculative decoding, per sequence: guesses the next tokens from what the sequence
 * already holds, so one forward pass can verify several (the scheduler runs the guesses as extra
 * rows and keeps the longest prefix the model itself would have chosen). Two sources:
 *
 * - prompt lookup: the longest n-gram (up to 16 tokens) ending the sequence that occurred
 *   earlier in it (prompt + generated); its continuation there is the draft.
 * - recycling (Token Recycling, Luo et al. 2024): the engine's adjacency table on the GPU (each
 *   token id's top-k ids from the logits the last time it was an input, updated every step without
 *   reading logits back, forward/recycle.ts) gives a chain of guesses built on the GPU from each
 *   step's chosen id, which comes back with the ids (`offer`). Where no such guesses exist (CPU
 *   sampling reads logits instead), a CPU store stands in: for each token id, the successors the
 *   model chose after it in this sequence, most recent first, up to `SUCCESSORS` of them, learnt
 *   from the sequence's bigrams and every verified row's choice. As in the paper, the GPU's guesses
 *   are a token tree (recycling's static shape, token-tree.ts: several candidates per level, the
 *   top-1 path deepest), verified in one pass with a tree attention mask; where the KV cache
 *   cannot take a tree (compressed formats, a sliding pool: `trees` false), its top-1 path.
 *
 * Lossless: a guess is accepted exactly when it equals the model's argmax, so greedy output is the
 * output of plain decoding; under sampling, when it equals the row's own draw, which keeps the
 * output distribution that of plain sampling (schedule/verify.ts). Not with a grammar (its matcher
 * cannot be rewound past rejected guesses).
 *
 * Never much slower than plain decoding: a verifying step runs unpipelined and computes a row per
 * guess, so speculation probes (a few verifying steps) and rests (plain pipelined decode, for
 * 32 tokens doubling to 512) while its guesses are not accepted often enough to pay for that, or
 * while the engine's verifying steps produce tokens more slowly in wall time than its plain
 * pipelined steps; and the engine caps the guesses per sequence at the size its verifying steps
 * measured fastest (schedule/spec-clock.ts).
 */
import { InvalidRequestError } from '../errors.js';
import { RECYCLE_NONE } from '../kernels/recycle-topk.js';
import type { SpecClock } from './schedule/spec-clock.js';
import { chainTree, fromShape, spine, type TokenTree } from './token-tree.js';

export interface SpeculativeOptions {
  /** Where guesses come from: recycled successors, prompt n-gram lookup, or lookup then recycling. */
  method: 'recycling' | 'lookup' | 'both';
  /**
   * Deepest guess verified per step, i.e. most guesses accepted per step (1-16; default 12 with
   * `lookup`, 4 otherwise); a token tree has at most TREE_NODES nodes within that depth. Lookup's
   * chains only grow while wholly accepted (twice as deep each time), so a deep cap costs a
   * sequence that is not copying nothing; recycled guesses deeper than a few levels rarely hold.
   */
  maxDraft?: number;
  /**
   * Greedy sequences also rest while this engine's verifying steps produce tokens more slowly in
   * wall time than its plain pipelined steps (default true). False: judged by accepted guesses
   * only, so which steps verify depends on the ids alone (reproducible runs, tests). Sampled
   * sequences are judged by accepted guesses only either way: which rows draw depends on it, so a
   * seed gives the same tokens run after run.
   */
  timed?: boolean;
  /**
   * Recycled guesses as a token tree verified in one pass with a tree attention mask (default
   * true, where the KV cache allows: f32/f16 without a sliding pool); false: their top-1 chain.
   */
  tree?: boolean;
}

/** Depth of a wholly accepted draft after which the next recycled draft is a chain (`wide`). */
const CHAIN_DEPTH = 3;
/** Successors kept per token id. */
const SUCCESSORS = 4;
/**
 * Most nodes of a recycled token tree a step verifies per sequence (each a row of the forward
 * pass; the first nodes of recycling's shape order are its likeliest).
 */
export const TREE_NODES = 12;
/**
 * Longest n-gram matched by prompt lookup. Long, because the longest match places a copy best:
 * with a small vocabulary (BabyLlama's 105 ids are mostly characters) 3-grams recur all over a
 * text, and the latest of them is often not the passage being copied.
 */
const MAX_NGRAM = 16;
/**
 * Verifying steps of a probe: speculation is judged over this many steps (or 2 that accepted
 * nothing), then either goes on (it paid) or rests.
 */
const PROBE_STEPS = 4;
/**
 * Accepted guesses per verifying step below which a probe did not pay: each guessed row costs
 * work, and a verifying step runs unpipelined, so a step that accepts nothing produced one token
 * for more than a pipelined step costs.
 */
const MIN_ACCEPTED = 0.5;
/**
 * Tokens a sequence decodes plainly (pipelined) after a probe that did not pay, before the next
 * probe: FIRST_REST, doubling after each probe that fails again up to MAX_REST, back to
 * FIRST_REST after one that pays. A sequence whose guesses never pay spends at most a few
 * unpipelined steps per MAX_REST tokens on them; one that starts copying (a quoted passage) is
 * found again within its rest.
 */
const FIRST_REST = 32;
/** Tokens decoded plainly before the first probe while the engine has not timed plain decoding. */
const FIRST_PLAIN = 8;
const MAX_REST = 512;

export function checkSpeculative(o: SpeculativeOptions | undefined): Required<SpeculativeOptions> | null {
  if (o === undefined) return null;
  if (!['recycling', 'lookup', 'both'].includes(o.method)) {
    throw new InvalidRequestError(
      `speculative.method must be 'recycling', 'lookup' or 'both', got ${String(o.method)}`,
    );
  }
  // Lookup's 12: on copy tasks at batch 1 (`kiln bench decode --copy`, lavapipe, BabyLlama and
  // stories260K), 12 beat 16 in all 10 sittings (1.92-2.73x of plain decode, 16 1.47-2.06x): 16
  // guesses and the sequence's own token make 17 rows, two of the GEMM's 16-row tiles of X (each
  // reading every weight) for one guess more per step. 15 (16 rows) swung 1.75-2.92x.
  const d = o.maxDraft ?? (o.method === 'lookup' ? 12 : 4);
  if (!(Number.isInteger(d) && d >= 1 && d <= 16)) {
    throw new InvalidRequestError(`speculative.maxDraft must be an integer from 1 to 16, got ${d}`);
  }
  if (o.timed !== undefined && typeof o.timed !== 'boolean') {
    throw new InvalidRequestError(`speculative.timed must be a boolean, got ${String(o.timed)}`);
  }
  if (o.tree !== undefined && typeof o.tree !== 'boolean') {
    throw new InvalidRequestError(`speculative.tree must be a boolean, got ${String(o.tree)}`);
  }
  return { method: o.method, maxDraft: d, timed: o.timed ?? true, tree: o.tree ?? true };
}

export class Speculator {
  /** Successors of each token id, most recent first. */
  private readonly next = new Map<number, number[]>();
  /**
   * Guesses to draft next: one more than the last step accepted (at most maxDraft), so a sequence
   * whose guesses fail verifies short drafts (each guessed row costs work) and one that copies
   * grows to the full length; after a wholly accepted lookup draft, twice its depth (a passage
   * being copied reaches the full length in a few steps). Starts at 2.
   */
  private length = 2;
  /** The last draft came from prompt lookup. */
  private lookedUp = false;
  /**
   * Whether the next recycled draft is a tree: unless the last step accepted its whole draft of at
   * least CHAIN_DEPTH levels (text the table predicts well, e.g. a repeated passage), where the
   * top-1 chain one level deeper holds what the tree would and the siblings would be rows of work
   * for nothing. Starts false: a sequence's first verifying step is the cheap chain, and a miss
   * widens it.
   */
  private wide = false;
  /** Positions of the sequence whose successor is in the store. */
  private learned = 0;
  /** Verifying steps and the guesses they accepted, over the sequence's life. */
  steps = 0;
  accepted = 0;
  drafted = 0;
  /** The current probe's verifying steps and the guesses they accepted. */
  private probeSteps = 0;
  private probeAccepted = 0;
  /** Tokens of the next rest, and the sequence length before which the current rest lasts. */
  private rest = FIRST_REST;
  private restUntil = 0;
  /** The sequence length at the last draft (a rest starts from there). */
  private at = 0;
  /** Guesses from the GPU's recycling table to follow the sequence at `length` tokens. */
  private recycled: { guesses: readonly number[]; length: number } | null = null;

  constructor(
    private readonly opts: Required<SpeculativeOptions>,
    /** The engine's wall-time account of verifying against plain steps (none: acceptance only). */
    private readonly clock: SpecClock | null = null,
  ) {}

  /**
   * Guesses to follow `tokens` (the sequence so far): at most `room` nodes (and the engine's cap,
   * SpecClock.cap), none deeper than `deepest`; a chain unless `trees` (the KV cache can verify a
   * token tree) and the GPU's recycled tree is at hand.
   */
  draft(tokens: readonly number[], room: number, trees = false, deepest = room): TokenTree {
    const none: TokenTree = { tokens: [], parents: [] };
    // The engine's cap on guesses per sequence, by what verifying steps of each size paid.
    const limit = Math.min(room, this.clock?.cap ?? room);
    const n = Math.min(limit, deepest, this.opts.maxDraft, this.length);
    // Until plain decoding has been timed, a first rest times it (on this engine's first request).
    if (this.clock && !this.clock.knowsPlain && this.restUntil === 0)
      this.restUntil = tokens.length + FIRST_PLAIN;
    if (this.resting(tokens) || n <= 0 || tokens.length === 0) return none;
    this.at = tokens.length;
    // Every bigram of the sequence (prompt and generated) not yet seen.
    for (; this.learned + 1 < tokens.length; this.learned++) {
      this.remember(tokens[this.learned] as number, tokens[this.learned + 1] as number);
    }
    const m = this.opts.method;
    const found = m === 'recycling' ? [] : lookup(tokens, n);
    this.lookedUp = found.length > 0;
    if (found.length > 0 || m === 'lookup') return chainTree(found);
    const r = this.recycled;
    if (r && r.length === tokens.length) {
      // The tree's depth follows the accepted lengths as a chain's length does.
      const depth = Math.min(this.opts.maxDraft, this.length, deepest);
      const tree = fromShape(r.guesses, RECYCLE_NONE, depth, Math.min(limit, TREE_NODES));
      if (tree.tokens.length > 0)
        return trees && this.opts.tree && this.wide ? tree : chainTree(spine(tree).slice(0, n));
    }
    const out: number[] = [];
    let t = tokens[tokens.length - 1] as number;
    while (out.length < n) {
      const s = this.next.get(t);
      if (!s) break;
      t = s[0] as number;
      out.push(t);
    }
    return chainTree(out);
  }

  /**
   * Takes a verifying step's outcome: `rows` the tokens of its rows (the sequence's last token then
   * the guesses), `ids` the model's choice after each row, `accepted` the guesses kept, `depth`
   * the draft's deepest level (a chain's length).
   */
  record(rows: readonly number[], ids: readonly number[], accepted: number, depth = rows.length - 1): void {
    this.wide = accepted < depth || depth < CHAIN_DEPTH;
    rows.forEach((t, i) => this.remember(t, ids[i] as number));
    this.steps++;
    this.drafted += rows.length - 1;
    this.accepted += accepted;
    this.length = this.lookedUp && accepted === depth ? 2 * depth : accepted + 1;
    this.probeSteps++;
    this.probeAccepted += accepted;
    if (this.clock && this.probeSteps >= 2 && this.clock.slower() === true) {
      // Slower in wall time: every greedy sequence of the engine rests together, so the next
      // probe verifies them in the same steps.
      this.clock.restAll();
      this.probeSteps = 0;
      this.probeAccepted = 0;
      return;
    }
    const failed =
      (this.probeSteps >= 2 && this.probeAccepted === 0) ||
      (this.probeSteps >= PROBE_STEPS && this.probeAccepted / this.probeSteps < MIN_ACCEPTED);
    if (failed) {
      this.restUntil = this.at + this.rest;
      this.rest = Math.min(MAX_REST, this.rest * 2);
    } else if (this.probeSteps < PROBE_STEPS) return;
    else {
      this.rest = FIRST_REST;
      this.clock?.paid();
    }
    this.probeSteps = 0;
    this.probeAccepted = 0;
  }

  /**
   * Takes the tree the GPU filled from the engine's recycling table (forward/recycle.ts: a token
   * per node of its shape, RECYCLE_NONE for none) to follow the sequence once it holds `length`
   * tokens; drafting prefers it to the CPU store.
   */
  offer(guesses: readonly number[], length: number): void {
    this.recycled = { guesses, length };
  }

  /** Between probes: guesses did not pay lately, so the sequence decodes plainly (pipelined). */
  resting(tokens: readonly number[]): boolean {
    // The engine-wide rest holds sequences that have probed: a new one probes once first (its
    // request may copy its prompt where the others' guesses failed), unless the engine has
    // settled on resting (two probes in a row found verifying slower).
    const engineRest = this.clock?.resting ?? false;
    return (
      tokens.length < this.restUntil || (engineRest && (this.steps > 0 || (this.clock?.settled ?? false)))
    );
  }

  /**
   * Whether a step after `tokens` would verify guesses: a pipelined burst stops for it, so a
   * sequence pipelines while it rests or has nothing to guess.
   */
  wants(tokens: readonly number[]): boolean {
    return this.draft(tokens, 1).tokens.length > 0;
  }

  private remember(token: number, successor: number): void {
    const s = this.next.get(token);
    if (!s) {
      this.next.set(token, [successor]);
      return;
    }
    const at = s.indexOf(successor);
    if (at === 0) return;
    if (at > 0) s.splice(at, 1);
    s.unshift(successor);
    if (s.length > SUCCESSORS) s.pop();
  }
}

/**
 * The continuation, up to `n` tokens, of the earlier occurrence of the longest n-gram (up to
 * MAX_NGRAM tokens) that ends `tokens`, the latest of the longest; empty when no token of it
 * occurs earlier. One pass over the sequence: at each earlier position, how many tokens before it
 * agree with the sequence's end.
 */
export function lookup(tokens: readonly number[], n: number): number[] {
  const len = tokens.length;
  let best = 0;
  let from = -1;
  // `end`: where a candidate occurrence ends and its continuation starts (latest first: recent
  // text predicts the continuation best among matches as long).
  for (let end = len - 1; end >= 1 && best < MAX_NGRAM; end--) {
    let g = 0;
    while (g < MAX_NGRAM && g < end && tokens[end - 1 - g] === tokens[len - 1 - g]) g++;
    if (g > best) {
      best = g;
      from = end;
    }
  }
  return from < 0 ? [] : (tokens.slice(from, Math.min(from + n, len)) as number[]);
}
