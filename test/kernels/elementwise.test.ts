import { describe, expect, test } from 'vitest';
import { argmax } from '../../src/kernels/argmax.js';
import { argmaxRef } from '../../src/kernels/argmax.ref.js';
import { embed } from '../../src/kernels/embed.js';
import { embedRef } from '../../src/kernels/embed.ref.js';
import { residualAdd } from '../../bench/baselines/residual-add.js';
import { rmsnorm } from '../../src/kernels/rmsnorm.js';
import { rmsnormFused } from '../../bench/baselines/rmsnorm-fused.js';
import { rmsnormRef } from '../../src/kernels/rmsnorm.ref.js';
import { swiglu } from '../../bench/baselines/swiglu.js';
import { gegluRef, swigluRef } from '../../src/kernels/swiglu.ref.js';
import { swigluStacked } from '../../src/kernels/linear.js';
import { qkNorm } from '../../bench/baselines/qk-norm.js';
import { qkNormRef } from '../../src/kernels/qk-norm.ref.js';
import { softcap } from '../../src/kernels/softcap.js';
import { softcapRef } from '../../src/kernels/softcap.ref.js';
import type { WeightFormat } from '../../src/kernels/tiled.js';
import {
  expectClose,
  randomF32,
  readF32,
  readU32,
  run,
  testGpu,
  upload,
  uploadWeight,
} from '../helpers/gpu.js';

const SIZES = [1, 7, 129, 4097];
const U = 2 ** -24;

describe('embed', () => {
  for (const format of ['f32', 'f16', 'bf16'] as WeightFormat[]) {
    for (const cols of SIZES) {
      test(`${format} cols=${cols}`, async () => {
        const c = await testGpu();
        const rows = 13;
        // Two parts (8 + 5 rows), so ids fall in different buffers.
        const { weight, seen } = uploadWeight(c, randomF32(rows * cols, cols), rows, cols, format, 8);
        const ids = [0, 12, 5, 6, 11, 0, 7];
        const out = upload(c, new Float32Array(ids.length * cols));
        run(c, (b) => embed(b, { table: weight, ids: upload(c, Uint32Array.from(ids)), out, m: ids.length }));
        // A gather: exact.
        expectClose(await readF32(c, out, ids.length * cols), embedRef(seen, cols, ids), { atol: 0 });
      });
    }
  }
});

describe('rmsnorm', () => {
  for (const hidden of SIZES) {
    test(`hidden=${hidden}, with a row map`, async () => {
      const c = await testGpu();
      const rows = 3;
      const x = randomF32(rows * hidden, hidden, 3);
      const w = randomF32(hidden, hidden + 1, 2);
      const map = [2, 0];
      const y = upload(c, new Float32Array(map.length * hidden));
      run(c, (b) =>
        rmsnorm(b, {
          x: upload(c, x),
          weight: upload(c, w),
          rows: upload(c, Uint32Array.from(map)),
          y,
          m: map.length,
          hidden,
          eps: 1e-5,
        }),
      );
      const ref = rmsnormRef(x, w, rows, hidden, 1e-5);
      const want = map.flatMap((r) => Array.from(ref.subarray(r * hidden, (r + 1) * hidden)));
      expectClose(await readF32(c, y, map.length * hidden), want, { atol: 0, rtol: normRtol(hidden) });
    });
  }

  for (const hidden of SIZES) {
    test(`rmsnorm_fused (residual add + norm) and its unfused twin, hidden=${hidden}`, async () => {
      const c = await testGpu();
      const m = 3;
      const x0 = randomF32(m * hidden, hidden + 5, 3);
      const delta = randomF32(m * hidden, hidden + 6, 3);
      const w = randomF32(hidden, hidden + 7, 2);
      const sum = x0.map((v, i) => v + (delta[i] as number));
      const want = rmsnormRef(sum, w, m, hidden, 1e-5);
      const fusedX = upload(c, x0);
      const fusedY = upload(c, new Float32Array(m * hidden));
      const deltaBuf = upload(c, delta);
      const wBuf = upload(c, w);
      run(c, (b) =>
        rmsnormFused(b, { x: fusedX, delta: deltaBuf, weight: wBuf, y: fusedY, m, hidden, eps: 1e-5 }),
      );
      const plainX = upload(c, x0);
      const plainY = upload(c, new Float32Array(m * hidden));
      const rows = upload(c, Uint32Array.from([0, 1, 2]));
      run(c, (b) => [
        residualAdd(b, { x: plainX, delta: deltaBuf, count: m * hidden }),
        rmsnorm(b, { x: plainX, weight: wBuf, rows, y: plainY, m, hidden, eps: 1e-5 }),
      ]);
      // The add is one f32 rounding (exact comparison with the f32 sum); the norm as above, plus
      // that rounding's effect on the norm (≤ 2u).
      expect(Array.from(await readF32(c, fusedX, m * hidden))).toEqual(Array.from(sum));
      expect(Array.from(await readF32(c, plainX, m * hidden))).toEqual(Array.from(sum));
      const tol = { atol: 0, rtol: normRtol(hidden) + 2 * U };
      expectClose(await readF32(c, fusedY, m * hidden), want, tol);
      expectClose(await readF32(c, plainY, m * hidden), want, tol);
    });
  }
});

