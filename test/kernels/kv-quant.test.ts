import { plainRowInfo } from '../../src/kernels/row-info.js';
import { describe, expect, test } from 'vitest';
import type { GpuContext } from '../../src/gpu/device.js';
import { attention } from '../../src/kernels/attention.js';
import { attentionPrefill } from '../../src/kernels/attention-prefill.js';
import {
  AttentionDecodeScratch,
  attentionDecode,
  type AttentionDecodeVariant,
} from '../../src/kernels/attention-decode.js';
import { attentionRef } from '../../src/kernels/attention.ref.js';
import { kvGroupBytes, kvQuantParams, kvRowBytes, type KvQuantDtype } from '../../src/kernels/kv-dtype.js';
import { decodeKvRow, dequantizeKvRow, kvCode, quantizeKvRow } from '../../src/kernels/kv-quant.ref.js';
import { kvQuantize } from '../../src/kernels/kv-quantize.js';
import { kvLowrank } from '../../src/kernels/kv-lowrank.js';
import { lowRankFactors, lowRankProduct } from '../../src/kernels/kv-lowrank.ref.js';
import { KV_WINDOW_LANES, KvWindow, NO_LANE } from '../../src/engine/kv/window.js';
import { f16BitsToF32, f32ToF16Bits } from '../../src/io/dtype.js';
import { DispatchBuilder, runDispatches } from '../../src/gpu/dispatch.js';
import {
  expectClose,
  randomF32,
  readF32,
  readU32,
  run,
  shuffledBlocks,
  testGpu,
  upload,
} from '../helpers/gpu.js';

const BLOCK = 16;
const FORMATS: KvQuantDtype[] = ['int8', 'int4', 'int2', 'gear4', 'gear2'];
const LOWRANK: KvQuantDtype[] = ['int4lr', 'int2lr', 'gear4lr', 'gear2lr'];

/**
 * K rows like a real model's keys: uniform in [-2, 2) plus a few outlier channels (every 13th,
 * scaled 8x), the structure that makes per-token key quantization lossy; V uniform in [-1, 1).
 */
function kvData(tokens: number, kvHeads: number, headDim: number, seed: number) {
  const k = randomF32(tokens * kvHeads * headDim, seed, 2);
  for (let i = 0; i < k.length; i++) if ((i % headDim) % 13 === 5) k[i] = (k[i] as number) * 8;
  const v = randomF32(tokens * kvHeads * headDim, seed + 1);
  return { k, v };
}

interface QuantCache {
  kCache: GPUBuffer;
  vCache: GPUBuffer;
  table: number[];
  blockTable: GPUBuffer;
  /** The cache's rows decoded in float64, in token order [tokens, kvHeads·headDim]. */
  k: Float64Array;
  v: Float64Array;
  /** The decoded rows (token-major, head-minor) as words say, for the quantizer checks. */
  rowsK: ReturnType<typeof decodeKvRow>[];
  rowsV: ReturnType<typeof decodeKvRow>[];
  /** Low-rank formats: k, v plus each block's A·B (what a query of a later block reads). */
  kLr: Float64Array;
  vLr: Float64Array;
  /** Low-rank formats: the factors as stored, per (token block, KV head): A [16][rank], B [rank][headDim]. */
  factorsK: { a: Float64Array; b: Float64Array }[];
  factorsV: { a: Float64Array; b: Float64Array }[];
}

/**
 * Quantizes `k`, `v` ([tokens, kvHeads·headDim]) into shuffled blocks of a `dtype` cache with
 * kv_quantize (and kv_lowrank), `chunk` rows per dispatch (its stage holds them at the identity
 * slots, as rope_kv_write leaves them), then reads the words back and decodes them with the
 * float64 twin. With `window`, the engine's KvWindow gives blocks split between dispatches their
 * lanes of a recent window (as decode steps get them); without, no row has a lane.
 */
