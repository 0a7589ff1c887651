import { describe, expect, test } from 'vitest';
import { f16BitsToF32, f32ToF16Bits } from '../../src/io/dtype.js';
import { checkActivationFormat } from '../../src/kernels/activation.js';
import { rmsnorm } from '../../src/kernels/rmsnorm.js';
import { rmsnormRef } from '../../src/kernels/rmsnorm.ref.js';
import {
  GEMM_MIN_M,
  gemmUsable,
  matmul,
  type GemmRowsOfX,
  type GemmRowsPerThread,
  type GateActivation,
  type GemmWorkgroupSize,
  type MatmulArgs,
  type MatmulVariant,
  type MatmulRowsPerDispatch,
  type MatmulRowsPerThread,
} from '../../src/kernels/matmul.js';
import { matmulRef } from '../../src/kernels/matmul.ref.js';
import { gegluRef, swigluRef } from '../../src/kernels/swiglu.ref.js';
import type { WeightFormat } from '../../src/kernels/tiled.js';
import type { GpuContext } from '../../src/gpu/device.js';
import type { DispatchBuilder } from '../../src/gpu/dispatch.js';
import { expectClose, randomF32, readF32, run, testGpu, upload, uploadWeight } from '../helpers/gpu.js';

/**
 * Tolerance: each thread sums its row sequentially in f32 (a word's 4 or 8 products in one or two
 * dot() calls, then into the running sum), so the rounding error is at most γ_(k+4) · Σ|x||w| per
 * output (γ_n = n·2⁻²⁴ / (1 − n·2⁻²⁴)), plus one rounding each for the bias and residual adds
 * (`extra` bounds their magnitude). The reference uses the weights exactly as stored (after
 * f16/bf16 rounding), so the format adds no error of its own.
 * The GEMM sums in another order: per step of 8 k, a tree of the 8 products (3 levels), then into
 * the running sum. A product then passes through at most 1 + 3 + ⌈k/8⌉ ≤ k + 4 roundings (k ≥ 1),
 * so the same γ_(k+4) bound holds (the bound is in the depth of the summation, whatever its order).
 */
