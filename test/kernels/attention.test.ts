import { plainRowInfo, ROW_INFO_WORDS, writeRowInfo } from '../../src/kernels/row-info.js';
import { tokenTree } from '../helpers/tree.js';
import { describe, expect, test } from 'vitest';
import type { GpuContext } from '../../src/gpu/device.js';
import { attention } from '../../src/kernels/attention.js';
import { attentionPrefill } from '../../src/kernels/attention-prefill.js';
import { attentionRef } from '../../src/kernels/attention.ref.js';
import type { KvFloatDtype as KvDtype } from '../../src/kernels/kv-dtype.js';
import { kvWrite } from '../../bench/baselines/kv-write.js';
import { fillCache } from '../helpers/paged-kv.js';
import { ropeKvWrite } from '../../src/kernels/rope-kv-write.js';
import { rope } from '../../bench/baselines/rope.js';
import { ropeAngles, ropeInvFreq, ropeRef, ropeTable, NO_ROPE } from '../../src/kernels/rope.ref.js';
import {
  expectClose,
  kvBuffer,
  kvRounded,
  randomF32,
  readF32,
  readKv,
  shuffledBlocks,
  run,
  testGpu,
  upload,
} from '../helpers/gpu.js';

const BLOCK = 16;

/**
 * The two kernels of a step's attention over the cache: one workgroup per (head, row), and 16-row
 * tiles (prefill chunks). Each test below runs both against the same reference.
 */
const KERNELS = [
  { name: 'attention', make: attention },
  { name: 'attention_prefill', make: attentionPrefill },
] as const;

/** Whether this adapter can run `dtype` KV kernels (f16 needs shader-f16; lavapipe has it). */
function supported(c: GpuContext, dtype: KvDtype): boolean {
  return dtype === 'f32' || c.adapter.shaderF16;
}

/** The [tokens, kvHeads·headDim] rows of `slots` gathered back out of a paged cache read as f32. */
function gather(cache: Float32Array, slots: readonly number[], kvHeads: number, headDim: number): number[] {
  const rows: number[] = [];
  for (const slot of slots) {
    for (let h = 0; h < kvHeads; h++) {
      const at = ((Math.floor(slot / BLOCK) * kvHeads + h) * BLOCK + (slot % BLOCK)) * headDim;
      rows.push(...cache.subarray(at, at + headDim));
    }
  }
  return rows;
}