async function fillQuant(
  c: GpuContext,
  k: Float32Array,
  v: Float32Array,
  tokens: number,
  kvHeads: number,
  headDim: number,
  dtype: KvQuantDtype,
  chunk = 256,
  window = false,
): Promise<QuantCache & { words: { k: Uint32Array; v: Uint32Array } }> {
  const blocks = Math.ceil(tokens / BLOCK);
  const table = shuffledBlocks(blocks, tokens + headDim);
  const rowBytes = kvRowBytes(dtype, headDim);
  const groupBytes = kvGroupBytes(dtype, headDim);
  const { rank } = kvQuantParams(dtype);
  const cacheBytes = blocks * kvHeads * groupBytes;
  const kCache = upload(c, new Uint8Array(cacheBytes));
  const vCache = upload(c, new Uint8Array(cacheBytes));
  const kvDim = kvHeads * headDim;
  const lanes = new KvWindow(KV_WINDOW_LANES);
  const windowBuf = upload(c, new Float32Array(KV_WINDOW_LANES * 2 * kvHeads * BLOCK * headDim));
  for (let t0 = 0; t0 < tokens; t0 += chunk) {
    const m = Math.min(chunk, tokens - t0);
    const stage = (x: Float32Array) => {
      const s = new Float32Array(Math.ceil(m / BLOCK) * BLOCK * kvDim);
      for (let r = 0; r < m; r++) {
        for (let h = 0; h < kvHeads; h++) {
          const at = ((Math.floor(r / BLOCK) * kvHeads + h) * BLOCK + (r % BLOCK)) * headDim;
          s.set(x.subarray((t0 + r) * kvDim + h * headDim, (t0 + r) * kvDim + (h + 1) * headDim), at);
        }
      }
      return upload(c, s);
    };
    const slots = Uint32Array.from({ length: m }, (_, r) => {
      const p = t0 + r;
      return (table[Math.floor(p / BLOCK)] as number) * BLOCK + (p % BLOCK);
    });
    const a = {
      slots: upload(c, slots),
      kStage: stage(k),
      vStage: stage(v),
      kCache,
      vCache,
      lanes: upload(c, window ? lanes.assign(slots) : new Uint32Array(m).fill(NO_LANE)),
      window: windowBuf,
      m,
      kvHeads,
      headDim,
      kvDtype: dtype,
    };
    run(c, (b) => kvQuantize(b, a));
    if (rank > 0) run(c, (b) => kvLowrank(b, a));
  }
  const rw = rowBytes / 4;
  const gw = groupBytes / 4;
  const decodeAll = async (buf: GPUBuffer) => {
    const words = await readU32(c, buf, cacheBytes / 4);
    const all = words;
    const dense = new Float64Array(tokens * kvDim);
    const rows: ReturnType<typeof decodeKvRow>[] = [];
    for (let p = 0; p < tokens; p++) {
      for (let h = 0; h < kvHeads; h++) {
        const at = ((table[Math.floor(p / BLOCK)] as number) * kvHeads + h) * gw + (p % BLOCK) * rw;
        const q = decodeKvRow(words.subarray(at, at + rw), dtype, headDim);
        rows.push(q);
        dense.set(dequantizeKvRow(q), p * kvDim + h * headDim);
      }
    }
    const lr = Float64Array.from(dense);
    const factors: { a: Float64Array; b: Float64Array }[] = [];
    if (rank > 0) {
      const half = (at: number) => {
        const w = words[Math.floor(at / 2)] as number;
        return f16BitsToF32(at % 2 === 0 ? w & 0xffff : w >>> 16);
      };
      for (let blk = 0; blk < blocks; blk++) {
        for (let h = 0; h < kvHeads; h++) {
          const f = 2 * (((table[blk] as number) * kvHeads + h) * gw + BLOCK * rw);
          const a = Float64Array.from({ length: BLOCK * rank }, (_, i) => half(f + i));
          const b = Float64Array.from({ length: rank * headDim }, (_, i) => half(f + BLOCK * rank + i));
          factors.push({ a, b });
          const ab = lowRankProduct({ a, b }, BLOCK, headDim, rank);
          for (let t = 0; t < BLOCK && blk * BLOCK + t < tokens; t++) {
            for (let d = 0; d < headDim; d++) {
              const i = (blk * BLOCK + t) * kvDim + h * headDim + d;
              lr[i] = (lr[i] as number) + (ab[t * headDim + d] as number);
            }
          }
        }
      }
    }
    return { dense, rows, lr, factors, all };
  };
  const dk = await decodeAll(kCache);
  const dv = await decodeAll(vCache);
  return {
    kCache,
    vCache,
    table,
    blockTable: upload(c, Uint32Array.from(table)),
    k: dk.dense,
    v: dv.dense,
    rowsK: dk.rows,
    rowsV: dv.rows,
    kLr: dk.lr,
    vLr: dv.lr,
    factorsK: dk.factors,
    factorsV: dv.factors,
    words: { k: dk.all, v: dv.all },
  };
}