/**
 * RMSNorm's relative error: each of 64 threads sums hidden/64 squares, then the 64 partials are
 * added in sequence, so the sum of squares is within (hidden/64 + 64)·u relative (u = 2⁻²⁴); the
 * square root halves that, and ≤ 4 more roundings (mean, eps, two products) add 8·u.
 */
function normRtol(hidden: number): number {
  return ((Math.ceil(hidden / 64) + 64) / 2 + 8) * U;
}

describe('swiglu', () => {
  for (const n of SIZES) {
    test(`count=${n}`, async () => {
      const c = await testGpu();
      const g = randomF32(n, n, 8);
      const u = randomF32(n, n + 1, 2);
      const gate = upload(c, g);
      run(c, (b) => swiglu(b, { gate, up: upload(c, u), count: n }));
      // exp in f32 is accurate to a few ulp; the rest is 3 roundings.
      expectClose(await readF32(c, gate, n), swigluRef(g, u), { atol: 1e-6, rtol: 1e-5 });
    });
  }
});

describe('argmax', () => {
  for (const n of SIZES) {
    test(`n=${n}: lowest index among ties, NaN never wins`, async () => {
      const c = await testGpu();
      const rows = 3;
      const logits = randomF32(rows * n, n);
      // Row 1: a tie at the maximum, the later copy must lose. Row 2: NaNs sprinkled in.
      if (n > 2) {
        logits[n + n - 1] = 5;
        logits[n + 1] = 5;
        for (let i = 0; i < n; i += 3) logits[2 * n + i] = NaN;
      }
      const ids = upload(c, new Uint32Array(rows));
      run(c, (b) => argmax(b, { logits: upload(c, logits), ids, rows, n }));
      const got = Array.from(await readU32(c, ids, rows));
      const want = [0, 1, 2].map((r) => argmaxRef(logits.subarray(r * n, (r + 1) * n)));
      expect(got).toEqual(want);
    });
  }
});

