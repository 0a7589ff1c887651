import { describe, expect, test } from 'vitest';
import type { GpuContext } from '../../src/gpu/device.js';
import { UnsupportedModelError } from '../../src/errors.js';
import type { Q4GpuWeight } from '../../src/kernels/matmul-q4.js';
import type { WeightFormat } from '../../src/kernels/tiled.js';
import {
  packQ4,
  quantizeRtn,
  sliceQ4Rows,
  type PackedQ4,
  type Q4Format,
  type Q4GroupSize,
} from '../../src/quant/q4.js';
import { q4PartBytes, quantizeOnGpu } from '../../src/kernels/quantize-q4.js';
import { destroyQ4Weight } from '../../src/weights/upload-q4.js';
import { randomF32, readU32, testGpu, uploadWeight } from '../helpers/gpu.js';

const FORMATS: Q4Format[] = [];
for (const groupSize of [32, 64, 128] as Q4GroupSize[]) {
  for (const symmetric of [true, false]) {
    for (const scaleType of ['f32', 'f16'] as const) FORMATS.push({ groupSize, symmetric, scaleType });
  }
}
const fmtName = (f: Q4Format) => `g${f.groupSize} ${f.symmetric ? 'sym' : 'asym'} ${f.scaleType}`;
const DTYPES: WeightFormat[] = ['f32', 'f16', 'bf16'];

/** First differing index of two u32 arrays, for a readable failure (toEqual would print them all). */
function expectSameWords(what: string, got: Uint32Array, want: Uint32Array): void {
  expect(got.length, `${what}: length`).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) {
      let count = 0;
      for (let j = i; j < want.length; j++) if (got[j] !== want[j]) count++;
      expect.fail(
        `${what}: ${count} words differ, first at ${i}: got 0x${(got[i] as number).toString(16)}, want 0x${(want[i] as number).toString(16)}`,
      );
    }
  }
}

/** Reads every buffer of one int4 part and compares it with the CPU packing of the same rows. */
async function expectPart(c: GpuContext, q: Q4GpuWeight, i: number, want: PackedQ4, what: string) {
  const part = q.parts[i];
  if (!part) throw new Error(`${what}: no part ${i}`);
  const bytes = q4PartBytes(part.rows, q.cols, q.format);
  expect(bytes.words).toBe(want.words.byteLength);
  expect(bytes.scales).toBe(want.scales.byteLength);
  expectSameWords(`${what} codes`, await readU32(c, part.words, bytes.words / 4), want.words);
  expectSameWords(
    `${what} scales`,
    await readU32(c, part.scales, bytes.scales / 4),
    new Uint32Array(want.scales),
  );
  if (want.zeros) {
    if (!part.zeros) expect.fail(`${what}: no zeros buffer`);
    expectSameWords(`${what} zeros`, await readU32(c, part.zeros, want.zeros.length), want.zeros);
  } else {
    expect(part.zeros).toBeUndefined();
  }
}

/**
 * Uploads `values` as a tiled `dtype` weight (parts of `rowsPerPart` rows), quantizes it on the
 * GPU and checks every part against packQ4(quantizeRtn(·)) of the values the GPU holds (rounded to
 * the dtype), sliced like the parts: codes, scales and zeros must be equal word for word.
 */
async function check(
  c: GpuContext,
  values: Float32Array,
  rows: number,
  cols: number,
  dtype: WeightFormat,
  format: Q4Format,
  rowsPerPart = rows,
): Promise<void> {
  const { weight, seen } = uploadWeight(c, values, rows, cols, dtype, rowsPerPart);
  const q = await quantizeOnGpu(c, weight, format);
  const what = `${dtype} ${rows}x${cols} ${fmtName(format)}`;
  expect(q.parts.map((p) => [p.rowStart, p.rows])).toEqual(weight.parts.map((p) => [p.rowStart, p.rows]));
  expect([q.rows, q.cols, q.format]).toEqual([rows, cols, format]);
  const cpu = quantizeRtn(seen, rows, cols, format);
  for (const [i, part] of weight.parts.entries()) {
    const slice = part.rows === rows ? cpu : sliceQ4Rows(cpu, part.rowStart, part.rows);
    await expectPart(c, q, i, packQ4(slice), `${what} part ${i}`);
  }
  destroyQ4Weight(c, q);
  for (const p of weight.parts) p.buffer.destroy();
}

/**
 * Random values with the group shapes that exercise each rule: mixed magnitudes (uniform, then
 * scaled per row by up to 2^±12), all-positive and all-negative groups (asymmetric zero points at
 * the ends of the range), an all-zero group (s = 0), and a group of equal values.
 */
