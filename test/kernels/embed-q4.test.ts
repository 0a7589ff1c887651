import { describe, expect, test } from 'vitest';
import type { GpuContext } from '../../src/gpu/device.js';
import { embedQ4 } from '../../src/kernels/embed-q4.js';
import { dequantize, quantizeRtn, type Q4Format, type Q4GroupSize } from '../../src/quant/q4.js';
import { uploadQ4Weight } from '../../src/weights/upload-q4.js';
import { randomF32, readF32, run, testGpu, upload } from '../helpers/gpu.js';

const FORMATS: Q4Format[] = [];
for (const groupSize of [32, 64, 128] as Q4GroupSize[]) {
  for (const symmetric of [true, false]) {
    for (const scaleType of ['f32', 'f16'] as const) FORMATS.push({ groupSize, symmetric, scaleType });
  }
}
const fmtName = (f: Q4Format) => `g${f.groupSize} ${f.symmetric ? 'sym' : 'asym'} ${f.scaleType}`;

/**
 * Gathers `ids` from an int4 table of random values (rows scaled by up to 2^±12, so that f16
 * scales include subnormal halves; one all-zero row) split into parts of `rowsPerPart` rows, and
 * expects every output element to equal `dequantize`'s f32 value exactly (Object.is: signs of
 * zero too). Rows not covered by any id keep the sentinel they started with.
 */
async function check(
  c: GpuContext,
  rows: number,
  cols: number,
  format: Q4Format,
  ids: number[],
  rowsPerPart = rows,
): Promise<void> {
  const w = randomF32(rows * cols, rows * 1009 + cols);
  for (let r = 0; r < rows; r++) {
    const scale = r === 2 ? 0 : 2 ** (((r * 5) % 25) - 12);
    for (let k = 0; k < cols; k++) w[r * cols + k] = (w[r * cols + k] as number) * scale;
  }
  const q = quantizeRtn(w, rows, cols, format);
  const table = uploadQ4Weight(c, 'embed', q, rowsPerPart);
  const deq = dequantize(q);
  const m = ids.length;
  const out = upload(c, new Float32Array(m * cols).fill(-12345));
  run(c, (b) => embedQ4(b, { table, ids: upload(c, Uint32Array.from(ids)), out, m }));
  const got = await readF32(c, out, m * cols);
  let bad = 0;
  let first = '';
  ids.forEach((id, i) => {
    for (let k = 0; k < cols; k++) {
      const want = deq[id * cols + k] as number;
      const have = got[i * cols + k] as number;
      if (!Object.is(have, want) && bad++ === 0)
        first = `row ${i} (id ${id}) col ${k}: got ${have}, want ${want}`;
    }
  });
  if (bad) expect.fail(`${fmtName(format)} ${rows}x${cols}: ${bad} elements differ; first ${first}`);
}

describe('embed_q4 equals dequantize exactly', () => {
  for (const format of FORMATS) {
    test(`${fmtName(format)}: one row, a partial tile, several parts`, async () => {
      const c = await testGpu();
      const k = format.groupSize;
      await check(c, 1, k, format, [0, 0]);
      await check(c, 7, 4 * k, format, [6, 0, 3, 2, 6]);
      // 129 rows in parts of 50 (each packed on its own): ids on both sides of each boundary.
      await check(c, 129, 2 * k, format, [0, 49, 50, 99, 100, 128, 2, 57, 50], 50);
    });
  }

  test('many groups per row (several zero-point and f16 scale words), K = 4096', async () => {
    const c = await testGpu();
    await check(c, 33, 4096, { groupSize: 128, symmetric: true, scaleType: 'f16' }, [7, 8, 15, 16, 32, 7], 8);
    await check(c, 17, 4096, { groupSize: 32, symmetric: false, scaleType: 'f32' }, [16, 9, 0, 8, 9], 8);
    // 9 groups: an odd f16 pair and a second, partly filled zero-point word, in 3 tiles.
    await check(c, 20, 576, { groupSize: 64, symmetric: false, scaleType: 'f16' }, [19, 8, 7, 0, 12, 16], 17);
  });

  test('each part writes only the ids in its own rows', async () => {
    const c = await testGpu();
    const [rows, cols] = [24, 64];
    const q = quantizeRtn(randomF32(rows * cols, 4), rows, cols, {
      groupSize: 32,
      symmetric: true,
      scaleType: 'f32',
    });
    const table = uploadQ4Weight(c, 'embed', q, 8);
    const deq = dequantize(q);
    const ids = [7, 8, 15, 16, 0, 23];
    const idBuf = upload(c, Uint32Array.from(ids));
    for (const [p, part] of table.parts.entries()) {
      const out = upload(c, new Float32Array(ids.length * cols).fill(-12345));
      run(c, (b) => embedQ4(b, { table: { ...table, parts: [part] }, ids: idBuf, out, m: ids.length }));
      const got = await readF32(c, out, ids.length * cols);
      ids.forEach((id, i) => {
        const mine = id >= 8 * p && id < 8 * (p + 1);
        const want = mine ? deq.subarray(id * cols, (id + 1) * cols) : new Float32Array(cols).fill(-12345);
        expect(got.subarray(i * cols, (i + 1) * cols), `part ${p}, id ${id}`).toEqual(want);
      });
    }
  });

  test('argument errors', async () => {
    const c = await testGpu();
    const q = quantizeRtn(randomF32(8 * 32, 1), 8, 32, { groupSize: 32, symmetric: true, scaleType: 'f32' });
    const table = uploadQ4Weight(c, 'embed', q);
    const ids = upload(c, new Uint32Array(1));
    const out = upload(c, new Float32Array(32));
    expect(() => run(c, (b) => embedQ4(b, { table, ids, out, m: 0 }))).toThrow(/m = 0/);
    expect(() => run(c, (b) => embedQ4(b, { table, ids, out, m: 70000 }))).toThrow(/exceed one dispatch/);
  });
});