describe("argmax_lanes (one invocation per row) gives argmax's ids", () => {
  for (const n of SIZES) {
    test(`n=${n}: 1, 7 and 33 rows with ties, NaN, -inf, -FLT_MAX rows`, async () => {
      const c = await testGpu();
      for (const rows of [1, 7, 33]) {
        const logits = randomF32(rows * n, n + rows);
        const row = (r: number) => logits.subarray(r * n, (r + 1) * n);
        if (rows > 1) {
          row(1).fill(5, Math.floor(n / 2)); // ties at the maximum from the middle on
          row(1)[0] = NaN;
        }
        if (rows > 2) row(2).fill(NaN);
        if (rows > 3) row(3).fill(-Infinity);
        if (rows > 4) row(4).fill(-3.4028234663852886e38);
        if (rows > 5) for (let i = 0; i < n; i += 2) row(5)[i] = NaN;
        const buf = upload(c, logits);
        const got: number[][] = [];
        for (const lanes of [false, true]) {
          const ids = upload(c, new Uint32Array(rows).fill(7));
          run(c, (b) => argmax(b, { logits: buf, ids, rows, n, lanes }));
          got.push(Array.from(await readU32(c, ids, rows)));
        }
        expect(got[1]).toEqual(got[0]);
        // The reference where it defines the answer (a row with a finite value).
        for (let r = 0; r < rows; r++)
          if (row(r).some((v) => Number.isFinite(v))) expect(got[1]?.[r]).toBe(argmaxRef(row(r)));
      }
    });
  }
});

describe('embed with a scale (Gemma: √hidden rounded to the table dtype)', () => {
  for (const cols of SIZES) {
    test(`bf16 cols=${cols}, scale √48 in bf16`, async () => {
      const c = await testGpu();
      const rows = 13;
      const { weight, seen } = uploadWeight(c, randomF32(rows * cols, cols + 3), rows, cols, 'bf16', 8);
      const ids = [0, 12, 5, 6, 11, 0, 7];
      const out = upload(c, new Float32Array(ids.length * cols));
      const scale = 6.9375;
      run(c, (b) =>
        embed(b, { table: weight, ids: upload(c, Uint32Array.from(ids)), out, m: ids.length, scale }),
      );
      // One f32 product of exact values: half an ulp.
      expectClose(await readF32(c, out, ids.length * cols), embedRef(seen, cols, ids, scale), {
        atol: 0,
        rtol: U,
      });
    });
  }
});

describe("rmsnorm_lanes (one invocation per row) gives rmsnorm's bits", () => {
  for (const hidden of SIZES) {
    for (const m of [1, 7, 33]) {
      test(`hidden=${hidden} rows=${m}, with a row map, plain and add`, async () => {
        const c = await testGpu();
        const src = m + 2;
        const x = randomF32(src * hidden, hidden + m, 3);
        const w = randomF32(hidden, hidden + 1, 2);
        const map = Array.from({ length: m }, (_, i) => (i * 5 + 2) % src);
        const y0 = randomF32(m * hidden, hidden + 2, 4);
        const args = {
          x: upload(c, x),
          weight: upload(c, w),
          rows: upload(c, Uint32Array.from(map)),
          m,
          hidden,
          eps: 1e-5,
        };
        const out: Float32Array[] = [];
        for (const add of [false, true]) {
          for (const lanes of [false, true]) {
            const y = upload(c, y0);
            run(c, (b) => rmsnorm(b, { ...args, y, add, lanes }));
            out.push(await readF32(c, y, m * hidden));
          }
        }
        // Same sums in the same order: equal bits, plain and added.
        expect(out[1]).toEqual(out[0]);
        expect(out[3]).toEqual(out[2]);
        const ref = rmsnormRef(x, w, src, hidden, 1e-5);
        const want = map.flatMap((r) => Array.from(ref.subarray(r * hidden, (r + 1) * hidden)));
        expectClose(out[1] as Float32Array, want, { atol: 0, rtol: normRtol(hidden) });
      });
    }
  }
});

describe('rmsnorm_add (Gemma: a branch output normed and added to the residual stream)', () => {
  for (const hidden of SIZES) {
    test(`hidden=${hidden}`, async () => {
      const c = await testGpu();
      const m = 3;
      const branch = randomF32(m * hidden, hidden + 11, 3);
      const w = randomF32(hidden, hidden + 12, 2);
      const x0 = randomF32(m * hidden, hidden + 13, 4);
      const x = upload(c, x0);
      run(c, (b) =>
        rmsnorm(b, {
          x: upload(c, branch),
          weight: upload(c, w),
          rows: upload(c, Uint32Array.from([0, 1, 2])),
          y: x,
          m,
          hidden,
          eps: 1e-6,
          add: true,
        }),
      );
      const normed = rmsnormRef(branch, w, m, hidden, 1e-6);
      const want = Array.from(x0, (v, i) => v + (normed[i] as number));
      // The norm's error (relative to |normed| ≤ 2·√hidden·… bounded per element by normRtol) plus
      // the add's rounding (u of the sum).
      const got = await readF32(c, x, m * hidden);
      for (let i = 0; i < want.length; i++) {
        const err = Math.abs((got[i] as number) - (want[i] as number));
        expect(err).toBeLessThanOrEqual(
          Math.abs(normed[i] as number) * normRtol(hidden) + Math.abs(want[i] as number) * U + 1e-30,
        );
      }
    });
  }
});

