import { describe, expect, test } from 'vitest';
import type { GpuContext } from '../../src/gpu/device.js';
import {
  chooseQ4Tiling,
  matmulQ4,
  q4ChunkVec4s,
  q4SubgroupsUsable,
  type MatmulQ4Args,
} from '../../src/kernels/matmul-q4.js';
import { DispatchBuilder } from '../../src/gpu/dispatch.js';
import { matmulRef } from '../../src/kernels/matmul.ref.js';
import { UnsupportedModelError } from '../../src/errors.js';
import {
  checkQ4Shape,
  dequantize,
  packQ4,
  q4GroupIndex,
  q4HalfScaleIndex,
  q4WordIndex,
  q4ZeroIndex,
  quantizeRtn,
  sliceQ4Rows,
  type Q4Format,
  type Q4GroupSize,
  type Q4Matrix,
} from '../../src/quant/q4.js';
import { uploadQ4Weight } from '../../src/weights/upload-q4.js';
import { f16BitsToF32, f32ToF16Bits } from '../../src/io/dtype.js';
import { randomF32, readF32, run, testGpu, upload } from '../helpers/gpu.js';
import { bound, expectWithin, FORMATS, fmtName, marlinError } from '../helpers/q4-check.js';

const u = 2 ** -24;

describe('q4 quantizer and packer', () => {
  for (const format of FORMATS) {
    test(`RTN error ≤ s/2 and code ranges (${fmtName(format)})`, () => {
      const [n, k] = [9, 256];
      // Mixed magnitudes, an all-positive and an all-zero group, to exercise both zero-point rules.
      const w = randomF32(n * k, 11, 3);
      for (let t = 0; t < format.groupSize; t++) {
        w[2 * k + t] = 0.5 + Math.abs(w[2 * k + t] as number);
        w[3 * k + t] = 0;
      }
      const q = quantizeRtn(w, n, k, format);
      const deq = dequantize(q);
      const groups = k / format.groupSize;
      for (let r = 0; r < n; r++) {
        for (let t = 0; t < k; t++) {
          const g = r * groups + Math.floor(t / format.groupSize);
          const s = q.scales[g] as number;
          const i = r * k + t;
          // Half a step, plus the one f32 rounding of (q − z)·s in dequantize.
          expect(Math.abs((deq[i] as number) - (w[i] as number))).toBeLessThanOrEqual(
            s / 2 + u * Math.abs(deq[i] as number),
          );
          expect(q.codes[i]).toBeLessThanOrEqual(15);
        }
      }
      for (let g = 0; g < n * groups; g++) {
        const s = q.scales[g] as number;
        if (format.scaleType === 'f16') expect(f16BitsToF32(f32ToF16Bits(s))).toBe(s);
        if (format.symmetric) expect(q.zeros[g]).toBe(8);
        else expect(q.zeros[g]).toBeLessThanOrEqual(15);
      }
      // The all-zero group dequantizes to exact zeros.
      expect(deq.slice(3 * k, 3 * k + format.groupSize).every((v) => v === 0)).toBe(true);
    });
  }

  test('f16 scales are f16 values, rounded up', () => {
    const w = randomF32(64, 5, 1);
    const q = quantizeRtn(w, 1, 64, { groupSize: 32, symmetric: true, scaleType: 'f16' });
    for (let g = 0; g < 2; g++) {
      let mx = 0;
      for (let t = 0; t < 32; t++) mx = Math.max(mx, Math.abs(w[g * 32 + t] as number));
      const s = q.scales[g] as number;
      expect(s).toBeGreaterThanOrEqual(mx / 7);
      expect(s).toBeLessThan((mx / 7) * (1 + 2 ** -10));
    }
  });

  test('packQ4 layout: every code, scale and zero where the kernel looks', () => {
    const format: Q4Format = { groupSize: 32, symmetric: false, scaleType: 'f16' };
    const [n, k] = [13, 96];
    const q = quantizeRtn(randomF32(n * k, 3), n, k, format);
    const p = packQ4(q);
    expect(p.paddedRows).toBe(16);
    expect(p.wordsPerRow).toBe(3);
    expect(p.groups).toBe(3);
    expect(p.words.length).toBe(16 * 3 * 4);
    const scaleWords = new Uint32Array(p.scales);
    const zeros = p.zeros as Uint32Array;
    // 2 tiles × ⌈3/2⌉ scale words × 8 rows; 2 tiles × ⌈3/8⌉ zero words × 8 rows.
    expect(scaleWords.length).toBe(2 * 2 * 8);
    expect(zeros.length).toBe(2 * 1 * 8);
    for (let r = 0; r < p.paddedRows; r++) {
      for (let t = 0; t < k; t++) {
        const word = q4WordIndex(r, Math.floor(t / 32), p.wordsPerRow);
        const u32 = p.words[word * 4 + Math.floor((t % 32) / 8)] as number;
        const code = (u32 >>> (4 * (t % 8))) & 15;
        expect(code).toBe(r < n ? q.codes[r * k + t] : 0);
      }
      for (let g = 0; g < p.groups; g++) {
        const sIdx = q4HalfScaleIndex(r, g, p.groups);
        const s = f16BitsToF32(((scaleWords[sIdx.word] as number) >>> (16 * sIdx.half)) & 0xffff);
        expect(s).toBe(r < n ? q.scales[r * p.groups + g] : 0);
        const { word, nibble } = q4ZeroIndex(r, g, p.groups);
        expect(((zeros[word] as number) >>> (4 * nibble)) & 15).toBe(r < n ? q.zeros[r * p.groups + g] : 0);
      }
    }
    // The documented formulas, spelled out: 8 rows of a tile interleave word by word.
    expect(q4WordIndex(0, 1, 3)).toBe(8);
    expect(q4WordIndex(9, 2, 3)).toBe((1 * 3 + 2) * 8 + 1);
    expect(q4GroupIndex(10, 1, 3)).toBe((1 * 3 + 1) * 8 + 2);
    expect(q4HalfScaleIndex(10, 2, 3)).toEqual({ word: (1 * 2 + 1) * 8 + 2, half: 0 });
    expect(q4ZeroIndex(10, 9, 12)).toEqual({ word: (1 * 2 + 1) * 8 + 2, nibble: 1 });
  });

  test('packQ4 round-trips integer codes (f32 scales, symmetric: no zeros buffer)', () => {
    const format: Q4Format = { groupSize: 64, symmetric: true, scaleType: 'f32' };
    const [n, k] = [8, 128];
    const q = quantizeRtn(randomF32(n * k, 4), n, k, format);
    const p = packQ4(q);
    expect(p.zeros).toBeUndefined();
    const scales = new Float32Array(p.scales);
    const codes = new Uint8Array(n * k);
    for (let r = 0; r < n; r++) {
      for (let t = 0; t < k; t++) {
        const u32 = p.words[q4WordIndex(r, t >> 5, p.wordsPerRow) * 4 + ((t & 31) >> 3)] as number;
        codes[r * k + t] = (u32 >>> (4 * (t & 7))) & 15;
      }
      for (let g = 0; g < 2; g++) expect(scales[q4GroupIndex(r, g, 2)]).toBe(q.scales[r * 2 + g]);
    }
    expect(codes).toEqual(q.codes);
  });

  test('clear errors: K not a multiple of the group, bad group size, bad shapes', () => {
    const f: Q4Format = { groupSize: 128, symmetric: true, scaleType: 'f16' };
    expect(() => quantizeRtn(new Float32Array(200), 1, 200, f)).toThrow(UnsupportedModelError);
    expect(() => quantizeRtn(new Float32Array(200), 1, 200, f)).toThrow(/K \(200\).*group size \(128\)/);
    expect(() => checkQ4Shape(4, 96, { ...f, groupSize: 48 as Q4GroupSize })).toThrow(/group size 48/);
    expect(() => quantizeRtn(new Float32Array(100), 1, 128, f)).toThrow(/100 values for a \[1, 128\]/);
    expect(() => quantizeRtn(new Float32Array(0), 0, 128, f)).toThrow(RangeError);
    const w = new Float32Array(128);
    w[5] = NaN;
    expect(() => quantizeRtn(w, 1, 128, f)).toThrow(/non-finite value at row 0, col 5/);
    expect(() => quantizeRtn(new Float32Array(128).fill(1e6), 1, 128, f)).toThrow(/f16/);
  });

  test('sliceQ4Rows keeps codes, scales and zeros of the rows', () => {
    const f: Q4Format = { groupSize: 32, symmetric: false, scaleType: 'f32' };
    const q = quantizeRtn(randomF32(10 * 64, 9), 10, 64, f);
    const s = sliceQ4Rows(q, 3, 4);
    expect(dequantize(s)).toEqual(dequantize(q).slice(3 * 64, 7 * 64));
  });

  test('chunk sizes fit the workgroup budget', () => {
    for (const f of FORMATS) {
      for (const mt of [1, 4, 8]) {
        const xc = q4ChunkVec4s(f, mt, 16384);
        expect(xc % (f.groupSize / 4)).toBe(0);
        expect(2 * mt * (xc * 16 + (xc / (f.groupSize / 4)) * 4)).toBeLessThanOrEqual(16384);
      }
    }
  });
});