const f16Ulp = (x: number) => {
  const h = f32ToF16Bits(x) & 0x7fff;
  return Math.abs(f16BitsToF32(h + 1) - f16BitsToF32(h));
};

describe('kv_quantize vs its float64 twin', () => {
  // Rows 1, 7, 129 (one dispatch of 129 and dispatches of 50: stages that start mid-block), head
  // dims 4 (one word, a row smaller than a vec4 of outliers... of codes), 12, 64, 256.
  const cases = [
    { tokens: 1, kvHeads: 1, headDim: 4, chunk: 256 },
    { tokens: 7, kvHeads: 3, headDim: 12, chunk: 256 },
    { tokens: 129, kvHeads: 2, headDim: 64, chunk: 50 },
    { tokens: 33, kvHeads: 1, headDim: 256, chunk: 256 },
  ];
  // The low-rank formats' rows are their base format's, in groups with the factors after them.
  for (const dtype of [...FORMATS, 'gear4lr', 'int2lr'] as KvQuantDtype[]) {
    for (const { tokens, kvHeads, headDim, chunk } of cases) {
      test(`${dtype} rows=${tokens} kvHeads=${kvHeads} headDim=${headDim}`, async () => {
        const c = await testGpu();
        const { k, v } = kvData(tokens, kvHeads, headDim, tokens + headDim);
        const qc = await fillQuant(c, k, v, tokens, kvHeads, headDim, dtype, chunk);
        const { bits, outliers } = kvQuantParams(dtype);
        let nearTies = 0;
        for (const [x, rows] of [
          [k, qc.rowsK],
          [v, qc.rowsV],
        ] as const) {
          rows.forEach((got, i) => {
            const row = x.subarray(i * headDim, (i + 1) * headDim);
            const want = quantizeKvRow(row, dtype);
            // The same outlier channels (|x| distinct here), in the same order.
            expect(got.outliers.map((o) => o.ch)).toEqual(want.outliers.map((o) => o.ch));
            // (scale, min): the kernel divides in f32 before rounding to f16, the twin in
            // float64: at most one f16 ulp apart.
            expect(Math.abs(got.scale - want.scale)).toBeLessThanOrEqual(f16Ulp(want.scale));
            expect(Math.abs(got.min - want.min)).toBeLessThanOrEqual(f16Ulp(want.min));
            // Codes are the rule applied with the stored (scale, min), except where (x - min) /
            // scale lies within f32's rounding (1e-4 of a level) of a half-way point.
            for (let d = 0; d < headDim; d++) {
              const xd = row[d] as number;
              const exact = got.scale > 0 ? (xd - got.min) / got.scale : 0;
              const code = kvCode(xd, got.scale, got.min, bits);
              if (got.codes[d] !== code) {
                expect(Math.abs(Math.abs(exact % 1) - 0.5)).toBeLessThan(1e-4);
                expect(Math.abs((got.codes[d] as number) - code)).toBe(1);
                nearTies++;
              }
            }
            // What the row gives back: within half a level of x for every channel the range
            // covers; an outlier within its f16 residual's rounding (2^-11 relative, or the
            // whole residual below f16's smallest normal 2^-14: adapters may flush f16
            // subnormals, lavapipe does), plus the f32 arithmetic of code · scale + min.
            const deq = dequantizeKvRow(got);
            const outCh = new Set(got.outliers.map((o) => o.ch));
            for (let d = 0; d < headDim; d++) {
              const err = Math.abs((deq[d] as number) - (row[d] as number));
              if (outCh.has(d)) {
                const r = got.outliers.find((o) => o.ch === d)?.resid ?? 0;
                expect(err).toBeLessThanOrEqual(Math.max(Math.abs(r) * 2 ** -11, 2 ** -14) + 1e-6);
              } else {
                // f16 rounding of min may put x up to half an ulp below the range: clamped.
                expect(err).toBeLessThanOrEqual(got.scale / 2 + f16Ulp(got.min) + 1e-6);
              }
            }
            expect(got.outliers.length).toBe(outliers);
          });
        }
        // Ties are rare (random data): no more than a few in the whole cache.
        expect(nearTies).toBeLessThan(4);
      });
    }
  }
});