for (const kernel of KERNELS) {
  describe(`kv_write + ${kernel.name} over a paged cache (f32 and f16 K/V)`, () => {
    // Context lengths 1, 7, 129, 4097 (ragged last blocks and tiles), GQA ratios 1, 2, 4, head dims
    // up to the kernel's 256. Query rows: the last position (decode) plus a few earlier ones (prefill).
    const cases = [
      { ctx: 1, heads: 2, kvHeads: 2, headDim: 8 },
      { ctx: 7, heads: 4, kvHeads: 1, headDim: 64 },
      { ctx: 129, heads: 4, kvHeads: 2, headDim: 256 },
      { ctx: 4097, heads: 2, kvHeads: 1, headDim: 16 },
    ];
    const runs = (['f32', 'f16'] as const).flatMap((kvDtype) => cases.map((x) => ({ ...x, kvDtype })));
    for (const { ctx, heads, kvHeads, headDim, kvDtype } of runs) {
      test(`${kvDtype} KV ctx=${ctx} heads=${heads}/${kvHeads} headDim=${headDim}`, async () => {
        const c = await testGpu();
        if (!supported(c, kvDtype)) return;
        const kvDim = kvHeads * headDim;
        const blocks = Math.ceil(ctx / BLOCK);
        const table = shuffledBlocks(blocks, ctx);
        const k = randomF32(ctx * kvDim, ctx, 2);
        const v = randomF32(ctx * kvDim, ctx + 1);
        const kCache = kvBuffer(c, blocks * kvDim * BLOCK, kvDtype);
        const vCache = kvBuffer(c, blocks * kvDim * BLOCK, kvDtype);
        const slots = Array.from(
          { length: ctx },
          (_, p) => (table[Math.floor(p / BLOCK)] as number) * BLOCK + (p % BLOCK),
        );
        run(c, (b) => {
          const d = kvWrite(b, {
            slots: upload(c, Uint32Array.from(slots)),
            k: upload(c, k),
            v: upload(c, v),
            kCache,
            vCache,
            m: ctx,
            kvHeads,
            headDim,
            kvDtype,
          });
          expect(d.label).toBe(kvDtype === 'f16' ? 'kv_write_kvf16' : 'kv_write');
          return d;
        });
        // The cache holds every value rounded once to the nearest (even) f16, or as is in f32: bit
        // for bit what the reference below is computed from.
        const kSeen = kvRounded(k, kvDtype);
        const vSeen = kvRounded(v, kvDtype);
        const elems = blocks * kvDim * BLOCK;
        expect(gather(await readKv(c, kCache, elems, kvDtype), slots, kvHeads, headDim)).toEqual([...kSeen]);
        expect(gather(await readKv(c, vCache, elems, kvDtype), slots, kvHeads, headDim)).toEqual([...vSeen]);
        const positions = [...new Set([ctx - 1, 0, Math.floor(ctx / 2), Math.max(0, ctx - 2)])];
        const q = randomF32(positions.length * heads * headDim, ctx + 2, 3);
        const rowInfo = plainRowInfo(positions);
        const out = upload(c, new Float32Array(q.length));
        const scale = 1 / Math.sqrt(headDim);
        run(c, (b) => {
          const d = kernel.make(b, {
            rowInfo: upload(c, rowInfo),
            blockTable: upload(c, Uint32Array.from(table)),
            q: upload(c, q),
            kCache,
            vCache,
            out,
            m: positions.length,
            heads,
            kvHeads,
            headDim,
            scale,
            kvDtype,
          });
          expect(d.label).toBe(kvDtype === 'f16' ? `${kernel.name}_kvf16` : kernel.name);
          return d;
        });
        // The reference takes the K/V the cache holds (f16-rounded for an f16 cache), so the only
        // difference left is the kernel's f32 arithmetic, the same for both cache types: f32 scores
        // (headDim products), exp within a few ulp, and a running sum rescaled once per 64-key tile:
        // the relative error of the weights is ≲ (headDim + ctx/64 + 70)·2⁻²⁴, and the output is a
        // convex combination of values in [-1, 1].
        const atol = (headDim + ctx / 64 + 70) * 2 ** -24 * 8;
        expectClose(
          await readF32(c, out, q.length),
          attentionRef(q, kSeen, vSeen, positions, heads, kvHeads, headDim, scale),
          {
            atol,
          },
        );
      });
    }

    test('soft-capped scores (Gemma 2: cap · tanh(score / cap)), head_dim 256, ctx 129', async () => {
      const c = await testGpu();
      const [ctx, heads, kvHeads, headDim, cap] = [129, 4, 2, 256, 5];
      const { k, v, kCache, vCache, blockTable } = fillCache(c, ctx, kvHeads, headDim, 77);
      const positions = [ctx - 1, 0, 64, 100];
      const q = randomF32(positions.length * heads * headDim, 80, 3);
      const out = upload(c, new Float32Array(q.length));
      const scale = 1 / Math.sqrt(headDim);
      run(c, (b) =>
        kernel.make(b, {
          rowInfo: upload(c, plainRowInfo(positions)),
          blockTable,
          q: upload(c, q),
          kCache,
          vCache,
          out,
          m: positions.length,
          heads,
          kvHeads,
          headDim,
          scale,
          softcap: cap,
        }),
      );
      const want = attentionRef(q, k, v, positions, heads, kvHeads, headDim, scale, 0, cap);
      const plain = attentionRef(q, k, v, positions, heads, kvHeads, headDim, scale);
      let d = 0;
      want.forEach((x, i) => (d = Math.max(d, Math.abs(x - (plain[i] as number)))));
      // The cap matters here (scores up to ~20 squeezed into ±5)...
      expect(d).toBeGreaterThan(1e-2);
      // ...and the kernel follows it: the bound above, plus the cap's tanh from exp (a few ulps of 5).
      const atol = (headDim + ctx / 64 + 70) * 2 ** -24 * 8 + 8 * 5 * 2 ** -24;
      expectClose(await readF32(c, out, q.length), want, { atol });
    });

    // Token-tree rows (speculative verification, kernels/row-info.ts): node i of an n-node tree after
    // `committed` keys sits at slot committed + i, position committed - 1 + its depth, and sees the
    // committed keys and its ancestors only; also under a window that cuts through a tree path.
    for (const [committed, nodes, window] of [
      [1, 7, 0],
      [129, 32, 0],
      [7, 32, 4],
      [4097, 5, 0],
    ] as const) {
      test(`token tree of ${nodes} nodes after ${committed} keys, window ${window}`, async () => {
        const c = await testGpu();
        const [heads, kvHeads, headDim] = [4, 2, 64];
        const ctx = committed + nodes;
        const { k, v, kCache, vCache, blockTable } = fillCache(c, ctx, kvHeads, headDim, ctx);
        const t = tokenTree(nodes, ctx);
        const positions = [committed - 1, ...t.depth.map((d) => committed - 1 + d)];
        const tree = [undefined, ...t.mask.map((mask) => ({ base: committed, mask }))];
        const rowInfo = new Uint32Array(ROW_INFO_WORDS * positions.length);
        positions.forEach((position, i) => writeRowInfo(rowInfo, i, position, 0, tree[i]));
        const q = randomF32(positions.length * heads * headDim, ctx + 3, 3);
        const out = upload(c, new Float32Array(q.length));
        const scale = 1 / Math.sqrt(headDim);
        run(c, (b) =>
          kernel.make(b, {
            rowInfo: upload(c, rowInfo),
            blockTable,
            q: upload(c, q),
            kCache,
            vCache,
            out,
            m: positions.length,
            heads,
            kvHeads,
            headDim,
            scale,
            window,
          }),
        );
        const want = attentionRef(q, k, v, positions, heads, kvHeads, headDim, scale, window, 0, tree);
        // The bound of the first test of this file (f32 scores, exp, a per-tile rescale).
        const atol = (headDim + ctx / 64 + 70) * 2 ** -24 * 8;
        expectClose(await readF32(c, out, q.length), want, { atol });
      });
    }

    test('large logits (q scaled by 100) stay finite and exact', async () => {
      const c = await testGpu();
      const [ctx, heads, kvHeads, headDim] = [70, 2, 1, 32];
      const kvDim = kvHeads * headDim;
      const k = randomF32(ctx * kvDim, 9);
      const v = randomF32(ctx * kvDim, 10);
      const kCache = upload(c, new Float32Array(5 * BLOCK * kvDim));
      const vCache = upload(c, new Float32Array(5 * BLOCK * kvDim));
      const table = [4, 0, 3, 1, 2];
      const slots = Array.from(
        { length: ctx },
        (_, p) => (table[Math.floor(p / BLOCK)] as number) * BLOCK + (p % BLOCK),
      );
      run(c, (b) =>
        kvWrite(b, {
          slots: upload(c, Uint32Array.from(slots)),
          k: upload(c, k),
          v: upload(c, v),
          kCache,
          vCache,
          m: ctx,
          kvHeads,
          headDim,
        }),
      );
      const q = randomF32(heads * headDim, 11, 100);
      const out = upload(c, new Float32Array(q.length));
      run(c, (b) =>
        kernel.make(b, {
          rowInfo: upload(c, plainRowInfo([ctx - 1])),
          blockTable: upload(c, Uint32Array.from(table)),
          q: upload(c, q),
          kCache,
          vCache,
          out,
          m: 1,
          heads,
          kvHeads,
          headDim,
          scale: 1 / Math.sqrt(headDim),
        }),
      );
      // Scores of magnitude ~100 lose absolute precision ~100·headDim·2⁻²⁴ before exp, which
      // multiplies the weights by e^(±that): relative error ~2e-4 on values in [-1, 1].
      expectClose(
        await readF32(c, out, q.length),
        attentionRef(q, k, v, [ctx - 1], heads, kvHeads, headDim, 1 / Math.sqrt(headDim)),
        {
          atol: 5e-4,
        },
      );
    });
  });

  describe(`${kernel.name} with a sliding window (prefill rows)`, () => {
    // Windows of 1, 7 (inside a block), 16 (a block), 100 and 512 (unaligned, several 64-key tiles)
    // over contexts 1 to 4097; rows at every kind of position (window start at 0, mid-block, on a
    // block edge). Blocks wholly before the earliest row's window are filled with NaN: a kernel that
    // read one would return NaN (checked: full attention over the same cache does).
    const cases = [
      { ctx: 1, heads: 2, kvHeads: 1, headDim: 8, window: 1 },
      { ctx: 129, heads: 4, kvHeads: 2, headDim: 64, window: 7 },
      { ctx: 129, heads: 2, kvHeads: 2, headDim: 256, window: 16 },
      { ctx: 300, heads: 4, kvHeads: 1, headDim: 32, window: 100 },
      { ctx: 4097, heads: 2, kvHeads: 1, headDim: 16, window: 512 },
    ];
    const runs = (['f32', 'f16'] as const).flatMap((kvDtype) => cases.map((x) => ({ ...x, kvDtype })));
    for (const { ctx, heads, kvHeads, headDim, window, kvDtype } of runs) {
      test(`${kvDtype} KV window=${window} ctx=${ctx} heads=${heads}/${kvHeads} headDim=${headDim}`, async () => {
        const c = await testGpu();
        if (!supported(c, kvDtype)) return;
        const kvDim = kvHeads * headDim;
        const { k, v, kCache, vCache, table, blockTable } = fillCache(
          c,
          ctx,
          kvHeads,
          headDim,
          ctx + window,
          kvDtype,
        );
        const positions = [
          ...new Set([ctx - 1, Math.max(0, ctx - 2), ctx - 1 - Math.floor(Math.min(window, ctx) / 2)]),
        ];
        const firstKey = Math.min(...positions.map((p) => Math.max(0, p - window + 1)));
        const poisoned = Math.floor(firstKey / BLOCK);
        const blockBytes = kvDim * BLOCK * (kvDtype === 'f16' ? 2 : 4);
        for (let blk = 0; blk < poisoned; blk++) {
          const at = (table[blk] as number) * blockBytes;
          for (const buf of [kCache, vCache])
            c.device.queue.writeBuffer(buf, at, new Uint8Array(blockBytes).fill(0xff));
        }
        const q = randomF32(positions.length * heads * headDim, ctx + 5, 3);
        const scale = 1 / Math.sqrt(headDim);
        const attend = async (w: number): Promise<Float32Array> => {
          const out = upload(c, new Float32Array(q.length));
          run(c, (b) =>
            kernel.make(b, {
              rowInfo: upload(c, plainRowInfo(positions)),
              blockTable,
              q: upload(c, q),
              kCache,
              vCache,
              out,
              m: positions.length,
              heads,
              kvHeads,
              headDim,
              scale,
              kvDtype,
              window: w,
            }),
          );
          return readF32(c, out, q.length);
        };
        // As the unwindowed cases above: f32 scores and exp, a rescale per 64-key tile, over at most
        // `window` keys.
        const atol = (headDim + window / 64 + 70) * 2 ** -24 * 8;
        const want = attentionRef(q, k, v, positions, heads, kvHeads, headDim, scale, window);
        expectClose(await attend(window), want, { atol });
        if (poisoned > 0) expect((await attend(0)).some(Number.isNaN)).toBe(true);
      });
    }
  });
}