describe('qk_norm (per-head RMSNorm of q and k in the fused qkv rows; v untouched)', () => {
  for (const [m, heads, kvHeads, headDim] of [
    [1, 1, 1, 2],
    [7, 4, 2, 8],
    [3, 3, 1, 129 + 1],
    [2, 2, 1, 256],
  ] as const) {
    test(`m=${m} heads=${heads}/${kvHeads} headDim=${headDim}`, async () => {
      const c = await testGpu();
      const width = (heads + 2 * kvHeads) * headDim;
      const qkv = randomF32(m * width, headDim + m, 3);
      const qw = randomF32(headDim, headDim + 1, 2);
      const kw = randomF32(headDim, headDim + 2, 2);
      const buf = upload(c, qkv);
      run(c, (b) =>
        qkNorm(b, {
          qkv: buf,
          qWeight: upload(c, qw),
          kWeight: upload(c, kw),
          m,
          heads,
          kvHeads,
          headDim,
          eps: 1e-6,
        }),
      );
      const got = await readF32(c, buf, m * width);
      const want = qkNormRef(qkv, m, heads, kvHeads, headDim, qw, kw, 1e-6);
      expectClose(got, want, { atol: 0, rtol: normRtol(headDim) });
      // v is not touched: bit-equal.
      for (let r = 0; r < m; r++)
        for (let e = (heads + kvHeads) * headDim; e < width; e++)
          expect(got[r * width + e]).toBe(qkv[r * width + e]);
    });
  }
});

describe('softcap (Gemma 2 final logits: cap · tanh(x / cap))', () => {
  for (const n of SIZES) {
    test(`count=${n}, values up to ±1000 (saturated) and tiny ones`, async () => {
      const c = await testGpu();
      const x = randomF32(n, n + 9, 1000);
      if (n > 2) x[1] = 1e-7;
      const buf = upload(c, x);
      run(c, (b) => softcap(b, { x: buf, count: n, cap: 30 }));
      // tanh from exp (a few ulp) and 1 − 2/(e+1): absolute error ≤ ~4u of the cap near 0, where
      // the cancellation happens; relative a few ulps elsewhere.
      expectClose(await readF32(c, buf, n), softcapRef(x, 30), { atol: 8 * U * 30, rtol: 8 * U });
    });
  }
});

describe('geglu_stacked (the int4 path: gelu_tanh(gate) · up over [gate; up] rows)', () => {
  for (const n of SIZES) {
    test(`width=${n}`, async () => {
      const c = await testGpu();
      const m = 2;
      const gu = randomF32(m * 2 * n, n + 21, 6);
      const out = upload(c, new Float32Array(m * n));
      run(c, (b) => swigluStacked(b, { gateUp: upload(c, gu), out, m, width: n, gate: 'gelu-tanh' }));
      const g: number[] = [];
      const u: number[] = [];
      for (let r = 0; r < m; r++) {
        g.push(...gu.subarray(r * 2 * n, r * 2 * n + n));
        u.push(...gu.subarray(r * 2 * n + n, (r + 1) * 2 * n));
      }
      // As swiglu: exp to a few ulp, a handful of roundings.
      expectClose(await readF32(c, out, m * n), gegluRef(g, u), { atol: 1e-6, rtol: 1e-5 });
    });
  }
});