/**
 * attentionRef for a low-rank cache, one query row at a time: a query reads every block before
 * its own with the block's A·B added, its own block without (kv_own_block in kv_quant.wgsl).
 */
function lowRankAttentionRef(
  qc: QuantCache,
  q: Float32Array,
  positions: number[],
  heads: number,
  kvHeads: number,
  headDim: number,
  scale: number,
  window: number,
): Float64Array {
  const kvDim = kvHeads * headDim;
  const qDim = heads * headDim;
  const out = new Float64Array(positions.length * qDim);
  positions.forEach((pos, r) => {
    const own = Math.floor(pos / BLOCK) * BLOCK * kvDim;
    const mix = (lr: Float64Array, plain: Float64Array) => {
      const x = Float64Array.from(lr);
      x.set(plain.subarray(own), own);
      return x;
    };
    const o = attentionRef(
      q.subarray(r * qDim, (r + 1) * qDim),
      mix(qc.kLr, qc.k),
      mix(qc.vLr, qc.v),
      [pos],
      heads,
      kvHeads,
      headDim,
      scale,
      window,
    );
    out.set(o, r * qDim);
  });
  return out;
}

/**
 * Attention tolerance: the kernels read exactly the values the float64 decoding gives (code ·
 * scale + min + residual, each one f32 rounding: 6e-8 relative), so the error budget is that of
 * f32 attention over float data (attention-decode.test.ts: 2e-5 absolute for q in [-3, 3), v in
 * [-1, 1)). Keys here reach |16| in outlier channels, scores |x| ≲ 60: the score error grows to
 * ~3e-6, still within the same 2e-5 (observed below 1e-6).
 */
const ATOL = 2e-5;