interface Case {
  m: number;
  n: number;
  k: number;
  format: Q4Format;
  bias?: boolean;
  accumulate?: boolean;
  rowsPerPart?: number;
  tiling?: Pick<
    MatmulQ4Args,
    'rowsPerGroup' | 'rowsPerThread' | 'workgroupBytes' | 'subgroups' | 'dequant' | 'workgroupSize'
  >;
}

async function check(c: GpuContext, t: Case): Promise<void> {
  const { m, n, k, format } = t;
  const seed = m * 7919 + n * 31 + k;
  const x = randomF32(m * k, seed);
  const q = quantizeRtn(randomF32(n * k, seed + 1), n, k, format);
  const w = dequantize(q);
  const bias = t.bias ? randomF32(n, seed + 2) : undefined;
  const y0 = t.accumulate ? randomF32(m * n, seed + 3, 4) : undefined;
  const weight = uploadQ4Weight(c, 'w', q, t.rowsPerPart);
  const y = upload(c, y0 ?? new Float32Array(m * n));
  run(c, (b) =>
    matmulQ4(b, {
      x: upload(c, x),
      weight,
      y,
      m,
      bias: bias ? upload(c, bias) : undefined,
      accumulate: t.accumulate ?? false,
      placeholder: upload(c, new Float32Array(1)),
      ...t.tiling,
    }),
  );
  const got = await readF32(c, y, m * n);
  const want = matmulRef(x, w, m, n, k, bias, y0);
  const folded = t.tiling?.dequant === 'f16';
  expectWithin(got, want, bound(q, x, m, { ...(bias ? { bias } : {}), ...(y0 ? { y0 } : {}), folded }));
  expect(marlinError(got, want)).toBeLessThan(1e-3);
}