describe('attention_prefill: tiles where sequences meet (segments)', () => {
  // Two sequences over one cache: A's blocks in table order, B's in the reverse order (other K/V
  // at the same positions). Rows: A 0..6, B 90..127 (a prefill chunk), A 127, B 50 (decode rows
  // batched in): 47 rows in three 16-row tiles, the first and last holding 2 and 3 segments.
  // head_dim 64 (one q chunk) and 256 (two), with and without a 40-token window.
  for (const [headDim, window, kvDtype] of [
    [64, 0, 'f32'],
    [256, 0, 'f16'],
    [64, 40, 'f16'],
  ] as const) {
    test(`headDim ${headDim} window ${window} ${kvDtype} KV`, async () => {
      const c = await testGpu();
      if (!supported(c, kvDtype)) return;
      const [ctx, heads, kvHeads] = [128, 4, 2];
      const kvDim = kvHeads * headDim;
      const blocks = ctx / BLOCK;
      const a = fillCache(c, ctx, kvHeads, headDim, 31 + headDim + window, kvDtype);
      const reversed = (x: Float32Array) => {
        const y = new Float32Array(x.length);
        for (let t = 0; t < ctx; t++) {
          const from = (blocks - 1 - Math.floor(t / BLOCK)) * BLOCK + (t % BLOCK);
          y.set(x.subarray(from * kvDim, (from + 1) * kvDim), t * kvDim);
        }
        return y;
      };
      const seqs = [
        { k: a.k, v: a.v, offset: 0 },
        { k: reversed(a.k), v: reversed(a.v), offset: blocks },
      ];
      const table = [...a.table, ...[...a.table].reverse()];
      const rows = [
        ...Array.from({ length: 7 }, (_, p) => ({ seq: 0, p })),
        ...Array.from({ length: 38 }, (_, i) => ({ seq: 1, p: 90 + i })),
        { seq: 0, p: 127 },
        { seq: 1, p: 50 },
      ];
      const rowInfo = new Uint32Array(ROW_INFO_WORDS * rows.length);
      rows.forEach((r, i) => writeRowInfo(rowInfo, i, r.p, (seqs[r.seq] as (typeof seqs)[0]).offset));
      const qDim = heads * headDim;
      const q = randomF32(rows.length * qDim, headDim + window, 3);
      const scale = 1 / Math.sqrt(headDim);
      const out = upload(c, new Float32Array(q.length));
      run(c, (b) =>
        attentionPrefill(b, {
          rowInfo: upload(c, rowInfo),
          blockTable: upload(c, Uint32Array.from(table)),
          q: upload(c, q),
          kCache: a.kCache,
          vCache: a.vCache,
          out,
          m: rows.length,
          heads,
          kvHeads,
          headDim,
          scale,
          window,
          kvDtype,
        }),
      );
      const want = new Float64Array(q.length);
      rows.forEach((r, i) => {
        const s = seqs[r.seq] as (typeof seqs)[0];
        const qi = q.subarray(i * qDim, (i + 1) * qDim);
        want.set(attentionRef(qi, s.k, s.v, [r.p], heads, kvHeads, headDim, scale, window), i * qDim);
      });
      // The bound of the first tests of this file.
      const atol = (headDim + ctx / 64 + 70) * 2 ** -24 * 8;
      expectClose(await readF32(c, out, q.length), want, { atol });
    });
  }
});

