/**
 * logit_adjust against its float64 twin: per-row edits (unique ids, some beyond the vocabulary,
 * which the kernel skips) and masks on some rows, at vocabulary sizes 1, 7, 129 and 4097. The kernel
 * adds in f32: each edited logit must equal the twin's float64 sum rounded to f32 (one rounding),
 * masked ones -Infinity, everything else untouched, bit for bit; one row also gets a min-p cut.
 */
import { expect, test } from 'vitest';
import { logitAdjustRef } from '../../src/kernels/logit-adjust.ref.js';
import { ADJUST_EDIT_BYTES, logitAdjust } from '../../src/kernels/sample.js';
import { randomF32, readF32, run, testGpu, upload } from '../helpers/gpu.js';

test.each([1, 7, 129, 4097])('logit_adjust matches its float64 twin at n = %i', async (n) => {
  const c = await testGpu();
  const rows = 3;
  const words = Math.ceil(n / 32);
  const logits = randomF32(rows * n, n, 4);
  let seed = n * 7 + 1;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const edits: Map<number, number>[] = [];
  const masks: (Uint32Array | null)[] = [];
  for (let r = 0; r < rows; r++) {
    const e = new Map<number, number>();
    for (let k = 0; k < Math.min(n, 20); k++) e.set(Math.floor(rnd() * (n + 3)), (rnd() - 0.5) * 200);
    edits.push(e);
    if (r === 1) masks.push(null);
    else {
      const m = new Uint32Array(words);
      for (let i = 0; i < n; i++)
        if (rnd() < 0.3 || i === 0) m[i >> 5] = (m[i >> 5] as number) | (1 << (i & 31));
      masks.push(m);
    }
  }
  // Row 2 also gets a min-p cut (T = 0.8, min_p = 0.05); the others none (-Infinity).
  const offsets = [-Infinity, -Infinity, Math.fround(0.8 * Math.log(0.05))];
  const rowData = new Uint32Array(rows * 4);
  const rowF = new Float32Array(rowData.buffer);
  offsets.forEach((o, r) => (rowF[4 * r + 3] = o));
  const editBytes = new ArrayBuffer(Math.max(8, edits.reduce((a, e) => a + e.size, 0) * ADJUST_EDIT_BYTES));
  const eu = new Uint32Array(editBytes);
  const ef = new Float32Array(editBytes);
  const maskData = new Uint32Array(Math.max(1, rows * words));
  let start = 0;
  let maskRows = 0;
  edits.forEach((e, r) => {
    rowData[4 * r] = start;
    rowData[4 * r + 1] = e.size;
    for (const [id, add] of e) {
      eu[2 * start] = id;
      ef[2 * start + 1] = add;
      start++;
    }
    const m = masks[r];
    if (m) {
      maskData.set(m, maskRows * words);
      rowData[4 * r + 2] = ++maskRows;
    }
  });
  const logitsBuf = upload(c, logits);
  run(c, (b) =>
    logitAdjust(b, {
      logits: logitsBuf,
      rows: upload(c, rowData),
      edits: upload(c, new Uint8Array(editBytes)),
      masks: upload(c, maskData),
      rowCount: rows,
      n,
    }),
  );
  const got = await readF32(c, logitsBuf, rows * n);
  for (let r = 0; r < rows; r++) {
    const want = Float64Array.from(logits.subarray(r * n, (r + 1) * n));
    // The edits as the kernel reads them (f32), summed in float64, then rounded once.
    const e32 = new Map([...(edits[r] as Map<number, number>)].map(([id, v]) => [id, Math.fround(v)]));
    logitAdjustRef(want, { edits: e32, mask: masks[r] ?? null, minPOffset: offsets[r] as number });
    // The kernel forms max + offset in f32: a logit within a few ulp of that cut may fall either way.
    const kept = Array.from(want).filter((v) => v > -Infinity);
    const cut = Math.max(...kept) + (offsets[r] as number);
    for (let i = 0; i < n; i++) {
      const w = want[i] as number;
      if (Number.isFinite(offsets[r] as number) && Math.abs(w - cut) < 1e-5 * Math.max(1, Math.abs(cut)))
        continue;
      expect(got[r * n + i], `row ${r} id ${i}`).toBe(Math.fround(w));
    }
    if (r === 2 && n > 1) expect(kept.length).toBeLessThan(n);
  }
});
