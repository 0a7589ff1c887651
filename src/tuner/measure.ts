/**
 * Timing candidates against each other (DESIGN-NOTES §6, step 2). All of a class's candidates run
 * in each round, in one submission and a rotated order, so drift in the machine's speed (another
 * process, clocks) hits every candidate alike; each candidate's figure is the median of its rounds
 * after warm-up. Candidates clearly slower than the best so far are dropped after a few rounds.
 * Timing comes from GpuTimer: GPU timestamps where the adapter has them, else wall clock.
 */
import type { GpuTimer } from '../gpu/timer.js';
import type { Dispatch } from '../gpu/dispatch.js';

export interface MeasureOptions {
  /** Rounds run and discarded after the first (sizing) round. */
  warmup?: number;
  /** Measured rounds for candidates that survive rejection. */
  rounds?: number;
  /** After `rejectAfter` measured rounds, drop candidates slower than this × the best median. */
  rejectFactor?: number;
  rejectAfter?: number;
  /**
   * A class whose first round (all candidates once) takes longer than this many ms is heavy: it
   * gets no extra warm-up, 3 measured rounds and rejection after the first. Its kernels run long
   * enough that one timing is already steady, and the budget is better spent on other classes.
   */
  heavyRoundMs?: number;
  /**
   * Each candidate's dispatches repeat in its timed group until the fastest first-round time
   * reaches this many ms (timestamps have a resolution and a pass has a fixed cost), at most 64.
   */
  minGroupMs?: number;
  /** `clock()` by which the rounds must be done; a class that would not fit is not timed. */
  deadline?: number;
  /** The time the deadline is read against (default performance.now). */
  clock?: () => number;
  /**
   * Runs each round's GPU work (one submission); the engine's background tuning passes a wrapper
   * that waits until no request runs, so a request arriving waits for one round at most.
   */
  slice?: Slice;
}

/** Runs one short piece of tuning work holding the GPU (see MeasureOptions.slice). */
export type Slice = <T>(work: () => Promise<T>) => Promise<T>;

export const unsliced: Slice = (work) => work();

export interface Measured {
  /** Median ms of one run of the candidate's dispatches; null if it was rejected or never timed. */
  ms: (number | null)[];
  /** Measured rounds completed. */
  rounds: number;
}

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return NaN;
  return n % 2 ? (s[(n - 1) / 2] as number) : ((s[n / 2 - 1] as number) + (s[n / 2] as number)) / 2;
}

/**
 * Median ms per candidate. Candidate 0 is the default: it is never rejected, since every speedup is
 * measured against it.
 */
export async function timeCandidates(
  timer: GpuTimer,
  candidates: readonly (readonly Dispatch[])[],
  opts: MeasureOptions = {},
): Promise<Measured> {
  const deadline = opts.deadline ?? Infinity;
  const clock = opts.clock ?? (() => performance.now());
  const slice = opts.slice ?? unsliced;
  // The first round sizes the repetition (short kernels repeat so the figure is not the pass
  // cost) and is the first warm-up: drivers compile at first dispatch.
  const first = await slice(() =>
    timer.time(candidates.map((d, i) => ({ label: `tune.${i}`, dispatches: d }))),
  );
  const heavy = first.reduce((s, t) => s + t, 0) > (opts.heavyRoundMs ?? 100);
  const warmup = heavy ? 0 : (opts.warmup ?? 1);
  const rounds = heavy ? 3 : (opts.rounds ?? 5);
  const rejectAfter = heavy ? 1 : (opts.rejectAfter ?? 2);
  const rejectFactor = opts.rejectFactor ?? 1.5;
  const shortest = Math.min(...first.filter((t) => t > 0));
  const reps = Math.max(
    1,
    Math.min(64, Math.ceil((opts.minGroupMs ?? 0.5) / (shortest > 0 ? shortest : 1e-3))),
  );
  const groups = candidates.map((d, i) => ({
    label: `tune.${i}`,
    dispatches: Array.from({ length: reps }, () => d).flat(),
  }));
  const samples: number[][] = candidates.map(() => []);
  // Budget: a class starts its rounds only if they fit before the deadline (the sizing round is
  // a fair estimate: every candidate has run once already), so tuning overshoots its budget by at
  // most one class's output check and sizing round.
  const estimate = first.reduce((s, t) => s + t, 0) * reps * (warmup + rounds);
  if (clock() + estimate > deadline) return { ms: candidates.map(() => null), rounds: 0 };
  const alive = new Set(candidates.map((_, i) => i));
  if (heavy) {
    // Heavy kernels are steady from their first timed run (the output check already ran each
    // once, so compiles are behind us): drop those over twice the fastest before any round.
    const best = Math.min(...first);
    first.forEach((t, i) => {
      if (i !== 0 && t > 2 * best) alive.delete(i);
    });
  }
  let done = 0;
  for (let round = 0; round < warmup + rounds; round++) {
    const order = [...alive];
    // Rotate which candidate goes first: position in a submission can matter (caches, clocks).
    const shift = round % order.length;
    const rotated = order.slice(shift).concat(order.slice(0, shift));
    const times = await slice(() => timer.time(rotated.map((i) => groups[i] as (typeof groups)[number])));
    if (round < warmup) continue;
    rotated.forEach((i, j) => (samples[i] as number[]).push((times[j] as number) / reps));
    done++;
    if (done === rejectAfter) {
      const best = Math.min(...[...alive].map((i) => median(samples[i] as number[])));
      for (const i of [...alive]) {
        if (i !== 0 && median(samples[i] as number[]) > rejectFactor * best) alive.delete(i);
      }
    }
  }
  return {
    ms: samples.map((s, i) => (s.length > 0 && alive.has(i) ? median(s) : null)),
    rounds: done,
  };
}

/**
 * The winner among correct, measured candidates: the fastest, but the default (index 0) keeps its
 * place unless beaten by more than `minGain` (3%: below the run-to-run spread of one median, a
 * switch would be noise). Ties go to the earlier candidate, so selection is deterministic.
 */
export function pickWinner(
  ms: readonly (number | null)[],
  correct: readonly boolean[],
  minGain = 1.03,
): number {
  const base = ms[0];
  if (base === null || base === undefined) return 0;
  let best = 0;
  let bestMs = base / minGain;
  ms.forEach((t, i) => {
    if (i === 0 || t === null || !correct[i]) return;
    if (t < bestMs) {
      best = i;
      bestMs = t;
    }
  });
  return best;
}