describe('attention over a quantized cache vs attentionRef on the decoded cache', () => {
  // ctx 1, 7, 129, 4097; GQA 1..8 (one and two head blocks in split-K); head dims 8, 64, 128;
  // windows; each format.
  const cases = [
    { ctx: 1, heads: 2, kvHeads: 2, headDim: 8, chunk: 16, window: 0 },
    { ctx: 7, heads: 8, kvHeads: 2, headDim: 64, chunk: 16, window: 0 },
    { ctx: 129, heads: 6, kvHeads: 2, headDim: 128, chunk: 48, window: 0 },
    { ctx: 129, heads: 4, kvHeads: 1, headDim: 64, chunk: 16, window: 7 },
    // Two head blocks (GQA 8): split-K scores 2 tokens for 8 heads per K load.
    { ctx: 129, heads: 8, kvHeads: 1, headDim: 64, chunk: 64, window: 0 },
    { ctx: 4097, heads: 4, kvHeads: 1, headDim: 64, chunk: 512, window: 0 },
    // Two head blocks, the second padded (GQA 7), over tiles of 256 keys: the single pass walks
    // 3 tiles of one chunk (low-rank formats stage each tile's factor terms anew), in a sliding
    // window that starts mid-block.
    { ctx: 600, heads: 7, kvHeads: 1, headDim: 64, chunk: 128, window: 550 },
  ];
  // Two low-rank formats (every part, and codes + factors) cover the fragment's low-rank loads;
  // kv_lowrank's test covers the four.
  for (const dtype of [...FORMATS, 'gear4lr', 'int2lr'] as KvQuantDtype[]) {
    for (const { ctx, heads, kvHeads, headDim, chunk, window } of cases) {
      if (ctx === 4097 && dtype !== 'int4' && dtype !== 'gear2' && dtype !== 'gear4lr') continue;
      if (ctx === 600 && !LOWRANK.includes(dtype) && dtype !== 'gear4') continue;
      if (LOWRANK.includes(dtype) && ctx === 1) continue;
      // The first case of a format compiles its prefill, split-K and merge pipelines: minutes on
      // a lavapipe shared with other jobs.
      test(`${dtype} ctx=${ctx} heads=${heads}/${kvHeads} headDim=${headDim} window=${window}`, async () => {
        const c = await testGpu();
        const { k, v } = kvData(ctx, kvHeads, headDim, ctx * 3 + headDim);
        const qc = await fillQuant(c, k, v, ctx, kvHeads, headDim, dtype);
        const positions = [...new Set([ctx - 1, Math.floor(ctx / 2), 0])];
        const q = randomF32(positions.length * heads * headDim, ctx + 5, 3);
        const scale = 1 / Math.sqrt(headDim);
        const want = LOWRANK.includes(dtype)
          ? lowRankAttentionRef(qc, q, positions, heads, kvHeads, headDim, scale, window)
          : attentionRef(q, qc.k, qc.v, positions, heads, kvHeads, headDim, scale, window);
        const common = {
          rowInfo: upload(c, plainRowInfo(positions)),
          blockTable: qc.blockTable,
          q: upload(c, q),
          kCache: qc.kCache,
          vCache: qc.vCache,
          m: positions.length,
          heads,
          kvHeads,
          headDim,
          scale,
          window,
          kvDtype: dtype,
        };
        // The one-row kernel, then the tiled one.
        const out = upload(c, new Float32Array(q.length));
        run(c, (b) => attention(b, { ...common, out }));
        expectClose(await readF32(c, out, q.length), want, { atol: ATOL });
        const tiled = upload(c, new Float32Array(q.length));
        run(c, (b) => attentionPrefill(b, { ...common, out: tiled }));
        expectClose(await readF32(c, tiled, q.length), want, { atol: ATOL });
        // Split-K decode: exact, and async softmax with phi = 0 (inside these scores' range), then
        // the whole context in one split (the single pass).
        const maxContext = ctx + 40;
        const oneSplit = Math.ceil(maxContext / 16) * 16;
        for (const [variant, ch] of [
          ['two_pass', chunk],
          ['async_softmax', chunk],
          ['two_pass', oneSplit],
        ] as [AttentionDecodeVariant, number][]) {
          const scratch = new AttentionDecodeScratch(c, {
            rows: positions.length,
            heads,
            headDim,
            maxContext,
            chunk: ch,
          });
          const o2 = upload(c, new Float32Array(q.length));
          const b = new DispatchBuilder(c);
          runDispatches(
            c,
            attentionDecode(b, {
              ...common,
              out: o2,
              maxContext,
              chunk: ch,
              variant,
              ...(variant === 'async_softmax' ? { phi: 0 } : {}),
              scratch,
            }),
          );
          expectClose(await readF32(c, o2, q.length), want, { atol: ATOL });
          b.destroy();
          scratch.destroy();
        }
      }, 300_000);
    }
  }
});