function bound(x: Float32Array, w: Float32Array, m: number, n: number, k: number, extra: number): number {
  const steps = k + 4;
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

/** One matmul on seeded random inputs, checked against the float64 reference within `bound`. */
interface MatmulCase {
  m: number;
  n: number;
  k: number;
  format: WeightFormat;
  /** x from `seed`, the weight from seed + 1, the bias from seed + 2, the old Y from seed + 3. */
  seed: number;
  variant?: MatmulVariant;
  bias?: boolean;
  /** Add into a random Y (the fused residual add). */
  accumulate?: boolean;
  /** Split the weight across buffers of this many rows. */
  rowsPerPart?: number;
  /** What the first dispatch's label must match. */
  label?: RegExp;
}

async function checkMatmul(c: GpuContext, t: MatmulCase): Promise<void> {
  const { m, n, k } = t;
  const x = randomF32(m * k, t.seed);
  const { weight, seen } = uploadWeight(c, randomF32(n * k, t.seed + 1), n, k, t.format, t.rowsPerPart);
  const bias = t.bias ? randomF32(n, t.seed + 2) : undefined;
  const y0 = t.accumulate ? randomF32(m * n, t.seed + 3, 4) : undefined;
  const y = upload(c, y0 ?? new Float32Array(m * n));
  run(c, (b) => {
    const d = matmul(b, {
      x: upload(c, x),
      weight,
      y,
      m,
      bias: bias && upload(c, bias),
      accumulate: t.accumulate,
      placeholder: upload(c, new Float32Array(1)),
      variant: t.variant,
    });
    if (t.label) expect(d[0]?.label).toMatch(t.label);
    return d;
  });
  // The bias adds values up to 1, the old Y up to 4 (see `bound`).
  const extra = (bias ? 1 : 0) + (y0 ? 4 : 0);
  expectClose(await readF32(c, y, m * n), matmulRef(x, seen, m, n, k, bias, y0), {
    atol: bound(x, seen, m, n, k, extra),
  });
}

/**
 * The SwiGLU epilogue, y = silu(x·gateᵀ + bg) · (x·upᵀ + bu) with gate and up fused in one weight
 * (with `gate` 'gelu-tanh' the GeGLU one, gelu_tanh(g) · u), checked against the float64
 * reference: the products' error (bounded as above, relative to g and u) is scaled by at most
 * max(|silu'|) ≈ 1.1 (max |gelu_tanh'| ≈ 1.13) and |u| or |act(g)|; the exp and division add a few
 * ulps.
 */
async function checkSwiglu(
  c: GpuContext,
  t: {
    format: WeightFormat;
    m: number;
    units: number;
    k: number;
    parts: number;
    variant: MatmulVariant;
    gate?: GateActivation;
  },
): Promise<void> {
  const { m, units, k } = t;
  const x = randomF32(m * k, 21 + k);
  const gu = randomF32(2 * units * k, 22 + units);
  const bias = randomF32(2 * units, 23);
  const { weight, seen } = uploadWeight(c, gu, units, k, t.format, Math.min(t.parts, units), 'swiglu');
  const y = upload(c, new Float32Array(m * units));
  run(c, (b) =>
    matmul(b, {
      x: upload(c, x),
      weight,
      y,
      m,
      bias: upload(c, bias),
      placeholder: upload(c, new Float32Array(1)),
      variant: t.variant,
      ...(t.gate ? { gate: t.gate } : {}),
    }),
  );
  const g = matmulRef(x, seen.subarray(0, units * k), m, units, k, bias.subarray(0, units));
  const u = matmulRef(x, seen.subarray(units * k), m, units, k, bias.subarray(units));
  const e = bound(x, seen, m, 2 * units, k, 1);
  let tol = 0;
  for (let i = 0; i < g.length; i++) {
    tol = Math.max(tol, 1.13 * e * (Math.abs(u[i] as number) + Math.abs(g[i] as number) + e));
  }
  const want = t.gate === 'gelu-tanh' ? gegluRef(g, u) : swigluRef(g, u);
  expectClose(await readF32(c, y, m * units), want, { atol: tol, rtol: 8 * 2 ** -24 });
}

const FORMATS: WeightFormat[] = ['f32', 'f16', 'bf16'];

// The flat kernel (decode-shaped M), forced where the GEMM would be the default (M ≥ GEMM_MIN_M on
// a device with subgroups).
const FLAT = { path: 'flat' } as const;

describe('matmul (flat kernel)', () => {
  // Awkward sizes: 1, 7, 129, 4097 (k past several staged chunks), m across the 1/4/8-row tiles.
  const cases: [m: number, n: number, k: number][] = [
    [1, 1, 1],
    [1, 7, 129],
    [7, 129, 7],
    [9, 33, 4097],
    [17, 5, 64],
    [3, 9, 130],
    [1, 1100, 256],
    [8, 16, 4096],
  ];
  for (const format of FORMATS) {
    for (const [m, n, k] of cases) {
      test(`${format} m=${m} n=${n} k=${k}`, async () =>
        checkMatmul(await testGpu(), { m, n, k, format, seed: m * 1000 + k, variant: FLAT }));
    }
  }

  // Every variant (rows of X per dispatch × rows per thread) on one ragged shape.
  for (const mt of [1, 4, 8] as MatmulRowsPerDispatch[]) {
    for (const r of [1, 2, 4] as MatmulRowsPerThread[]) {
      test(`variant m${mt}r${r} (bf16, m=5, n=300, k=1031)`, async () =>
        checkMatmul(await testGpu(), {
          ...{ m: 5, n: 300, k: 1031, format: 'bf16', seed: 11 },
          variant: { mt, r },
          label: new RegExp(`^matmul_bf16_m${mt}r${r}x\\d+$`),
        }));
    }
  }

  test('bias and accumulate (the fused residual add)', async () =>
    checkMatmul(await testGpu(), {
      ...{ m: 3, n: 129, k: 7, format: 'f32', seed: 1 },
      ...{ bias: true, accumulate: true, variant: FLAT },
    }));

  test('weights split across buffers (parts of 16 rows, odd k with 16-bit rows)', async () =>
    checkMatmul(await testGpu(), {
      ...{ m: 2, n: 129, k: 7, format: 'f16', seed: 5 },
      ...{ rowsPerPart: 16, bias: true, variant: FLAT },
    }));

  for (const [m, units, k, parts] of [
    [1, 7, 129, 7],
    [4, 129, 64, 48],
    [9, 40, 4097, 40],
  ] as const) {
    test(`swiglu-fused gate/up m=${m} units=${units} k=${k} parts of ${parts}`, async () =>
      checkSwiglu(await testGpu(), { format: 'bf16', m, units, k, parts, variant: FLAT }));
    test(`GeGLU (tanh-GELU gate) m=${m} units=${units} k=${k} parts of ${parts}`, async () =>
      checkSwiglu(await testGpu(), { format: 'f32', m, units, k, parts, variant: FLAT, gate: 'gelu-tanh' }));
  }
});

/** Runs `body` where the device has the GEMM; elsewhere checks that forcing the GEMM is refused. */
async function gemmCase(body: (c: GpuContext) => Promise<void>): Promise<void> {
  const c = await testGpu();
  if (!gemmUsable(c)) {
    const { weight } = uploadWeight(c, randomF32(8, 1), 1, 8, 'f32');
    const ph = upload(c, new Float32Array(1));
    const args: MatmulArgs = { x: ph, weight, y: ph, m: 32, placeholder: ph, variant: { path: 'gemm' } };
    expect(() => run(c, (b: DispatchBuilder) => matmul(b, args))).toThrow(/subgroups/);
    return;
  }
  await body(c);
}

const GEMM = { path: 'gemm' } as const;

describe('matmul GEMM (large M: register-blocked, X broadcast across subgroup lanes)', () => {
  // Awkward sizes around the GEMM's tiles: M past one (17), two (33) or eight (129) 16-row tiles,
  // N from a single row to a part that ends mid-tile, K from one step of 8 (7) to many (4097).
  const cases: [m: number, n: number, k: number][] = [
    [17, 1, 7],
    [33, 7, 129],
    [129, 129, 4097],
    [17, 129, 129],
    [33, 1, 4097],
    [129, 7, 7],
  ];
  for (const format of FORMATS) {
    for (const [m, n, k] of cases) {
      // Past the threshold the GEMM is the default.
      test(`${format} m=${m} n=${n} k=${k}`, () =>
        gemmCase((c) =>
          checkMatmul(c, {
            m,
            n,
            k,
            format,
            seed: m * 1000 + k,
            label: m >= GEMM_MIN_M ? /_gemm_/ : /_m\d+r/,
          }),
        ));
    }
  }

  // Every tile size on one ragged shape: each row count of X with 8 weight rows per thread, and
  // each weight-row count with 16 rows of X (the forced m = 1 case below runs t4x2), and each
  // workgroup size the tuner may pick (its name gains _w<threads>). Not every combination:
  // lavapipe takes seconds to compile each unrolled variant.
  for (const [tm, tn, wg] of [
    [1, 2, 64],
    [1, 4, 16],
    [4, 4, 32],
    [4, 8, 64],
    [8, 8, 64],
    [16, 2, 64],
    [16, 4, 128],
    [16, 8, 16],
  ] as [GemmRowsOfX, GemmRowsPerThread, GemmWorkgroupSize][]) {
    const name = `matmul_bf16_gemm_t${tm}x${tn}${wg === 64 ? '' : `_w${wg}`}`;
    test(`variant ${name} (m=37, n=300, k=1031)`, () =>
      gemmCase((c) =>
        checkMatmul(c, {
          ...{ m: 37, n: 300, k: 1031, format: 'bf16', seed: 11 },
          ...{ variant: { tm, tn, wg }, label: new RegExp(`^${name}$`) },
        }),
      ));
  }

  // One row of X per thread, the decode (m = 1) tile the tuner offers, at the awkward sizes, with
  // the bias and the SwiGLU epilogue (below) on the smallest workgroup.
  for (const [n, k, tn, wg] of [
    [1, 4097, 2, 16],
    [7, 7, 4, 16],
    [129, 129, 2, 32],
    [4097, 7, 4, 128],
  ] as [number, number, GemmRowsPerThread, GemmWorkgroupSize][]) {
    test(`decode tile t1x${tn} with ${wg} threads (f16, m=1, n=${n}, k=${k}, bias)`, () =>
      gemmCase((c) =>
        checkMatmul(c, { m: 1, n, k, format: 'f16', seed: 41 + k, bias: true, variant: { tm: 1, tn, wg } }),
      ));
  }

  test('refuses a workgroup size outside 16, 32, 64, 128', () =>
    gemmCase(async (c) => {
      const { weight } = uploadWeight(c, randomF32(64, 1), 8, 8, 'f32');
      const ph = upload(c, new Float32Array(64));
      const variant = { tm: 1, tn: 2, wg: 24 as GemmWorkgroupSize } as const;
      expect(() =>
        run(c, (b) => matmul(b, { x: ph, weight, y: ph, m: 1, placeholder: ph, variant })),
      ).toThrow(/threads 16, 32, 64, 128/);
    }));

  test('forced below the threshold (m=1) and the flat kernel forced above it (m=33)', () =>
    gemmCase(async (c) => {
      for (const [m, variant, label] of [
        [1, GEMM, /_gemm_t4x2$/],
        [33, FLAT, /_m8r/],
        [33, { mt: 4 }, /_m4r/],
      ] as const) {
        await checkMatmul(c, { m, n: 65, k: 40, format: 'f16', seed: 13 + m, variant, label });
      }
    }));

  for (const format of FORMATS) {
    test(`${format}: bias and accumulate (m=33, n=129, k=7)`, () =>
      gemmCase((c) =>
        checkMatmul(c, {
          ...{ m: 33, n: 129, k: 7, format, seed: 1 },
          ...{ bias: true, accumulate: true, variant: GEMM },
        }),
      ));
  }

  test('weights split across buffers (parts of 16 rows, odd k with 16-bit rows, m=17)', () =>
    gemmCase((c) =>
      checkMatmul(c, {
        ...{ m: 17, n: 129, k: 7, format: 'f16', seed: 5 },
        ...{ rowsPerPart: 16, bias: true, variant: GEMM },
      }),
    ));

  for (const [format, m, units, k, parts, tm, tn, wg] of [
    ['bf16', 17, 7, 129, 7, 16, 2, 64],
    ['f32', 33, 129, 64, 48, 16, 4, 64],
    ['f16', 129, 40, 4097, 40, 16, 8, 64],
    ['bf16', 33, 130, 33, 64, 16, 8, 64],
    ['bf16', 1, 129, 1031, 64, 1, 2, 16],
  ] as const) {
    test(`swiglu-fused gate/up ${format} m=${m} units=${units} k=${k} parts of ${parts} t${tm}x${tn} ${wg} threads`, () =>
      gemmCase((c) => checkSwiglu(c, { format, m, units, k, parts, variant: { tm, tn, wg } })));
  }
  for (const [m, units, k] of [
    [17, 7, 129],
    [33, 130, 33],
  ] as const) {
    test(`GeGLU gate/up bf16 m=${m} units=${units} k=${k} (the _geglu GEMM variant)`, () =>
      gemmCase((c) =>
        checkSwiglu(c, { format: 'bf16', m, units, k, parts: 64, variant: GEMM, gate: 'gelu-tanh' }),
      ));
  }
});

describe('f16 activations (X stored as f16 where the adapter has shader-f16)', () => {
  /** f32 values rounded to f16 and their f16 bits. */
  function toF16(v: Float32Array): { bits: Uint16Array; seen: Float32Array } {
    const bits = new Uint16Array(v.length);
    v.forEach((x, i) => (bits[i] = f32ToF16Bits(x)));
    return { bits, seen: Float32Array.from(bits, (h) => f16BitsToF32(h)) };
  }

  // Both kernels: 'gemm' only where the device has subgroups (m = 1 always takes the flat one).
  for (const [m, n, k, path] of [
    [1, 7, 129, 'flat'],
    [5, 129, 4097, 'flat'],
    [9, 33, 64, 'flat'],
    [5, 129, 4097, 'gemm'],
    [17, 7, 129, 'gemm'],
    [129, 129, 4097, 'gemm'],
  ] as const) {
    test(`matmul reads f16 X (m=${m} n=${n} k=${k}, bf16 weights, ${path})`, async () => {
      const c = await testGpu();
      if (!c.adapter.shaderF16) return expect(() => checkActivationFormat(c, 'f16')).toThrow(/shader-f16/);
      if (path === 'gemm' && !gemmUsable(c)) return;
      const { bits, seen: x } = toF16(randomF32(m * k, 31 + k));
      const { weight, seen } = uploadWeight(c, randomF32(n * k, 32 + n), n, k, 'bf16');
      const y = upload(c, new Float32Array(m * n));
      const xb = upload(c, new Uint8Array(bits.buffer));
      run(c, (b) =>
        matmul(b, {
          x: xb,
          weight,
          y,
          m,
          placeholder: upload(c, new Float32Array(1)),
          xFormat: 'f16',
          variant: { path },
        }),
      );
      // X is exactly the f16 values (converted to f32 when staged), so the f32 bound applies as is.
      expectClose(await readF32(c, y, m * n), matmulRef(x, seen, m, n, k), {
        atol: bound(x, seen, m, n, k, 0),
      });
    });
  }

  test('rmsnorm casts its output to f16 (one rounding: 2⁻¹¹ relative, on top of the f32 norm)', async () => {
    const c = await testGpu();
    if (!c.adapter.shaderF16) return;
    const [rows, hidden] = [3, 129];
    const x = randomF32(rows * hidden, 41, 3);
    const w = randomF32(hidden, 42, 2);
    const y = upload(c, new Uint8Array(Math.ceil((rows * hidden * 2) / 4) * 4));
    run(c, (b) =>
      rmsnorm(b, {
        x: upload(c, x),
        weight: upload(c, w),
        rows: upload(c, Uint32Array.from([0, 1, 2])),
        y,
        m: rows,
        hidden,
        eps: 1e-5,
        out: 'f16',
      }),
    );
    const got = new Uint16Array(await c.read(y, 0, Math.ceil((rows * hidden * 2) / 4) * 4)).subarray(
      0,
      rows * hidden,
    );
    const want = rmsnormRef(x, w, rows, hidden, 1e-5);
    expectClose(
      Array.from(got, (h) => f16BitsToF32(h)),
      want,
      { atol: 2 ** -24, rtol: 2 ** -11 + 64 * 2 ** -24 },
    );
  });
});