function testValues(rows: number, cols: number, seed: number): Float32Array {
  const w = randomF32(rows * cols, seed);
  for (let r = 0; r < rows; r++) {
    const scale = 2 ** (((r * 7) % 25) - 12);
    for (let k = 0; k < cols; k++) w[r * cols + k] = (w[r * cols + k] as number) * scale;
  }
  const groupAt = (r: number, k0: number, f: (v: number) => number) => {
    if (r >= rows) return;
    for (let k = k0; k < Math.min(cols, k0 + 32); k++) w[r * cols + k] = f(w[r * cols + k] as number);
  };
  groupAt(1, 0, (v) => Math.abs(v) + 0.25);
  groupAt(2, 0, (v) => -Math.abs(v) - 0.5);
  groupAt(3, 0, () => 0);
  groupAt(4, 0, () => -0.3);
  groupAt(5, 0, () => 3);
  return w;
}

describe('quantize_q4 equals packQ4(quantizeRtn) exactly', () => {
  // Every format × every input dtype on rows 1, 7, 129 (one row, a partial tile, tiles plus one
  // row) and K = 32, 128, 4096 where K is a whole number of groups.
  for (const dtype of DTYPES) {
    for (const format of FORMATS) {
      test(`${dtype} ${fmtName(format)}`, async () => {
        const c = await testGpu();
        for (const rows of [1, 7, 129]) {
          for (const cols of [32, 128, 4096]) {
            if (cols % format.groupSize !== 0) continue;
            await check(c, testValues(rows, cols, rows * 131 + cols), rows, cols, dtype, format);
          }
        }
      });
    }
  }

  test('a weight in several parts (16-row parts of 129 rows, and 120 + 9)', async () => {
    const c = await testGpu();
    const w = testValues(129, 256, 77);
    await check(c, w, 129, 256, 'bf16', { groupSize: 64, symmetric: false, scaleType: 'f16' }, 16);
    await check(c, w, 129, 256, 'f32', { groupSize: 32, symmetric: true, scaleType: 'f32' }, 120);
  });

  test('exact ties and near-ties round as Math.round does', async () => {
    // Groups whose scale is exactly 1 (max|w| = 7, or hi − lo = 15) hold exact half-integers:
    // Math.round sends 2.5 to 3 and −2.5 to −2. Other groups hold the f32 neighbours of
    // (j + ½)·s for an awkward s, one ulp either side, which only the exact check gets right.
    const cols = 128;
    const rows = 8;
    const w = new Float32Array(rows * cols);
    const halves = [0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 3.5, -3.5, 6.5, -6.5, 4.5, -4.5, 5.5, -5.5, 0, 0];
    for (let k = 0; k < 32; k++) {
      w[k] = k === 0 ? 7 : (halves[k % 16] as number);
      w[cols + k] = k === 0 ? 7.5 : k === 1 ? -7.5 : (halves[k % 16] as number);
    }
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    const near = (x: number, ulps: number) => {
      f[0] = x;
      u[0] = (u[0] as number) + ulps;
      return f[0] as number;
    };
    for (let r = 2; r < rows; r++) {
      const amax = 0.1 + r * 0.37;
      // The CPU's own scale of this group (symmetric, f32), so that the neighbours straddle ties.
      const one = new Float32Array(32);
      one[0] = amax;
      const s = quantizeRtn(one, 1, 32, { groupSize: 32, symmetric: true, scaleType: 'f32' })
        .scales[0] as number;
      for (let k = 0; k < cols; k++) {
        const j = (k % 7) + 0.5;
        const sign = k % 2 ? -1 : 1;
        w[r * cols + k] = k === 0 ? amax : near(sign * j * s, ((k >> 1) % 3) - 1);
      }
    }
    const c = await testGpu();
    for (const format of FORMATS.filter((f) => f.groupSize === 32)) {
      await check(c, w, rows, cols, 'f32', format);
    }
  });

  test('f32 extremes: subnormals, huge values, and hi − lo rounded by float64', async () => {
    // Rows 0–1: subnormal groups (their scale is subnormal, or the smallest f16 step); row 2:
    // values near the top of the f32 range; then asymmetric groups whose hi and −lo bits span 53+
    // positions, where the CPU's float64 hi − lo drops the small one (2^-60; 2^-50, a tie to
    // even; 2^7 next to 2^60) or keeps a trace of it (2^-50 + 2^-70: the scale must then exceed
    // 15 / 15 = 1; 2^-40 next to 1), and near ones (2^-49, 2^-45: exact sums).
    const cols = 32;
    const far: [number, number][] = [
      [15, -(2 ** -60)],
      [15, -(2 ** -50)],
      [15, -(2 ** -49)],
      [15, -(2 ** -50 + 2 ** -70)],
      [-(2 ** -45), 7.5],
      [1, -(2 ** -40)],
      [2 ** 60, -(2 ** 7)],
    ];
    const rows = 3 + far.length;
    const w = new Float32Array(rows * cols);
    for (let k = 0; k < cols; k++) {
      w[k] = (k % 5) * 1e-45 * (k % 2 ? -1 : 1);
      w[cols + k] = ((k % 9) - 4) * 3e-39;
      w[2 * cols + k] = ((k % 11) - 5) * 6e37;
    }
    far.forEach(([a, b], i) => {
      w[(3 + i) * cols] = a;
      w[(3 + i) * cols + 1] = b;
      w[(3 + i) * cols + 2] = a / 3;
    });
    const c = await testGpu();
    for (const format of FORMATS.filter((f) => f.groupSize === 32)) {
      if (format.scaleType === 'f16') {
        // Row 2 and the 2^60 row have scales past the f16 range (see the errors below).
        const ok = w.slice();
        ok.fill(0, 2 * cols, 3 * cols);
        ok.fill(0, (rows - 1) * cols, rows * cols);
        await check(c, ok, rows, cols, 'f32', format);
      } else {
        await check(c, w, rows, cols, 'f32', format);
      }
    }
  });
});

