import { describe, expect, test } from 'vitest';
import type { GpuContext } from '../../src/gpu/device.js';
import { matmulQ4, q4SubgroupsUsable } from '../../src/kernels/matmul-q4.js';
import type { Q4Gemv } from '../../src/kernels/matmul-q4-gemv.js';
import { DispatchBuilder } from '../../src/gpu/dispatch.js';
import { matmulRef } from '../../src/kernels/matmul.ref.js';
import { dequantize, quantizeRtn, type Q4Format } from '../../src/quant/q4.js';
import { uploadQ4Weight } from '../../src/weights/upload-q4.js';
import { q4MatmulCandidates } from '../../src/tuner/space.js';
import { randomF32, readF32, run, testGpu, upload } from '../helpers/gpu.js';
import { bound, expectWithin, FORMATS, fmtName, marlinError } from '../helpers/q4-check.js';

interface Case {
  n: number;
  k: number;
  format: Q4Format;
  gemv: Q4Gemv;
  subgroups: boolean;
  bias?: boolean;
  accumulate?: boolean;
  rowsPerPart?: number;
}

async function check(c: GpuContext, t: Case): Promise<string> {
  const { n, k, format } = t;
  const seed = n * 31 + k + t.gemv.tn * 7 + (t.gemv.ks ?? 1) * 3;
  const x = randomF32(k, seed);
  const q = quantizeRtn(randomF32(n * k, seed + 1), n, k, format);
  const w = dequantize(q);
  const bias = t.bias ? randomF32(n, seed + 2) : undefined;
  const y0 = t.accumulate ? randomF32(n, seed + 3, 4) : undefined;
  const weight = uploadQ4Weight(c, 'w', q, t.rowsPerPart);
  const y = upload(c, y0 ?? new Float32Array(n));
  let label = '';
  run(c, (b) => {
    const d = matmulQ4(b, {
      x: upload(c, x),
      weight,
      y,
      m: 1,
      bias: bias ? upload(c, bias) : undefined,
      accumulate: t.accumulate ?? false,
      placeholder: upload(c, new Float32Array(1)),
      gemv: t.gemv,
      subgroups: t.subgroups,
    });
    label = d[0]?.label ?? '';
    return d;
  });
  const got = await readF32(c, y, n);
  const want = matmulRef(x, w, 1, n, k, bias, y0);
  const extraDepth = 1 + (t.gemv.ks ?? 1) - 1;
  expectWithin(got, want, bound(q, x, 1, { ...(bias ? { bias } : {}), ...(y0 ? { y0 } : {}), extraDepth }));
  expect(marlinError(got, want)).toBeLessThan(1e-3);
  return label;
}

// The CPU shape (X through subgroups, all of K per thread) and a GPU shape (K split in 4 slices
// of a workgroup, X loaded directly), on every format.
const CPU: Q4Gemv = { tn: 4, wg: 16 };
const GPU: Q4Gemv = { tn: 2, wg: 64, ks: 4 };