describe('rope (rotate-half, float64 cos/sin table)', () => {
  const scalings = [
    { type: 'none' } as const,
    { type: 'linear', factor: 4 } as const,
    {
      type: 'llama3',
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 64,
    } as const,
  ];
  for (const scaling of scalings) {
    for (const headDim of [2, 8, 128]) {
      test(`${scaling.type} headDim=${headDim} at positions 0, 1, 7, 129, 4097, 100000`, async () => {
        const c = await testGpu();
        const heads = 3;
        const positions = [0, 1, 7, 129, 4097, 100000];
        const maxPos = 100001;
        const inv = ropeInvFreq(headDim, 10000, scaling);
        const x = randomF32(positions.length * heads * headDim, headDim);
        const buf = upload(c, x);
        run(c, (b) =>
          rope(b, {
            rowInfo: upload(c, plainRowInfo(positions)),
            table: upload(c, ropeTable(inv, maxPos)),
            x: buf,
            m: positions.length,
            heads,
            headDim,
          }),
        );
        const want = ropeRef(Float64Array.from(x), positions, heads, headDim, inv);
        // cos/sin are f64 rounded to f32 (½ ulp each); two products and one sum: ≤ 4 ulp of 1.
        expectClose(await readF32(c, buf, x.length), want, { atol: 4 * 2 ** -24 * 2 });
      });
    }
  }
});

