/**
 * The RMSNorm folded into the matmul prologue (src/kernels/rms-fold.ts): the `_rms` variants of the
 * one-row GEMM tile and of matmul_q4 (one row, subgroup X) against the float64 reference of
 * rmsnorm then matmul, at awkward sizes, with plain norm weights and Gemma's (1 + w) (which the
 * loader adds before upload: the kernel sees 1 + w), plus what is refused.
 *
 * Tolerance: the matmul's own bound (test/kernels/matmul.test.ts, test/helpers/q4-check.ts) over
 * the exactly normed row, plus the fold's error in each normed x (src/kernels/rms-fold.ts): the
 * sum of squares runs over at most ⌈K/8⌉ + 128 roundings (lanes strided by a subgroup width of 8
 * to 128, then the subgroup sum), 2 more for / K and + eps; the square root halves that relative
 * error; inverseSqrt adds 2 ulps (4u) and the products x·inv and ·w one rounding each. So each
 * normed x is within δ = γ(⌈K/8⌉ + 130)/2 + 6u relative of the exact one, which moves an output by
 * at most δ·Σ|xn·w|.
 */
import { describe, expect, test } from 'vitest';
import type { GpuContext } from '../../src/gpu/device.js';
import { DispatchBuilder } from '../../src/gpu/dispatch.js';
import { gemmUsable, matmul } from '../../src/kernels/matmul.js';
import { matmulQ4, q4SubgroupsUsable } from '../../src/kernels/matmul-q4.js';
import { matmulRef } from '../../src/kernels/matmul.ref.js';
import { rmsnormRef } from '../../src/kernels/rmsnorm.ref.js';
import { swigluRef } from '../../src/kernels/swiglu.ref.js';
import type { WeightFormat } from '../../src/kernels/tiled.js';
import { dequantize, quantizeRtn, type Q4Format } from '../../src/quant/q4.js';
import { uploadQ4Weight } from '../../src/weights/upload-q4.js';
import { expectClose, randomF32, readF32, run, testGpu, upload, uploadWeight } from '../helpers/gpu.js';
import { bound as q4Bound, expectWithin } from '../helpers/q4-check.js';

const u = 2 ** -24;
const gamma = (n: number) => (n * u) / (1 - n * u);
const EPS = 1e-5;

/** Relative error of each normed x the fold computes (see the header). */
const normDelta = (k: number) => gamma(Math.ceil(k / 8) + 130) / 2 + 6 * u;

/** A raw residual row and its norm weight: plain w, or Gemma's 1 + w as the loader stores it. */
function inputs(k: number, seed: number, gemma: boolean) {
  // A residual row with a large mean square (what the norm is for) and uneven magnitudes.
  const x = randomF32(k, seed, 6);
  const w = randomF32(k, seed + 1, gemma ? 0.5 : 1);
  if (gemma) for (let i = 0; i < k; i++) w[i] = 1 + (w[i] as number);
  const xn = rmsnormRef(x, w, 1, k, EPS);
  return { x, w, xn, xnAbs: Float32Array.from(xn, Math.abs) };
}

/** max over outputs of Σ|xn·w| (the per-output magnitude the errors scale with). */
function magnitude(xn: ArrayLike<number>, w: ArrayLike<number>, n: number, k: number): number {
  let worst = 0;
  for (let j = 0; j < n; j++) {
    let s = 0;
    for (let t = 0; t < k; t++) s += Math.abs((xn[t] as number) * (w[j * k + t] as number));
    worst = Math.max(worst, s);
  }
  return worst;
}

async function floatCase(
  c: GpuContext,
  t: { n: number; k: number; format: WeightFormat; gemma: boolean; swiglu?: boolean; seed: number },
): Promise<void> {
  const { n, k } = t;
  const { x, w, xn } = inputs(k, t.seed, t.gemma);
  const rows = t.swiglu ? 2 * n : n;
  const { weight, seen } = uploadWeight(
    c,
    randomF32(rows * k, t.seed + 2),
    n,
    k,
    t.format,
    n,
    t.swiglu ? 'swiglu' : undefined,
  );
  const y = upload(c, new Float32Array(n));
  run(c, (b) => {
    const d = matmul(b, {
      x: upload(c, x),
      weight,
      y,
      m: 1,
      placeholder: upload(c, new Float32Array(1)),
      variant: { path: 'gemm', tm: 1, tn: t.swiglu ? 2 : 4, wg: 32 },
      norm: { weight: upload(c, w), eps: EPS },
    });
    expect(d[0]?.label).toMatch(/^matmul_\w+_gemm_t1x\d_w32(_swiglu)?_rms$/);
    return d;
  });
  const got = await readF32(c, y, n);
  // The matmul's γ(k + 4) bound over the normed row, plus the fold's δ (see the header).
  const mag = magnitude(xn, seen, rows, k);
  const e = (gamma(k + 4) + normDelta(k)) * mag;
  if (!t.swiglu) {
    expectClose(got, matmulRef(xn, seen, 1, n, k), { atol: e });
    return;
  }
  const g = matmulRef(xn, seen.subarray(0, n * k), 1, n, k);
  const up = matmulRef(xn, seen.subarray(n * k), 1, n, k);
  let tol = 0;
  for (let i = 0; i < n; i++)
    tol = Math.max(tol, 1.13 * e * (Math.abs(up[i] as number) + Math.abs(g[i] as number) + e));
  expectClose(got, swigluRef(g, up), { atol: tol, rtol: 8 * u });
}