describe('matmul_q4_gemv', () => {
  for (const format of FORMATS) {
    // K = 3 groups: not a whole f16-scale pair or zero-point octet, and fewer groups than slices
    // for one of the 4 slices (which must add nothing). N = 1, 7, 129: partial 8-row tiles and a
    // partial workgroup.
    const k = 3 * format.groupSize;
    for (const n of [1, 7, 129]) {
      test(`${fmtName(format)} n=${n} k=${k}, all of K per thread (subgroup X where usable)`, async () => {
        const c = await testGpu();
        await check(c, { n, k, format, gemv: CPU, subgroups: q4SubgroupsUsable(c) });
      });
      test(`${fmtName(format)} n=${n} k=${k}, 4 K slices`, async () => {
        await check(await testGpu(), { n, k, format, gemv: GPU, subgroups: false });
      });
    }
  }

  const g32s: Q4Format = { groupSize: 32, symmetric: true, scaleType: 'f16' };
  const g32a: Q4Format = { groupSize: 32, symmetric: false, scaleType: 'f32' };
  const g128a: Q4Format = { groupSize: 128, symmetric: false, scaleType: 'f16' };

  test('N = 4097 (many workgroups), K = 1056 (33 groups: uneven slices, zero octets past 32)', async () => {
    const c = await testGpu();
    if (q4SubgroupsUsable(c)) await check(c, { n: 4097, k: 1056, format: g32a, gemv: CPU, subgroups: true });
    await check(c, { n: 4097, k: 1056, format: g32a, gemv: { tn: 1, wg: 128, ks: 8 }, subgroups: false });
  });

  test('K = 32 (one word, one group) and other rows-per-thread / slice counts', async () => {
    const c = await testGpu();
    const shapes: [Q4Gemv, boolean][] = [
      [{ tn: 1, wg: 8 }, false],
      [{ tn: 2, wg: 32, ks: 2 }, false],
      [{ tn: 1, wg: 256, ks: 16 }, false],
    ];
    if (q4SubgroupsUsable(c)) shapes.push([{ tn: 8, wg: 8 }, true]);
    for (const [gemv, subgroups] of shapes) {
      await check(c, { n: 23, k: 32, format: g32s, gemv, subgroups });
      await check(c, { n: 70, k: 1024, format: g32s, gemv, subgroups });
    }
  });

  test('bias, residual accumulate and a weight split in parts (each its own column range)', async () => {
    const c = await testGpu();
    const sg = q4SubgroupsUsable(c);
    for (const [gemv, subgroups] of [
      [CPU, sg],
      [GPU, false],
    ] as const) {
      await check(c, { n: 37, k: 256, format: g128a, gemv, subgroups, bias: true });
      await check(c, { n: 37, k: 256, format: g32s, gemv, subgroups, accumulate: true });
      await check(c, { n: 100, k: 64, format: g32a, gemv, subgroups, rowsPerPart: 24, bias: true });
    }
  });

  test("every matmul_q4_gemv candidate of the tuner's M = 1 space builds here and matches", async () => {
    const c = await testGpu();
    const q = quantizeRtn(randomF32(8 * 96, 2), 8, 96, g32a);
    const weight = uploadQ4Weight(c, 'w', q);
    const gemvs = q4MatmulCandidates(c, weight, '1').flatMap((k) =>
      k.kernel === 'matmul_q4' && k.variant.gemv ? [k.variant] : [],
    );
    expect(gemvs.filter((v) => (v.gemv?.ks ?? 1) > 1).length).toBeGreaterThan(0);
    if (q4SubgroupsUsable(c)) expect(gemvs.some((v) => v.subgroups)).toBe(true);
    for (const v of gemvs) {
      if (!v.gemv) continue;
      await check(c, { n: 45, k: 96, format: g32a, gemv: v.gemv, subgroups: v.subgroups ?? false });
    }
    // Not offered for several rows of X.
    expect(q4MatmulCandidates(c, weight, '2-4').some((k) => k.kernel === 'matmul_q4' && k.variant.gemv)).toBe(
      false,
    );
  });

  test('the variant name carries every choice (label, cache key, bench row)', async () => {
    const c = await testGpu();
    const label = await check(c, { n: 9, k: 64, format: g32a, gemv: GPU, subgroups: false });
    expect(label).toBe('matmul_q4_gemv_g32_asym_f32s_t2_w64_k4');
    if (q4SubgroupsUsable(c)) {
      const l2 = await check(c, { n: 9, k: 64, format: g32s, gemv: CPU, subgroups: true });
      expect(l2).toBe('matmul_q4_gemv_g32_sym_f16s_t4_w16_sg');
    }
  });

  test('clear errors: more than one row of X, slices with subgroup X, too few threads per slice', async () => {
    const c = await testGpu();
    const q = quantizeRtn(randomF32(8 * 64, 1), 8, 64, g32s);
    const weight = uploadQ4Weight(c, 'w', q);
    const buf = upload(c, new Float32Array(1024));
    const b = new DispatchBuilder(c);
    const args = { x: buf, weight, y: buf, placeholder: buf };
    try {
      expect(() => matmulQ4(b, { ...args, m: 2, gemv: CPU, subgroups: false })).toThrow(
        /one row of X, not 2/,
      );
      expect(() => matmulQ4(b, { ...args, m: 1, gemv: GPU, subgroups: false, dequant: 'f32' })).not.toThrow();
      if (q4SubgroupsUsable(c))
        expect(() => matmulQ4(b, { ...args, m: 1, gemv: GPU, subgroups: true })).toThrow(
          /K slices load X directly/,
        );
      expect(() => matmulQ4(b, { ...args, m: 1, gemv: { tn: 1, wg: 32, ks: 8 }, subgroups: false })).toThrow(
        /fewer than 8 per slice/,
      );
      expect(() =>
        matmulQ4(b, { ...args, m: 1, gemv: { tn: 3 as Q4Gemv['tn'], wg: 32 }, subgroups: false }),
      ).toThrow(/3 rows per thread/);
    } finally {
      b.destroy();
    }
  });
});
