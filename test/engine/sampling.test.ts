import { describe, expect, test } from 'vitest';
import type { SamplingParams } from '../../src/api/types.js';
import { applyRepetitionPenalty, sampleToken } from '../../src/engine/sampling/cpu.js';
import { DEFAULT_SAMPLING, isPlainGreedy } from '../../src/engine/sampling/params.js';
import { Rng } from '../../src/engine/sampling/rng.js';
import { sampleRefDetailed } from '../../src/kernels/sample.ref.js';
import { randomF32 } from '../helpers/random.js';

const params = (p: Partial<SamplingParams>): SamplingParams => ({ ...DEFAULT_SAMPLING, ...p });

/** Logits whose softmax at temperature 1 is `probs` (up to normalization). */
const fromProbs = (probs: number[]) => Float32Array.from(probs, (q) => Math.log(q));

/** Counts of `draws` samples (fresh copy of the logits each time: sampleToken edits in place). */
function histogram(logits: Float32Array, p: SamplingParams, draws: number, seed = 1234): Map<number, number> {
  const rng = new Rng(seed);
  const counts = new Map<number, number>();
  for (let i = 0; i < draws; i++) {
    const id = sampleToken(Float32Array.from(logits), p, rng, []);
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return counts;
}

/**
 * Each observed frequency is within 5 binomial standard deviations of `want` (a fixed seed makes
 * the outcome deterministic; 5σ keeps the bound honest rather than tuned to this seed).
 */
function expectFrequencies(counts: Map<number, number>, want: Map<number, number>, draws: number): void {
  expect([...counts.keys()].sort((a, b) => a - b)).toEqual([...want.keys()].sort((a, b) => a - b));
  for (const [id, q] of want) {
    const sigma = Math.sqrt(draws * q * (1 - q));
    expect(Math.abs((counts.get(id) ?? 0) - draws * q), `id ${id}`).toBeLessThanOrEqual(5 * sigma);
  }
}

describe('Rng', () => {
  test('a seed gives the same sequence; different seeds different ones', () => {
    const seq = (seed: number) => {
      const r = new Rng(seed);
      return Array.from({ length: 8 }, () => r.next());
    };
    expect(seq(42)).toEqual(seq(42));
    expect(seq(42)).not.toEqual(seq(43));
    expect(seq(0)).not.toEqual(seq(1));
    // Seeds are taken as u32.
    expect(seq(2 ** 32 + 5)).toEqual(seq(5));
    expect(seq(-1)).toEqual(seq(2 ** 32 - 1));
    // Seed 0 is not a degenerate all-zero state.
    expect(new Set(seq(0)).size).toBe(8);
  });

  test('the sequence of a seed is pinned (a seed must reproduce a sample across releases)', () => {
    const r = new Rng(42);
    const first = Array.from({ length: 4 }, () => Math.round(r.next() * 2 ** 32));
    expect(first).toMatchInlineSnapshot(`
      [
        2837322924,
        544945897,
        479756282,
        3500138142,
      ]
    `);
  });

  test('outputs are uniform in [0, 1)', () => {
    const r = new Rng(7);
    const n = 100_000;
    const bins = new Array<number>(10).fill(0);
    let sum = 0;
    let sumSq = 0;
    let outside = 0;
    for (let i = 0; i < n; i++) {
      const u = r.next();
      if (!(u >= 0 && u < 1)) outside++;
      bins[Math.floor(u * 10)]!++;
      sum += u;
      sumSq += u * u;
    }
    expect(outside).toBe(0);
    // Mean 1/2 and variance 1/12, each bin 10%: all within ~5σ of their sampling error.
    expect(Math.abs(sum / n - 0.5)).toBeLessThan(5 * Math.sqrt(1 / 12 / n));
    expect(Math.abs(sumSq / n - (sum / n) ** 2 - 1 / 12)).toBeLessThan(0.002);
    for (const b of bins) expect(Math.abs(b - n / 10)).toBeLessThan(5 * Math.sqrt(n * 0.1 * 0.9));
    // Consecutive outputs are not correlated.
    const r2 = new Rng(8);
    let prev = r2.next();
    let cov = 0;
    for (let i = 0; i < n; i++) {
      const u = r2.next();
      cov += (u - 0.5) * (prev - 0.5);
      prev = u;
    }
    expect(Math.abs(cov / n)).toBeLessThan((5 * (1 / 12)) / Math.sqrt(n));
  });
});

describe('applyRepetitionPenalty', () => {
  test('divides positive logits, multiplies negative ones, once per id in the context', () => {
    const logits = Float32Array.from([2, -2, 0, 3, -1]);
    applyRepetitionPenalty(logits, [0, 1, 2, 0, 0, 1, 99], 2);
    // Both directions make a seen token less likely; ids outside the vocabulary are ignored.
    expect([...logits]).toEqual([1, -4, 0, 3, -1]);
  });

  test('a penalty below 1 favours seen tokens; 1 is a no-op', () => {
    const logits = Float32Array.from([2, -2, 5]);
    applyRepetitionPenalty(logits, [0, 1], 0.5);
    expect([...logits]).toEqual([4, -1, 5]);
    applyRepetitionPenalty(logits, [0, 1, 2], 1);
    expect([...logits]).toEqual([4, -1, 5]);
  });
});

describe('sampleToken', () => {
  test('isPlainGreedy only for temperature 0 without penalty', () => {
    expect(isPlainGreedy(DEFAULT_SAMPLING)).toBe(true);
    expect(isPlainGreedy(params({ topK: 5, topP: 0.5 }))).toBe(true);
    expect(isPlainGreedy(params({ repetitionPenalty: 1.1 }))).toBe(false);
    expect(isPlainGreedy(params({ temperature: 0.7 }))).toBe(false);
  });

  test('temperature 0 is the argmax (lowest index among ties) and draws nothing', () => {
    const rng = new Rng(1);
    const untouched = new Rng(1);
    expect(sampleToken(Float32Array.from([0.1, 3, -2, 3, 1]), params({}), rng, [])).toBe(1);
    expect(sampleToken(Float32Array.from([-5, -1, -3]), params({ topK: 2, topP: 0.1 }), rng, [])).toBe(1);
    expect(rng.next()).toBe(untouched.next());
  });

  test('temperature 0 applies the repetition penalty first', () => {
    const logits = Float32Array.from([1, 4, 3.5]);
    expect(sampleToken(logits, params({ repetitionPenalty: 2 }), new Rng(1), [1, 1])).toBe(2);
    expect([...logits]).toEqual([1, 2, 3.5]);
  });

  test('temperature 1 samples the softmax', () => {
    const probs = [0.5, 0.25, 0.15, 0.1];
    const draws = 20_000;
    const counts = histogram(fromProbs(probs), params({ temperature: 1 }), draws);
    expectFrequencies(counts, new Map(probs.map((q, i) => [i, q])), draws);
  });

  test('temperature rescales the logits before the softmax', () => {
    // Logits 0 and ln 4: p(1) = 4/5 at T = 1, 2/3 at T = 2 (ratio 4^(1/2)), 8/9 at T = 0.5.
    const logits = Float32Array.from([0, Math.log(4)]);
    const draws = 20_000;
    for (const [t, q1] of [
      [2, 2 / 3],
      [0.5, 16 / 17],
    ] as const) {
      const counts = histogram(logits, params({ temperature: t }), draws);
      expectFrequencies(
        counts,
        new Map([
          [0, 1 - q1],
          [1, q1],
        ]),
        draws,
      );
    }
  });

  test('top-k keeps the k largest logits, renormalized', () => {
    const probs = [0.05, 0.3, 0.1, 0.2, 0.05, 0.25, 0.05];
    const draws = 20_000;
    const counts = histogram(fromProbs(probs), params({ temperature: 1, topK: 3 }), draws);
    // Ids 1, 5, 3 with 0.3 : 0.25 : 0.2.
    expectFrequencies(
      counts,
      new Map([
        [1, 0.4],
        [5, 0.25 / 0.75],
        [3, 0.2 / 0.75],
      ]),
      draws,
    );
    expect(histogram(fromProbs(probs), params({ temperature: 1, topK: 1 }), 200)).toEqual(
      new Map([[1, 200]]),
    );
    // topK larger than the vocabulary is no cut.
    expect(histogram(fromProbs(probs), params({ temperature: 1, topK: 100 }), 5000).size).toBe(7);
  });

  test('top-p keeps the smallest prefix whose probability reaches p', () => {
    const probs = [0.1, 0.5, 0.05, 0.3, 0.05];
    const draws = 20_000;
    const expectTopP = (topP: number, want: [number, number][]) =>
      expectFrequencies(
        histogram(fromProbs(probs), params({ temperature: 1, topP }), draws),
        new Map(want),
        draws,
      );
    // Sorted: 0.5 (id 1), 0.3 (id 3), 0.1 (id 0), ... p = 0.75: ids 1 and 3 (0.8 >= 0.75).
    expectTopP(0.75, [
      [1, 0.5 / 0.8],
      [3, 0.3 / 0.8],
    ]);
    // p = 0.85: the next one (id 0) joins.
    expectTopP(0.85, [
      [1, 0.5 / 0.9],
      [3, 0.3 / 0.9],
      [0, 0.1 / 0.9],
    ]);
    // A tiny p is greedy.
    expect(histogram(fromProbs(probs), params({ temperature: 1, topP: 1e-6 }), 200)).toEqual(
      new Map([[1, 200]]),
    );
  });

  test('top-k applies before top-p', () => {
    const probs = [0.4, 0.3, 0.2, 0.1];
    // top-k 2 leaves 0.4 : 0.3 = 0.571 : 0.429; p = 0.5 then keeps only id 0.
    expect(histogram(fromProbs(probs), params({ temperature: 1, topK: 2, topP: 0.5 }), 500)).toEqual(
      new Map([[0, 500]]),
    );
  });

  test('a fixed seed reproduces a sequence of samples', () => {
    const logits = fromProbs([0.2, 0.2, 0.2, 0.2, 0.2]);
    const run = (seed: number) => {
      const rng = new Rng(seed);
      return Array.from({ length: 32 }, () =>
        sampleToken(Float32Array.from(logits), params({ temperature: 1 }), rng, []),
      );
    };
    expect(run(9)).toEqual(run(9));
    expect(run(9)).not.toEqual(run(10));
  });

  test('NaN logits are never chosen', () => {
    const logits = Float32Array.from([NaN, -3, NaN, -4, NaN]);
    expect(sampleToken(Float32Array.from(logits), params({}), new Rng(1), [])).toBe(1);
    const counts = histogram(logits, params({ temperature: 1 }), 5000);
    expect([...counts.keys()].sort()).toEqual([1, 3]);
    for (const p of [params({ temperature: 2, topK: 3 }), params({ temperature: 1, topP: 0.99 })]) {
      const ids = [...histogram(logits, p, 2000).keys()];
      expect(ids.every((id) => id === 1 || id === 3)).toBe(true);
    }
    // With the repetition penalty too.
    expect(
      sampleToken(Float32Array.from(logits), params({ repetitionPenalty: 1.2 }), new Rng(1), [0, 1]),
    ).toBe(1);
    // Every logit NaN: id 0 (as the GPU argmax does), never undefined.
    const allNaN = new Float32Array(4).fill(NaN);
    expect(sampleToken(Float32Array.from(allNaN), params({}), new Rng(1), [])).toBe(0);
    expect(sampleToken(Float32Array.from(allNaN), params({ temperature: 1 }), new Rng(1), [])).toBe(0);
  });

  test('-Infinity logits are never chosen while a finite one exists', () => {
    const logits = Float32Array.from([-Infinity, 0, -Infinity, 1]);
    expect([...histogram(logits, params({ temperature: 1 }), 2000).keys()].sort()).toEqual([1, 3]);
  });

  describe('a large vocabulary', () => {
    /**
     * A confident 150k-entry row: the bulk is a bell curve around 0 (sd 3, within ±9), and 20
     * candidates lie 31..40 above it, so the bulk is more than 30 temperatures below the top.
     */
    function confidentRow(): Float32Array {
      const n = 150_000;
      const [a, b, c] = [randomF32(n, 11), randomF32(n, 12), randomF32(n, 13)];
      const row = new Float32Array(n);
      for (let i = 0; i < n; i++) row[i] = 3 * ((a[i] as number) + (b[i] as number) + (c[i] as number));
      for (let j = 0; j < 20; j++) row[(j * 7919 + 13) % n] = 31 + j / 2;
      return row;
    }

    /** Median milliseconds of `fn` over 7 runs (after one warm-up). */
    function medianMs(fn: () => void): number {
      fn();
      const times = Array.from({ length: 7 }, () => {
        const t = performance.now();
        fn();
        return performance.now() - t;
      });
      return times.sort((x, y) => x - y)[3] as number;
    }

    test('sampling a 150k-entry row does not sort the whole vocabulary', () => {
      const row = confidentRow();
      const p = params({ temperature: 1, topP: 0.9 });
      const rng = new Rng(3);
      const ms = medianMs(() => sampleToken(Float32Array.from(row), p, rng, []));
      // What sorting every id by logit costs on this machine (the old implementation's main work).
      const sortMs = medianMs(() =>
        Array.from(row.keys()).sort((x, y) => (row[y] as number) - (row[x] as number) || x - y),
      );
      console.log(`sampleToken on 150k logits: ${ms.toFixed(2)} ms (a full sort: ${sortMs.toFixed(2)} ms)`);
      expect(ms).toBeLessThan(200);
      expect(ms).toBeLessThan(sortMs / 4);
      // It samples among the top candidates only.
      const ids = new Set(Array.from({ length: 50 }, () => sampleToken(Float32Array.from(row), p, rng, [])));
      for (const id of ids) expect(row[id]).toBeGreaterThanOrEqual(31);
    });

    test('the candidate cutoff scales with the temperature and leaves the softmax unchanged', () => {
      // Logits 0 down to -80 at temperature 10: the last two are 40 and 80 logits below the top,
      // past a cutoff that ignored the temperature, and are still drawn at their softmax rate.
      const logits = Float32Array.from([0, -2, -5, -10, -20, -40, -80]);
      const t = 10;
      const w = [...logits].map((l) => Math.exp(l / t));
      const total = w.reduce((x, y) => x + y, 0);
      const draws = 50_000;
      const counts = histogram(logits, params({ temperature: t }), draws);
      expectFrequencies(counts, new Map(w.map((x, i) => [i, x / total])), draws);
      expect(counts.get(5) ?? 0).toBeGreaterThan(0);
    });
  });
});

describe("sampleToken follows the sample kernel's float64 twin", () => {
  /**
   * The CPU path is the twin's rules made fast: for the same row, settings and uniform it must
   * pick the twin's token (and so the GPU kernel's). The twin reports how far a draw is from
   * changing; draws within 1e-9 of a boundary (where float64 sums in another order may
   * legitimately differ) are skipped, and the test requires that nearly all rows count.
   */
  test('the same token for the same row, settings and uniform', () => {
    const settings: Partial<SamplingParams>[] = [
      { temperature: 1 },
      { temperature: 0.7, topK: 5 },
      { temperature: 1.3, topP: 0.9 },
      { temperature: 2, topK: 40, topP: 0.5 },
      { temperature: 0.05, topP: 0.99 },
      { temperature: 1, topK: 1 },
    ];
    let checked = 0;
    let total = 0;
    for (const [si, over] of settings.entries()) {
      const p = params(over);
      for (let row = 0; row < 40; row++) {
        // Bumpy rows over 1000 ids, some with exact ties (rounded values).
        const logits = randomF32(1000, 100 * si + row + 1, 6);
        if (row % 3 === 0)
          for (let i = 0; i < logits.length; i++) logits[i] = Math.round(logits[i] as number);
        const seed = 7 * row + si;
        const u = new Rng(seed).next();
        const want = sampleRefDetailed(logits, { temperature: p.temperature, topK: p.topK, topP: p.topP }, u);
        const got = sampleToken(Float32Array.from(logits), p, new Rng(seed), []);
        total++;
        if (want.margin < 1e-9) continue;
        checked++;
        expect(got, `settings ${JSON.stringify(over)}, row ${row}`).toBe(want.id);
      }
    }
    expect(checked).toBeGreaterThan(0.95 * total);
  });
});