describe('rope_kv_write (RoPE on q and k + the paged KV write, fused after the qkv projection)', () => {
  // Rows at awkward positions (a prefill chunk crossing block boundaries plus a far one), GQA, and
  // head dims 2, 8, 128, 256; the cache blocks follow a shuffled table; f32 and f16 caches.
  for (const [heads, kvHeads, headDim, kvDtype] of [
    [1, 1, 2, 'f32'],
    [4, 2, 8, 'f32'],
    [3, 1, 128, 'f32'],
    [1, 1, 2, 'f16'],
    [4, 2, 8, 'f16'],
    [3, 1, 128, 'f16'],
    [2, 1, 256, 'f16'],
  ] as const) {
    test(`${kvDtype} KV heads=${heads}/${kvHeads} headDim=${headDim}`, async () => {
      const c = await testGpu();
      if (!supported(c, kvDtype)) return;
      const positions = [0, 1, 7, 15, 16, 17, 129, 4097];
      const m = positions.length;
      const qDim = heads * headDim;
      const kvDim = kvHeads * headDim;
      const qkv = randomF32(m * (qDim + 2 * kvDim), headDim + heads, 2);
      const blocks = Math.ceil((4097 + 1) / BLOCK);
      const table = shuffledBlocks(blocks, headDim);
      const slots = positions.map((p) => (table[Math.floor(p / BLOCK)] as number) * BLOCK + (p % BLOCK));
      const inv = ropeInvFreq(headDim, 10000, { type: 'none' });
      const kCache = kvBuffer(c, blocks * kvDim * BLOCK, kvDtype);
      const vCache = kvBuffer(c, blocks * kvDim * BLOCK, kvDtype);
      const q = upload(c, new Float32Array(m * qDim));
      run(c, (b) => {
        const d = ropeKvWrite(b, {
          rowInfo: upload(c, plainRowInfo(positions)),
          slots: upload(c, Uint32Array.from(slots)),
          table: upload(c, ropeTable(inv, 4098)),
          qkv: upload(c, qkv),
          q,
          kCache,
          vCache,
          m,
          heads,
          kvHeads,
          headDim,
          kvDtype,
        });
        expect(d.label).toBe(kvDtype === 'f16' ? 'rope_kv_write_kvf16' : 'rope_kv_write');
        return d;
      });
      const part = (from: number, width: number) =>
        Float64Array.from(
          positions.flatMap((_, r) =>
            Array.from(qkv.subarray(r * (qDim + 2 * kvDim) + from, r * (qDim + 2 * kvDim) + from + width)),
          ),
        );
      const wantQ = ropeRef(part(0, qDim), positions, heads, headDim, inv);
      const wantK = ropeRef(part(qDim, kvDim), positions, kvHeads, headDim, inv);
      const wantV = part(qDim + kvDim, kvDim);
      // As rope: f64 cos/sin rounded to f32, two products and a sum (≤ 4 ulp of 1); v is copied.
      const tol = { atol: 4 * 2 ** -24 * 2 };
      expectClose(await readF32(c, q, m * qDim), wantQ, tol);
      const kc = await readKv(c, kCache, blocks * kvDim * BLOCK, kvDtype);
      const vc = await readKv(c, vCache, blocks * kvDim * BLOCK, kvDtype);
      const gotK = gather(kc, slots, kvHeads, headDim);
      const gotV = gather(vc, slots, kvHeads, headDim);
      // An f16 cache then rounds the f32 result once to nearest: at most half an f16 ulp, 2⁻¹¹
      // relative (normal values) or 2⁻²⁵ absolute (subnormal ones), on top of the f32 error.
      expectClose(gotK, wantK, kvDtype === 'f16' ? { atol: tol.atol + 2 ** -25, rtol: 2 ** -11 } : tol);
      if (kvDtype === 'f16') {
        // Never more than that: K is within one f16 step of the f16 rounding of the f64 RoPE.
        expectClose(gotK, kvRounded(Float32Array.from(wantK), 'f16'), { atol: 2 ** -24, rtol: 2 ** -10 });
      }
      // v is copied, rounded as kv_write rounds it.
      expect(gotV).toEqual([...kvRounded(Float32Array.from(wantV), kvDtype)]);
    });
  }
});