describe('quantize_q4 errors', () => {
  const g128: Q4Format = { groupSize: 128, symmetric: true, scaleType: 'f16' };

  test('K not a multiple of the group size, before any GPU work', async () => {
    const c = await testGpu();
    const { weight } = uploadWeight(c, new Float32Array(2 * 96), 2, 96, 'bf16');
    const before = c.allocatedBytes;
    await expect(quantizeOnGpu(c, weight, g128)).rejects.toThrow(UnsupportedModelError);
    await expect(quantizeOnGpu(c, weight, g128)).rejects.toThrow(/K \(96\).*group size \(128\)/);
    expect(c.allocatedBytes).toBe(before);
  });

  test('a SwiGLU-fused weight is refused', async () => {
    const c = await testGpu();
    const { weight } = uploadWeight(c, randomF32(2 * 8 * 128, 3), 8, 128, 'f16', 8, 'swiglu');
    await expect(quantizeOnGpu(c, weight, g128)).rejects.toThrow(/swiglu-fused/);
  });

  test('non-finite values and f16 scale overflow are reported with the row; nothing stays allocated', async () => {
    const c = await testGpu();
    const w = randomF32(20 * 128, 5);
    const upload = (at: number, v: number) => {
      const x = w.slice();
      x[at] = v;
      return uploadWeight(c, x, 20, 128, 'f32', 16).weight;
    };
    const inf = upload(13 * 128 + 7, Infinity);
    const nan = upload(17 * 128 + 100, NaN);
    const big = upload(17 * 128, 1e6);
    const before = c.allocatedBytes;
    await expect(quantizeOnGpu(c, inf, g128)).rejects.toThrow(/non-finite value in row 13/);
    await expect(quantizeOnGpu(c, nan, g128)).rejects.toThrow(/non-finite value in row 17/);
    await expect(quantizeOnGpu(c, big, g128)).rejects.toThrow(/row 17 does not fit in f16/);
    expect(c.allocatedBytes).toBe(before);
    // The same matrix fits with f32 scales.
    const q = await quantizeOnGpu(c, big, { ...g128, scaleType: 'f32' });
    destroyQ4Weight(c, q);
    expect(c.allocatedBytes).toBe(before);
  });

  test('track receives the result buffers', async () => {
    const c = await testGpu();
    const { weight } = uploadWeight(c, randomF32(9 * 64, 8), 9, 64, 'bf16');
    const tracked: GPUBuffer[] = [];
    const q = await quantizeOnGpu(
      c,
      weight,
      { groupSize: 32, symmetric: false, scaleType: 'f16' },
      { name: 'w.q4', track: (b) => (tracked.push(b), b) },
    );
    expect(q.name).toBe('w.q4');
    const part = q.parts[0] as Q4GpuWeight['parts'][number];
    expect(tracked).toEqual([part.words, part.scales, part.zeros]);
  });
});