describe('attention_prefill over a quantized cache: a prefill chunk across blocks', () => {
  // 29 consecutive rows (positions 100..128: blocks 6, 7 and 8, so the low-rank formats' tiles
  // split into one segment per own block) and a far row (5) in the same sequence, with and without
  // a window; head_dim 128 and GQA 2.
  for (const dtype of ['int4', 'gear2', 'int8', 'gear4lr', 'int2lr'] as KvQuantDtype[]) {
    for (const window of [0, 20]) {
      test(`${dtype} window=${window}`, async () => {
        const c = await testGpu();
        const [ctx, heads, kvHeads, headDim] = [129, 4, 2, 128];
        const { k, v } = kvData(ctx, kvHeads, headDim, 7 * headDim + window);
        const qc = await fillQuant(c, k, v, ctx, kvHeads, headDim, dtype);
        const positions = [...Array.from({ length: 29 }, (_, i) => 100 + i), 5];
        const q = randomF32(positions.length * heads * headDim, ctx + window, 3);
        const scale = 1 / Math.sqrt(headDim);
        const want = LOWRANK.includes(dtype)
          ? lowRankAttentionRef(qc, q, positions, heads, kvHeads, headDim, scale, window)
          : attentionRef(q, qc.k, qc.v, positions, heads, kvHeads, headDim, scale, window);
        const out = upload(c, new Float32Array(q.length));
        run(c, (b) =>
          attentionPrefill(b, {
            rowInfo: upload(c, plainRowInfo(positions)),
            blockTable: qc.blockTable,
            q: upload(c, q),
            kCache: qc.kCache,
            vCache: qc.vCache,
            out,
            m: positions.length,
            heads,
            kvHeads,
            headDim,
            scale,
            window,
            kvDtype: dtype,
          }),
        );
        expectClose(await readF32(c, out, q.length), want, { atol: ATOL });
      }, 300_000);
    }
  }
});

describe('compression error', () => {
  // GEAR's sparse part must lower the error at the same bits on keys with outlier channels: the
  // mean squared error of the round trip, over the same rows.
  test('gear4 < int4 and gear2 < int2 on keys with outlier channels', () => {
    const headDim = 64;
    const { k } = kvData(64, 1, headDim, 99);
    const mse = (dtype: KvQuantDtype) => {
      let s = 0;
      for (let r = 0; r < 64; r++) {
        const row = k.subarray(r * headDim, (r + 1) * headDim);
        const deq = dequantizeKvRow(quantizeKvRow(row, dtype));
        for (let d = 0; d < headDim; d++) s += ((deq[d] as number) - (row[d] as number)) ** 2;
      }
      return s / k.length;
    };
    expect(mse('gear4')).toBeLessThan(mse('int4'));
    expect(mse('gear2')).toBeLessThan(mse('int2'));
    expect(mse('int8')).toBeLessThan(mse('int4'));
  });
});

