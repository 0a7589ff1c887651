import { describe, test } from 'vitest';
import { matmul } from '../../src/kernels/matmul.js';
import { matmulRef } from '../../src/kernels/matmul.ref.js';
import type { WeightFormat } from '../../src/kernels/weight.js';
import { expectClose, randomF32, readF32, run, testGpu, upload, uploadWeight } from '../helpers/gpu.js';

/**
 * Tolerance: the kernel sums in f32, each of 8 lanes over k/8 terms then a 3-level tree, so the
 * rounding error is at most γ_(k/8+5) · Σ|x||w| per output (γ_n = n·2⁻²⁴ / (1 − n·2⁻²⁴)), plus one
 * rounding each for the bias and residual adds. The reference uses the weights exactly as stored
 * (after f16/bf16 rounding), so the format adds no error of its own.
 */
function bound(x: Float32Array, w: Float32Array, m: number, n: number, k: number, extra: number): number {
  const steps = Math.ceil(k / 8) + 5;
  const u = 2 ** -24;
  let worst = 0;
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += Math.abs((x[i * k + t] as number) * (w[j * k + t] as number));
      worst = Math.max(worst, s);
    }
  }
  return ((steps * u) / (1 - steps * u)) * (worst + extra) + 4 * u * extra;
}

describe('matmul', () => {
  const cases: [m: number, n: number, k: number][] = [
    [1, 1, 1],
    [1, 7, 129],
    [7, 129, 7],
    [9, 33, 4097],
    [17, 5, 64],
    // Even k takes the paired-load path; odd k (above) the element path.
    [3, 9, 130],
    [8, 16, 4096],
  ];
  for (const format of ['f32', 'f16', 'bf16'] as WeightFormat[]) {
    for (const [m, n, k] of cases) {
      test(`${format} m=${m} n=${n} k=${k}`, async () => {
        const c = await testGpu();
        const x = randomF32(m * k, m * 1000 + k);
        const { weight, seen } = uploadWeight(c, randomF32(n * k, n + 7 * k), n, k, format);
        const y = upload(c, new Float32Array(m * n));
        run(c, (b) =>
          matmul(b, { x: upload(c, x), weight, y, m, placeholder: upload(c, new Float32Array(1)) }),
        );
        expectClose(await readF32(c, y, m * n), matmulRef(x, seen, m, n, k), {
          atol: bound(x, seen, m, n, k, 0),
        });
      });
    }
  }

  test('bias and accumulate (the fused residual add)', async () => {
    const c = await testGpu();
    const [m, n, k] = [3, 129, 7];
    const x = randomF32(m * k, 1);
    const bias = randomF32(n, 2);
    const y0 = randomF32(m * n, 3, 4);
    const { weight, seen } = uploadWeight(c, randomF32(n * k, 4), n, k, 'f32');
    const y = upload(c, y0);
    const ph = upload(c, new Float32Array(1));
    run(c, (b) =>
      matmul(b, { x: upload(c, x), weight, y, m, bias: upload(c, bias), accumulate: true, placeholder: ph }),
    );
    expectClose(await readF32(c, y, m * n), matmulRef(x, seen, m, n, k, bias, y0), {
      atol: bound(x, seen, m, n, k, 5),
    });
  });

  test('weights split across buffers (odd k with 16-bit rows)', async () => {
    const c = await testGpu();
    const [m, n, k] = [2, 129, 7];
    const x = randomF32(m * k, 5);
    // Parts of 10 rows: an even row count keeps 16-bit rows of odd length word-aligned.
    const { weight, seen } = uploadWeight(c, randomF32(n * k, 6), n, k, 'f16', 10);
    const bias = randomF32(n, 7);
    const y = upload(c, new Float32Array(m * n));
    run(c, (b) =>
      matmul(b, {
        x: upload(c, x),
        weight,
        y,
        m,
        bias: upload(c, bias),
        placeholder: upload(c, new Float32Array(1)),
      }),
    );
    expectClose(await readF32(c, y, m * n), matmulRef(x, seen, m, n, k, bias), {
      atol: bound(x, seen, m, n, k, 1),
    });
  });
});