describe('rope_kv_write with partial rotation, NoPE layers and LongRoPE', () => {
  // Phi-3's partial_rotary_factor (rotary dims 6 of 8, 96 of 128: the tail is copied), SmolLM3's
  // NoPE layers (rotary dim 0: q and k copied), and LongRoPE, whose short/long factors switch at
  // original_max_position_embeddings (here 16, crossed by the rows) with the attention factor on
  // cos and sin. Awkward positions around the switch and a far one.
  const longrope = (half: number) =>
    ({
      type: 'longrope',
      shortFactor: Array.from({ length: half }, (_, i) => 1 + i * 0.37),
      longFactor: Array.from({ length: half }, (_, i) => 2 + i * 1.9),
      originalMaxPositionEmbeddings: 16,
      attentionFactor: 1.19,
    }) as const;
  const cases = [
    { name: 'rotary 6 of 8', headDim: 8, rope: ropeAngles(6, 10000, { type: 'none' }) },
    { name: 'rotary 96 of 128', headDim: 128, rope: ropeAngles(96, 10000, { type: 'none' }) },
    { name: 'NoPE', headDim: 8, rope: NO_ROPE },
    { name: 'LongRoPE, rotary 12 of 16', headDim: 16, rope: ropeAngles(12, 10000, longrope(6)) },
    { name: 'LongRoPE, full', headDim: 8, rope: ropeAngles(8, 500, longrope(4)) },
  ];
  for (const { name, headDim, rope: angles } of cases) {
    test(`${name} (headDim ${headDim})`, async () => {
      const c = await testGpu();
      const heads = 3;
      const kvHeads = 1;
      const positions = [0, 1, 7, 15, 16, 17, 129];
      const m = positions.length;
      const qDim = heads * headDim;
      const kvDim = kvHeads * headDim;
      const width = qDim + 2 * kvDim;
      const qkv = randomF32(m * width, headDim + 7, 2);
      const blocks = Math.ceil(130 / BLOCK);
      const table = shuffledBlocks(blocks, headDim);
      const slots = positions.map((p) => (table[Math.floor(p / BLOCK)] as number) * BLOCK + (p % BLOCK));
      const kCache = kvBuffer(c, blocks * kvDim * BLOCK, 'f32');
      const vCache = kvBuffer(c, blocks * kvDim * BLOCK, 'f32');
      const q = upload(c, new Float32Array(m * qDim));
      run(c, (b) =>
        ropeKvWrite(b, {
          rowInfo: upload(c, plainRowInfo(positions)),
          slots: upload(c, Uint32Array.from(slots)),
          table: upload(c, ropeTable(angles, 130)),
          qkv: upload(c, qkv),
          q,
          kCache,
          vCache,
          m,
          heads,
          kvHeads,
          headDim,
          rotaryDim: angles.rotaryDim,
        }),
      );
      const part = (from: number, n: number) =>
        Float64Array.from(
          positions.flatMap((_, r) => Array.from(qkv.subarray(r * width + from, r * width + from + n))),
        );
      const wantQ = ropeRef(part(0, qDim), positions, heads, headDim, angles);
      const wantK = ropeRef(part(qDim, kvDim), positions, kvHeads, headDim, angles);
      // As above, scaled by the attention factor (≤ 1.19): ≤ 4 ulp of 1.19 · |x| ≤ 2.
      const tol = { atol: 4 * 2 ** -24 * 2 * 1.19 };
      expectClose(await readF32(c, q, m * qDim), wantQ, tol);
      const kc = await readKv(c, kCache, blocks * kvDim * BLOCK, 'f32');
      expectClose(gather(kc, slots, kvHeads, headDim), wantK, tol);
      // The unrotated tail is the input, bit for bit.
      const gotQ = await readF32(c, q, m * qDim);
      for (let r = 0; r < m; r++)
        for (let e = angles.rotaryDim; e < headDim; e++) expect(gotQ[r * qDim + e]).toBe(qkv[r * width + e]);
    });
  }
});
