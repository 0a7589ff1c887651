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
import { swigluRef } from '../../src/kernels/swiglu.ref.js';
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