describe('kv_lowrank vs its float64 twin', () => {
  // Rows 7 (no whole block), 16, 33, 129 in dispatches of 50 (blocks 3 and 6 split between two
  // steps: factors only from the recent window), 33 one row per dispatch (decode: every block
  // from the window), head dims 4, 12, 64, 256.
  const cases = [
    { tokens: 7, kvHeads: 1, headDim: 4, chunk: 256, window: true },
    { tokens: 16, kvHeads: 3, headDim: 12, chunk: 256, window: false },
    { tokens: 129, kvHeads: 2, headDim: 64, chunk: 50, window: false },
    { tokens: 129, kvHeads: 2, headDim: 64, chunk: 50, window: true },
    { tokens: 33, kvHeads: 3, headDim: 12, chunk: 1, window: true },
    { tokens: 33, kvHeads: 1, headDim: 256, chunk: 256, window: false },
  ];
  for (const dtype of LOWRANK) {
    for (const { tokens, kvHeads, headDim, chunk, window } of cases) {
      if (headDim === 256 && dtype !== 'gear4lr') continue;
      const name = `${dtype} rows=${tokens} kvHeads=${kvHeads} headDim=${headDim} chunk=${chunk} window=${window}`;
      test(name, async () => {
        const c = await testGpu();
        const { k, v } = kvData(tokens, kvHeads, headDim, tokens * 7 + headDim);
        const qc = await fillQuant(c, k, v, tokens, kvHeads, headDim, dtype, chunk, window);
        const { rank } = kvQuantParams(dtype);
        const kvDim = kvHeads * headDim;
        let gain = 0;
        for (const [x, dense, factors] of [
          [k, qc.k, qc.factorsK],
          [v, qc.v, qc.factorsV],
        ] as const) {
          factors.forEach((got, i) => {
            const blk = Math.floor(i / kvHeads);
            const h = i % kvHeads;
            const whole =
              (blk + 1) * BLOCK <= tokens &&
              (window || Math.floor((blk * BLOCK) / chunk) === Math.floor((blk * BLOCK + BLOCK - 1) / chunk));
            if (!whole) {
              // A block not yet full, or split between steps without the window, keeps
              // kv_quantize's zeros.
              expect([...got.a, ...got.b].every((y) => y === 0)).toBe(true);
              return;
            }
            // The block's error after codes and outliers (the GPU's own rows: the quantizer is
            // checked above), its float64 factors, and both products.
            const e = new Float64Array(BLOCK * headDim);
            for (let t = 0; t < BLOCK; t++) {
              for (let d = 0; d < headDim; d++) {
                const at = (blk * BLOCK + t) * kvDim + h * headDim + d;
                e[t * headDim + d] = (x[at] as number) - (dense[at] as number);
              }
            }
            const want = lowRankFactors(e, BLOCK, headDim, rank);
            const abGot = lowRankProduct(got, BLOCK, headDim, rank);
            const abWant = lowRankProduct(want, BLOCK, headDim, rank);
            // Tolerance: the kernel iterates in f32 and rounds A and B to f16 like the twin: the
            // factors come out bit-equal but for an entry near an f16 rounding boundary (one ulp,
            // 2^-10 relative; its deflation then moves the next factor by as little) and f16
            // subnormals (below 2^-14), which adapters may flush to 0 (lavapipe does). Per
            // element: 2^-8 of Σ_j |a_j|·|b_j|, 2^-14 · Σ_j (|a_j| + |b_j|) for a flushed entry,
            // and 1e-5 of the error's largest entry for the f32 arithmetic.
            const emax = e.reduce((m, y) => Math.max(m, Math.abs(y)), 0);
            for (let t = 0; t < BLOCK; t++) {
              for (let d = 0; d < headDim; d++) {
                let mag = 0;
                let flush = 0;
                for (let j = 0; j < rank; j++) {
                  const aj = Math.abs(want.a[t * rank + j] as number);
                  const bj = Math.abs(want.b[j * headDim + d] as number);
                  mag += aj * bj;
                  flush += aj + bj;
                }
                const diff = Math.abs(
                  (abGot[t * headDim + d] as number) - (abWant[t * headDim + d] as number),
                );
                expect(diff).toBeLessThanOrEqual(mag * 2 ** -8 + flush * 2 ** -14 + 1e-5 * emax);
              }
            }
            // The correction lowers the block's squared error, as much as the twin's does (to 1%).
            const sq = (ab: Float64Array) => e.reduce((s, y, j) => s + (y - (ab[j] as number)) ** 2, 0);
            const e2 = e.reduce((s, y) => s + y * y, 0);
            expect(sq(abGot)).toBeLessThan(e2);
            expect(Math.abs(sq(abGot) - sq(abWant))).toBeLessThanOrEqual(0.01 * (e2 - sq(abWant)));
            gain += e2 - sq(abGot);
          });
        }
        expect(gain >= 0).toBe(true);
      });
    }
  }
});

describe('the recent window', () => {
  // f32 lanes: a block filled row by row (decode) or across two chunks must get the very factors
  // it gets written whole, so the cache's words are equal, not close.
  for (const [dtype, chunk] of [
    ['gear4lr', 1],
    ['int2lr', 7],
  ] as const) {
    test(`${dtype}: blocks filled ${chunk} rows a step = written whole, word for word`, async () => {
      const c = await testGpu();
      const tokens = 41;
      const { k, v } = kvData(tokens, 2, 12, 5);
      const whole = await fillQuant(c, k, v, tokens, 2, 12, dtype, 256);
      const split = await fillQuant(c, k, v, tokens, 2, 12, dtype, chunk, true);
      expect(whole.factorsK.some((f) => f.a.some((y) => y !== 0))).toBe(true);
      expect([...split.words.k]).toEqual([...whole.words.k]);
      expect([...split.words.v]).toEqual([...whole.words.v]);
    });
  }
});