describe('matmul_q4', () => {
  // Every format on M = 1, 2, 7, 8, 16 (which exercise MT = 1, 4, 8 with partial row tiles) and
  // N = 1, 7, 129 (a partial 8-row tile and a partial 64·R-row workgroup).
  for (const format of FORMATS) {
    const k = 4 * format.groupSize;
    const cases: [number, number][] = [
      [1, 129],
      [2, 7],
      [7, 1],
      [8, 129],
      [16, 7],
    ];
    for (const [m, n] of cases) {
      test(`${fmtName(format)} m=${m} n=${n} k=${k}`, async () => {
        await check(await testGpu(), { m, n, k, format });
      });
    }
  }

  const g128s: Q4Format = { groupSize: 128, symmetric: true, scaleType: 'f16' };
  const g32a: Q4Format = { groupSize: 32, symmetric: false, scaleType: 'f32' };
  test('K = 32 (one word, one group)', async () => {
    await check(await testGpu(), { m: 2, n: 9, k: 32, format: { ...g32a, scaleType: 'f16' } });
  });
  // The two X paths: staged in workgroup memory (ping-pong chunks; every adapter) and read
  // directly with subgroup broadcasts (the default where subgroups of 8+ lanes exist).
  const xPaths = async () => {
    const c = await testGpu();
    return q4SubgroupsUsable(c) ? [false, true] : [false];
  };
  test('K = 4096 over several chunks (m = 1, 8), both X paths', async () => {
    const c = await testGpu();
    for (const subgroups of await xPaths()) {
      await check(c, { m: 1, n: 129, k: 4096, format: g128s, tiling: { subgroups } });
      await check(c, { m: 8, n: 7, k: 4096, format: g32a, tiling: { subgroups } });
    }
  });
  test('K past the last full chunk (partial chunk) and a small staging budget', async () => {
    // 1536 = 1.5 chunks of 1024 k (the subgroup path's chunk, and the staged one's at MT = 1).
    // 4 KiB of workgroup memory at MT = 8 forces staged chunks of 32 k: 13 ping-pong chunks.
    const c = await testGpu();
    for (const subgroups of await xPaths()) {
      await check(c, { m: 1, n: 70, k: 1536, format: g128s, tiling: { subgroups } });
      await check(c, { m: 3, n: 70, k: 1536, format: g128s, tiling: { subgroups } });
    }
    await check(c, {
      m: 5,
      n: 33,
      k: 416,
      format: g32a,
      tiling: { workgroupBytes: 4096, rowsPerGroup: 8, subgroups: false },
    });
  });
  test('every tiling (MT × R) against one reference, both X paths', async () => {
    const c = await testGpu();
    for (const subgroups of await xPaths()) {
      for (const rowsPerGroup of [1, 4, 8] as const) {
        for (const rowsPerThread of [1, 2, 4] as const) {
          // The staged path shares all but the X reads: its corners suffice (compiles are slow).
          if (!subgroups && rowsPerThread === 2) continue;
          await check(c, {
            m: 9,
            n: 300,
            k: 256,
            format: g32a,
            tiling: { rowsPerGroup, rowsPerThread, subgroups },
          });
        }
      }
    }
  });
  // Threads per workgroup (a tuner knob): rows are WG·R per workgroup, and the staged path's
  // X loads stride by WG. Awkward N (1, 7, 129, 4097) against 16..128 threads, both X paths.
  test('every workgroup size (16, 32, 128 threads), both X paths', async () => {
    const c = await testGpu();
    for (const subgroups of await xPaths()) {
      for (const [m, n, workgroupSize, rowsPerThread] of [
        [1, 4097, 16, 4],
        [1, 7, 32, 2],
        [5, 129, 128, 1],
        [9, 1, 16, 4],
      ] as const) {
        await check(c, { m, n, k: 256, format: g32a, tiling: { subgroups, workgroupSize, rowsPerThread } });
      }
    }
    const ph = upload(c, new Float32Array(64));
    const weight = uploadQ4Weight(c, 'w', quantizeRtn(randomF32(8 * 32, 1), 8, 32, g32a));
    const args = { x: ph, weight, y: ph, m: 1, placeholder: ph, workgroupSize: 48 as 64 };
    expect(() => run(c, (b) => matmulQ4(b, args))).toThrow(/48 threads \(16, 32, 64, 128\)/);
    // The name says the size; 64 (the default) adds nothing.
    const labels = [32, 64].map((workgroupSize) => {
      const builder = new DispatchBuilder(c);
      try {
        return matmulQ4(builder, { ...args, workgroupSize: workgroupSize as 32 | 64 })[0]?.label;
      } finally {
        builder.destroy();
      }
    });
    expect(labels[0]).toMatch(/_w32$/);
    expect(labels[1]).not.toMatch(/_w\d+$/);
  });
  test('X without subgroups, every format family', async () => {
    const c = await testGpu();
    await check(c, { m: 1, n: 129, k: 256, format: g128s, tiling: { subgroups: false } });
    await check(c, { m: 7, n: 70, k: 128, format: g32a, tiling: { subgroups: false } });
    await check(c, {
      m: 2,
      n: 9,
      k: 192,
      format: { groupSize: 64, symmetric: false, scaleType: 'f16' },
      tiling: { subgroups: false },
    });
  });
  test('bias and accumulate (the fused residual add)', async () => {
    const c = await testGpu();
    await check(c, { m: 3, n: 129, k: 128, format: g32a, bias: true, accumulate: true });
    await check(c, { m: 1, n: 7, k: 256, format: g128s, bias: true });
    await check(c, { m: 8, n: 9, k: 64, format: { ...g32a, symmetric: true }, accumulate: true });
  });
  test('weights split across buffers', async () => {
    await check(await testGpu(), { m: 2, n: 129, k: 128, format: g32a, bias: true, rowsPerPart: 50 });
  });
  test('K not a multiple of the group size is refused before any GPU work', () => {
    expect(() => quantizeRtn(new Float32Array(7 * 4100), 7, 4100, g128s)).toThrow(
      /K \(4100\) to be a multiple of the group size \(128\)/,
    );
  });
  test('default tiling by shape', () => {
    expect(chooseQ4Tiling(1, 8192)).toEqual({ rowsPerGroup: 1, rowsPerThread: 4 });
    expect(chooseQ4Tiling(1, 512)).toEqual({ rowsPerGroup: 1, rowsPerThread: 1 });
    expect(chooseQ4Tiling(3, 8192)).toEqual({ rowsPerGroup: 4, rowsPerThread: 4 });
    expect(chooseQ4Tiling(16, 2048)).toEqual({ rowsPerGroup: 4, rowsPerThread: 4 });
  });
});