describe('RMSNorm folded into the one-row GEMM tile', () => {
  const cases: [n: number, k: number][] = [
    [1, 7],
    [7, 129],
    [129, 4097],
    [4097, 7],
    [1, 4097],
    [7, 1],
  ];
  for (const format of ['f32', 'bf16'] as const) {
    for (const [n, k] of cases) {
      for (const gemma of [false, true]) {
        test(`${format} n=${n} k=${k}${gemma ? " Gemma's (1 + w)" : ''}`, async () => {
          const c = await testGpu();
          if (!gemmUsable(c)) return;
          await floatCase(c, { n, k, format, gemma, seed: n * 31 + k });
        });
      }
    }
  }
  test('with the SwiGLU epilogue (gate/up fused), n=129 k=129', async () => {
    const c = await testGpu();
    if (!gemmUsable(c)) return;
    await floatCase(c, { n: 129, k: 129, format: 'bf16', gemma: false, swiglu: true, seed: 77 });
  });
});

describe('RMSNorm folded into matmul_q4 (one row, subgroup X)', () => {
  const formats: Q4Format[] = [
    { groupSize: 32, symmetric: true, scaleType: 'f16' },
    { groupSize: 128, symmetric: false, scaleType: 'f32' },
  ];
  const cases: [n: number, k: number][] = [
    [1, 128],
    [7, 4096],
    [129, 1024],
    [4097, 128],
  ];
  for (const format of formats) {
    for (const [n, k] of cases) {
      for (const gemma of [false, true]) {
        const name = `g${format.groupSize} ${format.symmetric ? 'sym' : 'asym'} n=${n} k=${k}${gemma ? " Gemma's (1 + w)" : ''}`;
        test(name, async () => {
          const c = await testGpu();
          if (!q4SubgroupsUsable(c)) return;
          const { x, w, xn, xnAbs } = inputs(k, n + k, gemma);
          const q = quantizeRtn(randomF32(n * k, n + 3), n, k, format);
          const weight = uploadQ4Weight(c, 'w', q);
          const y = upload(c, new Float32Array(n));
          run(c, (b) => {
            const d = matmulQ4(b, {
              x: upload(c, x),
              weight,
              y,
              m: 1,
              placeholder: upload(c, new Float32Array(1)),
              rowsPerGroup: 1,
              rowsPerThread: 4,
              subgroups: true,
              workgroupSize: 16,
              norm: { weight: upload(c, w), eps: EPS },
            });
            expect(d[0]?.label).toMatch(/^matmul_q4_.*_sg_w16_rms$/);
            return d;
          });
          const deq = dequantize(q);
          const delta = normDelta(k) * magnitude(xn, deq, n, k);
          const tol = q4Bound(q, xnAbs, 1).map((v) => v + delta);
          expectWithin(await readF32(c, y, n), matmulRef(xn, deq, 1, n, k), tol);
        });
      }
    }
  }
});

describe('where the fold is refused', () => {
  test('the GEMM with more than one row of X per tile, and matmul_q4 staging X or at 4 rows', async () => {
    const c = await testGpu();
    const ph = upload(c, new Float32Array(64));
    const norm = { weight: ph, eps: EPS };
    const build = (f: (b: DispatchBuilder) => unknown) => {
      const b = new DispatchBuilder(c);
      try {
        return f(b);
      } finally {
        b.destroy();
      }
    };
    if (gemmUsable(c)) {
      const { weight } = uploadWeight(c, randomF32(8 * 16, 1), 8, 16, 'f32');
      const args = { x: ph, weight, y: ph, m: 1, placeholder: ph, norm };
      expect(() => build((b) => matmul(b, { ...args, variant: { path: 'gemm', tm: 4 } }))).toThrow(/tm 1/);
      expect(() => build((b) => matmul(b, { ...args, variant: { path: 'flat' } }))).toThrow(/tm 1/);
    }
    const weight = uploadQ4Weight(
      c,
      'w',
      quantizeRtn(randomF32(8 * 32, 1), 8, 32, { groupSize: 32, symmetric: true, scaleType: 'f32' }),
    );
    const args = { x: ph, weight, y: ph, m: 1, placeholder: ph, norm };
    expect(() => build((b) => matmulQ4(b, { ...args, subgroups: false }))).toThrow(/subgroup X path/);
    expect(() => build((b) => matmulQ4(b, { ...args, rowsPerGroup: 4 }))).toThrow(/one row of X/);
  });
});
