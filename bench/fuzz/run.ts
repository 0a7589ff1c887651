/** Runs one fuzz target under fast-check with a seed, tallying how its cases ended. */
import fc from 'fast-check';
import type { FuzzTarget, Outcome } from './harness.js';

export interface FuzzReport {
  target: string;
  seed: number;
  cases: number;
  /** Cases by outcome: "ok" or the Kiln error class (or HTTP status) they ended in. */
  outcomes: Record<Outcome, number>;
  /** The slowest case, in ms (a parser that hangs fails the run at `caseTimeoutMs` instead). */
  slowestMs: number;
  wallMs: number;
}

/**
 * Runs `numRuns` cases of `target` (or as many as fit in `timeLimitMs`) from `seed`. Rejects with
 * fast-check's report (the shrunk counterexample and the seed to replay it) on the first case that
 * crashes or runs past `caseTimeoutMs`.
 */
export async function runFuzz(
  target: FuzzTarget,
  opts: { seed: number; numRuns: number; timeLimitMs?: number; caseTimeoutMs?: number },
): Promise<FuzzReport> {
  const outcomes: Record<Outcome, number> = {};
  let cases = 0;
  let slowestMs = 0;
  const t0 = performance.now();
  await fc.assert(
    fc.asyncProperty(target.input, async (x) => {
      const s = performance.now();
      const o = await target.run(x);
      slowestMs = Math.max(slowestMs, performance.now() - s);
      outcomes[o] = (outcomes[o] ?? 0) + 1;
      cases++;
    }),
    {
      seed: opts.seed,
      numRuns: opts.numRuns,
      timeout: opts.caseTimeoutMs ?? 10_000,
      ...(opts.timeLimitMs !== undefined ? { interruptAfterTimeLimit: opts.timeLimitMs } : {}),
      endOnFailure: true,
      includeErrorInReport: true,
    },
  );
  return { target: target.name, seed: opts.seed, cases, outcomes, slowestMs, wallMs: performance.now() - t0 };
}