describe('matmul_q4, f16 dequant (0x6400 magic)', () => {
  // Skipped (not failed) on adapters without shader-f16, where the variant is refused (tested below).
  const f16Gpu = async (skip: () => void): Promise<GpuContext> => {
    const c = await testGpu();
    if (!c.device.features.has('shader-f16')) skip();
    return c;
  };
  const h = { dequant: 'f16' } as const;
  // Every format (group size, sym/asym, f16/f32 scales) at M = 1, 4, 16 with N = 1, 7, 129 and
  // 4097 (partial 8-row tiles and 64·R-row workgroups; 4097 also spans many workgroups).
  for (const format of FORMATS) {
    const k = 4 * format.groupSize;
    const cases: [number, number][] = [
      [1, 4097],
      [1, 1],
      [4, 129],
      [16, 7],
    ];
    for (const [m, n] of cases) {
      test(`${fmtName(format)} m=${m} n=${n} k=${k}`, async ({ skip }) => {
        await check(await f16Gpu(skip), { m, n, k, format, tiling: h });
      });
    }
  }

  const g128s: Q4Format = { groupSize: 128, symmetric: true, scaleType: 'f16' };
  const g32a: Q4Format = { groupSize: 32, symmetric: false, scaleType: 'f32' };
  const xPaths = (c: GpuContext) => (q4SubgroupsUsable(c) ? [false, true] : [false]);
  test('K = 32, K = 4096 over several chunks, and a partial last chunk; both X paths', async ({ skip }) => {
    const c = await f16Gpu(skip);
    await check(c, { m: 2, n: 9, k: 32, format: { ...g32a, scaleType: 'f16' }, tiling: h });
    for (const subgroups of xPaths(c)) {
      await check(c, { m: 1, n: 129, k: 4096, format: g128s, tiling: { ...h, subgroups } });
      await check(c, { m: 16, n: 7, k: 4096, format: g32a, tiling: { ...h, subgroups } });
      await check(c, { m: 4, n: 70, k: 1536, format: g128s, tiling: { ...h, subgroups } });
    }
    await check(c, {
      m: 5,
      n: 33,
      k: 416,
      format: g32a,
      tiling: { ...h, workgroupBytes: 4096, rowsPerGroup: 8, subgroups: false },
    });
  });
  test('every tiling (MT × R), both X paths', async ({ skip }) => {
    const c = await f16Gpu(skip);
    for (const subgroups of xPaths(c)) {
      for (const rowsPerGroup of [1, 4, 8] as const) {
        for (const rowsPerThread of [1, 2, 4] as const) {
          if (!subgroups && rowsPerThread === 2) continue;
          await check(c, {
            m: 9,
            n: 300,
            k: 256,
            format: g32a,
            tiling: { ...h, rowsPerGroup, rowsPerThread, subgroups },
          });
        }
      }
    }
  });
  test('X without subgroups, every format family', async ({ skip }) => {
    const c = await f16Gpu(skip);
    for (const format of FORMATS) {
      await check(c, { m: 4, n: 129, k: 2 * format.groupSize, format, tiling: { ...h, subgroups: false } });
    }
  });
  test('bias, accumulate and weights split across buffers', async ({ skip }) => {
    const c = await f16Gpu(skip);
    await check(c, { m: 3, n: 129, k: 128, format: g32a, bias: true, accumulate: true, tiling: h });
    await check(c, { m: 1, n: 7, k: 256, format: g128s, bias: true, tiling: h });
    await check(c, { m: 16, n: 129, k: 128, format: g32a, bias: true, rowsPerPart: 50, tiling: h });
  });
  test('extreme codes: every code 0 and 15 against every zero point', async ({ skip }) => {
    // Codes at both ends of the range with zero points 0 and 15 give q − z = ±15 (±240 for the
    // nibbles at bits 4..7), the largest f16 differences the magic subtraction makes.
    const c = await f16Gpu(skip);
    const [n, k] = [16, 256];
    for (const format of [g32a, { ...g32a, scaleType: 'f16' as const }, g128s]) {
      const groups = k / format.groupSize;
      // Runs of 0s and 15s, shifted by one position per row so every nibble position sees both.
      const codes = new Uint8Array(n * k).map((_, i) => (((i + (i >> 8)) >> 1) & 1 ? 15 : 0));
      const zeros = new Uint8Array(n * groups).map((_, i) => (format.symmetric ? 8 : (i % 3) * 7.5));
      const scales = new Float32Array(n * groups).map((_, i) => 0.25 + (i % 5) * 0.125);
      const q: Q4Matrix = { rows: n, cols: k, format, codes, scales, zeros };
      for (const m of [1, 4]) {
        const x = randomF32(m * k, m + 17);
        const weight = uploadQ4Weight(c, 'w', q);
        const y = upload(c, new Float32Array(m * n));
        run(c, (b) =>
          matmulQ4(b, { x: upload(c, x), weight, y, m, placeholder: upload(c, new Float32Array(1)), ...h }),
        );
        const got = await readF32(c, y, m * n);
        const want = matmulRef(x, dequantize(q), m, n, k);
        expectWithin(got, want, bound(q, x, m, { folded: true }));
        expect(marlinError(got, want)).toBeLessThan(1e-3);
      }
    }
  });
  test('the variant is named in the label, and refused without shader-f16', async () => {
    const c = await testGpu();
    const q = quantizeRtn(randomF32(8 * 64, 1), 8, 64, g32a);
    const args: MatmulQ4Args = {
      x: upload(c, new Float32Array(64)),
      weight: uploadQ4Weight(c, 'w', q),
      y: upload(c, new Float32Array(8)),
      m: 1,
      placeholder: upload(c, new Float32Array(1)),
      dequant: 'f16',
    };
    // A device without the feature (only `features` is read before the refusal).
    const bare = { ...c, device: { features: new Set<string>() } } as unknown as GpuContext;
    expect(() => matmulQ4(new DispatchBuilder(bare), args)).toThrow(
      /dequant 'f16' needs the shader-f16 feature/,
    );
    if (!c.device.features.has('shader-f16')) return;
    const b = new DispatchBuilder(c);
    const [d] = matmulQ4(b, args);
    expect(d?.label).toMatch(/^matmul_q4_g32_asym_f32s_m1r1_xc\d+(_sg)?_h$/);
    const [d32] = matmulQ4(b, { ...args, dequant: 'f32' });
    expect(d32?.label).not.toMatch(/_h$/);
    b.destroy();
  });
});
