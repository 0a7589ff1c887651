import { plainRowInfo, ROW_INFO_WORDS, writeRowInfo } from '../../src/kernels/row-info.js';
import { tokenTree } from '../helpers/tree.js';
import { describe, expect, test } from 'vitest';
import type { GpuContext } from '../../src/gpu/device.js';
import {
  AttentionDecodeScratch,
  attentionDecode,
  attentionDecodeLabels,
  ATTENTION_DECODE_LABELS,
  decodeSplits,
  pickDecodeChunk,
  supportsAttentionDecode,
  type AttentionDecodeVariant,
} from '../../src/kernels/attention-decode.js';
import { attentionRef } from '../../src/kernels/attention.ref.js';
import { DispatchBuilder, runDispatches, type Dispatch } from '../../src/gpu/dispatch.js';
import { kvWrite } from '../../bench/baselines/kv-write.js';
import { fillCache, type Cache } from '../helpers/paged-kv.js';
import { expectClose, randomF32, readF32, readU32, run, testGpu, upload } from '../helpers/gpu.js';

const BLOCK = 16;

/**
 * Fills the physical blocks of logical blocks `from..to-1` with NaN (all-ones bytes, NaN in f32
 * and f16) in K and V: a kernel that reads any of them, even with weight 0, returns NaN. This is
 * what a sliding layer's released blocks look like once another sequence reuses them.
 */
function poisonBlocks(c: GpuContext, kv: Cache, from: number, to: number): void {
  const bytes = kv.kvHeads * BLOCK * kv.headDim * (kv.dtype === 'f16' ? 2 : 4);
  const nan = new Uint8Array(bytes).fill(0xff);
  for (let blk = from; blk < to; blk++) {
    const at = (kv.table[blk] as number) * bytes;
    for (const buf of [kv.kCache, kv.vCache]) c.device.queue.writeBuffer(buf, at, nan);
  }
}

interface Call {
  heads: number;
  positions: number[];
  q: Float32Array;
  variant: AttentionDecodeVariant;
  chunk: number;
  maxContext: number;
  phi?: number;
  /** Sliding window (0 or absent: full attention). */
  window?: number;
  /** Gemma 2's attention-logit soft-cap (0 or absent: none). */
  softcap?: number;
  /** Token-tree rows (row-info.ts): row r sees slots < base and the mask's slots from base. */
  tree?: ({ base: number; mask: number } | undefined)[];
}

function rowInfoOf(call: Call): Uint32Array {
  const out = new Uint32Array(ROW_INFO_WORDS * call.positions.length);
  call.positions.forEach((position, i) => writeRowInfo(out, i, position, 0, call.tree?.[i]));
  return out;
}

/**
 * Records one attentionDecode call and runs its dispatches in groups cut at `cuts` (indices into
 * the dispatch list), returning the output and flags read back after each group.
 */
async function decode(
  c: GpuContext,
  kv: Cache,
  call: Call,
  cuts: number[] = [],
): Promise<{ outs: Float32Array[]; flags: Uint32Array[]; dispatches: number; labels: string[] }> {
  const m = call.positions.length;
  const scratch = new AttentionDecodeScratch(c, {
    rows: m,
    heads: call.heads,
    headDim: kv.headDim,
    maxContext: call.maxContext,
    chunk: call.chunk,
  });
  const out = upload(c, new Float32Array(call.q.length));
  const b = new DispatchBuilder(c);
  const ds: Dispatch[] = attentionDecode(b, {
    rowInfo: upload(c, rowInfoOf(call)),
    blockTable: kv.blockTable,
    q: upload(c, call.q),
    kCache: kv.kCache,
    vCache: kv.vCache,
    out,
    m,
    heads: call.heads,
    kvHeads: kv.kvHeads,
    headDim: kv.headDim,
    scale: 1 / Math.sqrt(kv.headDim),
    maxContext: call.maxContext,
    chunk: call.chunk,
    variant: call.variant,
    ...(call.phi === undefined ? {} : { phi: call.phi }),
    ...(call.window === undefined ? {} : { window: call.window }),
    ...(call.softcap === undefined ? {} : { softcap: call.softcap }),
    scratch,
    kvDtype: kv.dtype,
  });
  const outs: Float32Array[] = [];
  const flags: Uint32Array[] = [];
  let from = 0;
  for (const to of [...cuts, ds.length]) {
    runDispatches(c, ds.slice(from, to));
    outs.push(await readF32(c, out, call.q.length));
    flags.push(await readU32(c, scratch.flags, m));
    from = to;
  }
  b.destroy();
  scratch.destroy();
  return { outs, flags, dispatches: ds.length, labels: ds.map((d) => d.label) };
}

function reference(kv: Cache, call: Call): Float64Array {
  return attentionRef(
    call.q,
    kv.k,
    kv.v,
    call.positions,
    call.heads,
    kv.kvHeads,
    kv.headDim,
    1 / Math.sqrt(kv.headDim),
    call.window ?? 0,
    call.softcap ?? 0,
    call.tree,
  );
}

/**
 * Tolerance for q in [-3, 3), k in [-2, 2), v in [-1, 1) (scores |x| ≲ 20, outputs O(0.1)):
 * 2e-5 absolute. f32 carries 6e-8 relative; the float64 reference carries none. A score is a dot
 * of headDim ≤ 128 products summing to ≲ 200 in magnitude, so its rounding error is ~√headDim ·
 * 6e-8 · 200 · scale ≈ 1e-6 absolute, which exp turns into the same relative error on its weight;
 * the sums over up to 4097 tokens and 65 splits add ~√n · 6e-8 ≤ 4e-6 relative. The output is a
 * convex combination of values in [-1, 1], so those relative errors bound its absolute error:
 * ~5e-6 expected, 2e-5 leaves a 4x margin for exp's and the division's ulps (observed: ≤ 6e-7).
 */
const ATOL = 2e-5;

describe('attention_decode (split-K) vs attentionRef', () => {
  // ctx 1..4097 with ragged blocks, GQA 1/4/8 (and 3, 7: a zero-padded head block), head dims
  // 16/64/128, chunks from one block to several tiles (1536 tokens of a 4-head group are 3 tiles
  // of 512), maxContext past the context so some splits lie wholly beyond the end.
  const cases = [
    { ctx: 1, heads: 4, kvHeads: 4, headDim: 64, chunk: 64, maxContext: 200 },
    { ctx: 7, heads: 8, kvHeads: 2, headDim: 128, chunk: 16, maxContext: 64 },
    { ctx: 16, heads: 4, kvHeads: 1, headDim: 16, chunk: 16, maxContext: 48 },
    { ctx: 17, heads: 2, kvHeads: 2, headDim: 128, chunk: 16, maxContext: 17 },
    { ctx: 17, heads: 6, kvHeads: 2, headDim: 128, chunk: 64, maxContext: 100 },
    { ctx: 129, heads: 8, kvHeads: 1, headDim: 64, chunk: 48, maxContext: 300 },
    { ctx: 129, heads: 4, kvHeads: 4, headDim: 16, chunk: 128, maxContext: 129 },
    { ctx: 300, heads: 14, kvHeads: 2, headDim: 64, chunk: 128, maxContext: 512 },
    { ctx: 4097, heads: 4, kvHeads: 1, headDim: 64, chunk: 1536, maxContext: 4200 },
    { ctx: 4097, heads: 2, kvHeads: 2, headDim: 128, chunk: 256, maxContext: 4400 },
  ];
  for (const { ctx, heads, kvHeads, headDim, chunk, maxContext } of cases) {
    test(`ctx=${ctx} heads=${heads}/${kvHeads} headDim=${headDim} chunk=${chunk} max=${maxContext}`, async () => {
      const c = await testGpu();
      const kv = fillCache(c, ctx, kvHeads, headDim, ctx + headDim);
      // Decode rows: the last position, and one halfway whose later splits are empty.
      const positions = [...new Set([ctx - 1, Math.floor(ctx / 2)])];
      const q = randomF32(positions.length * heads * headDim, ctx + 7, 3);
      const want = reference(kv, { heads, positions, q, variant: 'two_pass', chunk, maxContext });
      const atol = ATOL;
      const exact = await decode(c, kv, { heads, positions, q, variant: 'two_pass', chunk, maxContext });
      expectClose(exact.outs[0] as Float32Array, want, { atol });
      // phi = 0 sits inside these scores' range (|x| ≲ 20): no flag, and the fallback leaves the
      // async result untouched (bit for bit).
      const asy = await decode(
        c,
        kv,
        { heads, positions, q, variant: 'async_softmax', chunk, maxContext, phi: 0 },
        [2],
      );
      expect(asy.dispatches).toBe(3);
      expect([...(asy.flags[0] as Uint32Array)]).toEqual(positions.map(() => 0));
      expectClose(asy.outs[0] as Float32Array, want, { atol });
      expect(asy.outs[1]).toEqual(asy.outs[0]);
      // phi = -100: every score is over phi + 60, every row flagged and recomputed by the fallback
      // (one workgroup per row: every KV head, the whole context), which clears the flags.
      const fb = await decode(
        c,
        kv,
        { heads, positions, q, variant: 'async_softmax', chunk, maxContext, phi: -100 },
        [1],
      );
      expect([...(fb.flags[0] as Uint32Array)]).toEqual(positions.map(() => 1));
      expect([...(fb.flags[1] as Uint32Array)]).toEqual(positions.map(() => 0));
      expectClose(fb.outs[1] as Float32Array, want, { atol });
    });
  }

  // Sliding windows shorter than the context: windows of 1, 7 (inside one block), 16 (exactly a
  // block), 100 and 512 (several blocks, not aligned), one longer than the context (no effect);
  // rows whose window starts mid-block, on a block edge or at 0. Every block wholly before the
  // earliest row's window block is poisoned with NaN, so a kernel that read it would fail (checked:
  // full attention over the same cache does).
  const windowed = [
    { ctx: 7, heads: 4, kvHeads: 4, headDim: 64, chunk: 64, maxContext: 200, window: 1 },
    { ctx: 129, heads: 8, kvHeads: 2, headDim: 128, chunk: 16, maxContext: 129, window: 7 },
    { ctx: 129, heads: 6, kvHeads: 2, headDim: 64, chunk: 48, maxContext: 300, window: 16 },
    { ctx: 300, heads: 14, kvHeads: 2, headDim: 64, chunk: 64, maxContext: 512, window: 100 },
    { ctx: 4097, heads: 4, kvHeads: 1, headDim: 64, chunk: 256, maxContext: 4200, window: 512 },
    { ctx: 50, heads: 2, kvHeads: 1, headDim: 16, chunk: 16, maxContext: 64, window: 4096 },
  ];
  for (const { ctx, heads, kvHeads, headDim, chunk, maxContext, window } of windowed) {
    test(`window=${window} ctx=${ctx} heads=${heads}/${kvHeads} headDim=${headDim} chunk=${chunk}`, async () => {
      const c = await testGpu();
      for (const dtype of ['f32', 'f16'] as const) {
        if (dtype === 'f16' && !c.adapter.shaderF16) continue;
        const kv = fillCache(c, ctx, kvHeads, headDim, ctx + window, dtype);
        const positions = [...new Set([ctx - 1, ctx - 1 - Math.floor(Math.min(window, ctx) / 3)])];
        const firstKey = Math.min(...positions.map((p) => Math.max(0, p - window + 1)));
        const poisoned = Math.floor(firstKey / BLOCK);
        poisonBlocks(c, kv, 0, poisoned);
        const q = randomF32(positions.length * heads * headDim, ctx + 11, 3);
        const base = { heads, positions, q, chunk, maxContext, window };
        const want = reference(kv, { ...base, variant: 'two_pass' });
        const exact = await decode(c, kv, { ...base, variant: 'two_pass' });
        expectClose(exact.outs[0] as Float32Array, want, { atol: ATOL });
        const asy = await decode(c, kv, { ...base, variant: 'async_softmax', phi: 0 }, [2]);
        expect([...(asy.flags[0] as Uint32Array)]).toEqual(positions.map(() => 0));
        expectClose(asy.outs[0] as Float32Array, want, { atol: ATOL });
        // The exact fallback (a flagged row) honours the window too.
        const fb = await decode(c, kv, { ...base, variant: 'async_softmax', phi: -100 });
        expectClose(fb.outs[0] as Float32Array, want, { atol: ATOL });
        if (poisoned > 0) {
          const full = await decode(c, kv, { ...base, window: 0, variant: 'two_pass' });
          expect((full.outs[0] as Float32Array).some(Number.isNaN)).toBe(true);
        }
      }
    });
  }

  test('a window shorter than the context changes the result (the reference without it differs)', async () => {
    const c = await testGpu();
    const kv = fillCache(c, 300, 1, 64, 5);
    const q = randomF32(4 * 64, 6, 3);
    const call: Call = { heads: 4, positions: [299], q, variant: 'two_pass', chunk: 64, maxContext: 300 };
    const r = await decode(c, kv, { ...call, window: 100 });
    const full = reference(kv, call);
    const diff = Math.max(...(r.outs[0] as Float32Array).map((x, i) => Math.abs(x - (full[i] as number))));
    expect(diff).toBeGreaterThan(100 * ATOL);
  });

  // Gemma 2's soft-capping: cap 5 squeezes these scores (|x| ≲ 20) hard, so a kernel ignoring it
  // is far off; head_dim 256 (Gemma's) and 256 / 2 with 4 heads per KV head. Same tolerance: the
  // cap is 1-Lipschitz and its tanh (from exp) adds a few ulps of the cap.
  for (const { ctx, heads, kvHeads, headDim, chunk } of [
    { ctx: 7, heads: 2, kvHeads: 1, headDim: 256, chunk: 16 },
    { ctx: 129, heads: 4, kvHeads: 1, headDim: 64, chunk: 48 },
    { ctx: 4097, heads: 8, kvHeads: 4, headDim: 256, chunk: 512 },
  ]) {
    test(`soft-capped scores (cap 5) ctx=${ctx} heads=${heads}/${kvHeads} headDim=${headDim}`, async () => {
      const c = await testGpu();
      const kv = fillCache(c, ctx, kvHeads, headDim, ctx + 3);
      const positions = [...new Set([ctx - 1, Math.floor(ctx / 2)])];
      const q = randomF32(positions.length * heads * headDim, ctx + 9, 3);
      const call = { heads, positions, q, chunk, maxContext: ctx + 20, softcap: 5 };
      const want = reference(kv, { ...call, variant: 'two_pass' });
      const uncapped = reference(kv, { ...call, variant: 'two_pass', softcap: 0 });
      let d = 0;
      want.forEach((v, i) => (d = Math.max(d, Math.abs(v - (uncapped[i] as number)))));
      expect(d).toBeGreaterThan(100 * ATOL);
      const exact = await decode(c, kv, { ...call, variant: 'two_pass' });
      expectClose(exact.outs[0] as Float32Array, want, { atol: ATOL });
      const asy = await decode(c, kv, { ...call, variant: 'async_softmax', phi: 0 }, [2]);
      expect([...(asy.flags[0] as Uint32Array)]).toEqual(positions.map(() => 0));
      expectClose(asy.outs[0] as Float32Array, want, { atol: ATOL });
    });
  }

  test('the result does not depend on the number of splits', async () => {
    const c = await testGpu();
    const [ctx, heads, kvHeads, headDim] = [4097, 4, 1, 64];
    const kv = fillCache(c, ctx, kvHeads, headDim, 31);
    const positions = [ctx - 1, 1000];
    const q = randomF32(positions.length * heads * headDim, 32, 3);
    for (const variant of ['two_pass', 'async_softmax'] as const) {
      const results: Float32Array[] = [];
      // One split (several tiles), 17 splits, 65 splits.
      for (const chunk of [4112, 256, 64]) {
        const r = await decode(c, kv, { heads, positions, q, variant, chunk, maxContext: ctx, phi: 0 });
        results.push(r.outs[0] as Float32Array);
      }
      const one = results[0] as Float32Array;
      const scale = Math.max(...one.map(Math.abs));
      for (const r of results.slice(1)) expectClose(r, one, { atol: 1e-5 * scale, rtol: 1e-5 });
    }
  });

  test('async softmax: phi far below the scores overflows, is flagged and recomputed', async () => {
    const c = await testGpu();
    const [ctx, heads, kvHeads, headDim] = [300, 4, 2, 64];
    const kv = fillCache(c, ctx, kvHeads, headDim, 41);
    const positions = [ctx - 1, 20, 150];
    const q = randomF32(positions.length * heads * headDim, 42, 3);
    // x - phi ≈ 100 > 60 for every score of every row.
    const call: Call = {
      heads,
      positions,
      q,
      variant: 'async_softmax',
      chunk: 64,
      maxContext: 320,
      phi: -100,
    };
    const r = await decode(c, kv, call, [1, 2]);
    expect([...(r.flags[0] as Uint32Array)]).toEqual([1, 1, 1]);
    expect([...(r.flags[1] as Uint32Array)]).toEqual([1, 1, 1]);
    // The last dispatch recomputed every row exactly and cleared the flags for the next call.
    expect([...(r.flags[2] as Uint32Array)]).toEqual([0, 0, 0]);
    expectClose(r.outs[2] as Float32Array, reference(kv, call), { atol: ATOL });
  });

  test('async softmax: phi far above the scores underflows, is flagged by the merge and recomputed', async () => {
    const c = await testGpu();
    const [ctx, heads, kvHeads, headDim] = [300, 4, 2, 64];
    const kv = fillCache(c, ctx, kvHeads, headDim, 51);
    const positions = [ctx - 1, 5];
    const q = randomF32(positions.length * heads * headDim, 52, 3);
    // x - phi ≈ -200: e^-200 is 0 in f32, so every partial sum is 0; pass 1 flags nothing.
    const call: Call = {
      heads,
      positions,
      q,
      variant: 'async_softmax',
      chunk: 128,
      maxContext: 300,
      phi: 200,
    };
    const r = await decode(c, kv, call, [1, 2]);
    expect([...(r.flags[0] as Uint32Array)]).toEqual([0, 0]);
    expect([...(r.flags[1] as Uint32Array)]).toEqual([1, 1]);
    expect([...(r.flags[2] as Uint32Array)]).toEqual([0, 0]);
    expectClose(r.outs[2] as Float32Array, reference(kv, call), { atol: ATOL });
  });

  test('async softmax: only the flagged row is recomputed', async () => {
    const c = await testGpu();
    const [ctx, heads, kvHeads, headDim] = [200, 2, 1, 16];
    const kv = fillCache(c, ctx, kvHeads, headDim, 61);
    const positions = [ctx - 1, 100];
    // Row 0's q is scaled by 30 (scores up to ~100, over phi + 60), row 1's stays small.
    const q = randomF32(positions.length * heads * headDim, 62, 3);
    for (let i = 0; i < heads * headDim; i++) q[i] = (q[i] as number) * 30;
    const call: Call = { heads, positions, q, variant: 'async_softmax', chunk: 64, maxContext: 256, phi: 0 };
    const r = await decode(c, kv, call, [2]);
    expect([...(r.flags[0] as Uint32Array)]).toEqual([1, 0]);
    // The fallback took the flag.
    expect([...(r.flags[1] as Uint32Array)]).toEqual([0, 0]);
    const half = heads * headDim;
    // The unflagged row is bit for bit the async result.
    expect(r.outs[1]?.slice(half)).toEqual(r.outs[0]?.slice(half));
    // Scores of magnitude ~100: see the large-logit test for this tolerance.
    expectClose(r.outs[1] as Float32Array, reference(kv, call), { atol: 5e-4 });
  });

  test('async softmax: the zero-padded heads of a partial block never raise the flag', async () => {
    const c = await testGpu();
    // k in [0.5, 2.5], q in [-3, -1]: every score is in [-60, -4], so with phi = -63 every real
    // x - phi is in [3, 59], inside the window, while a padding head's score 0 would be 63 above.
    for (const [heads, kvHeads] of [
      [6, 2],
      [14, 2],
    ] as const) {
      const [ctx, headDim] = [100, 64];
      const kv = fillCache(c, ctx, kvHeads, headDim, 91);
      kv.k.forEach((x, i) => (kv.k[i] = Math.abs(x) + 0.5));
      const blocks = Math.ceil(ctx / BLOCK);
      const flat: Cache = {
        ...kv,
        kCache: upload(c, new Float32Array(blocks * BLOCK * kvHeads * headDim)),
        vCache: upload(c, new Float32Array(blocks * BLOCK * kvHeads * headDim)),
        blockTable: upload(
          c,
          Uint32Array.from({ length: blocks }, (_, i) => i),
        ),
      };
      run(c, (b) =>
        kvWrite(b, {
          slots: upload(
            c,
            Uint32Array.from({ length: ctx }, (_, p) => p),
          ),
          k: upload(c, kv.k),
          v: upload(c, kv.v),
          kCache: flat.kCache,
          vCache: flat.vCache,
          m: ctx,
          kvHeads,
          headDim,
        }),
      );
      const positions = [ctx - 1];
      const q = randomF32(heads * headDim, 92).map((x) => -Math.abs(x) * 2 - 1);
      const call: Call = {
        heads,
        positions,
        q,
        variant: 'async_softmax',
        chunk: 64,
        maxContext: 128,
        phi: -63,
      };
      const r = await decode(c, flat, call, [2]);
      expect([...(r.flags[0] as Uint32Array)]).toEqual([0]);
      expectClose(r.outs[0] as Float32Array, reference(flat, call), { atol: ATOL });
    }
  });

  test('large logits (q scaled by 100) stay finite and exact', async () => {
    const c = await testGpu();
    const [ctx, heads, kvHeads, headDim] = [70, 4, 1, 32];
    const kv = fillCache(c, ctx, kvHeads, headDim, 71);
    const positions = [ctx - 1];
    const q = randomF32(heads * headDim, 72, 100);
    // Scores of magnitude ~100·√headDim lose absolute precision ~|x|·headDim·2⁻²⁴ before exp,
    // which multiplies the weights by e^(±that): ~2e-4 relative on values in [-1, 1] (as in
    // attention.test.ts).
    for (const variant of ['two_pass', 'async_softmax'] as const) {
      const call: Call = { heads, positions, q, variant, chunk: 32, maxContext: 96, phi: 0 };
      const r = await decode(c, kv, call);
      expectClose(r.outs[0] as Float32Array, reference(kv, call), { atol: 5e-4 });
    }
  });

  test('rejects more than 8 query heads per KV head, and bad chunks', async () => {
    const c = await testGpu();
    const kv = fillCache(c, 16, 1, 16, 81);
    const q = new Float32Array(16 * 16);
    await expect(
      decode(c, kv, { heads: 16, positions: [0], q, variant: 'two_pass', chunk: 16, maxContext: 16 }),
    ).rejects.toThrow(/at most 8 query heads per KV head/);
    await expect(
      decode(c, kv, { heads: 1, positions: [0], q, variant: 'two_pass', chunk: 24, maxContext: 16 }),
    ).rejects.toThrow(/multiple of 16/);
    await expect(
      decode(c, kv, { heads: 1, positions: [0], q, variant: 'async_softmax', chunk: 16, maxContext: 16 }),
    ).rejects.toThrow(/phi/);
  });
});

describe('attention_decode over token-tree rows (speculative verification) vs attentionRef', () => {
  // A tree of n nodes after `committed` keys: node i at slot committed + i, position committed - 1
  // + its depth, seeing the committed keys and its ancestors (random parents, BFS order). The
  // root row (the last committed key) is plain. Trees of 1, 7 and 32 nodes (bit 31 of the mask),
  // over 1, 7, 129 and 4097 committed keys, with the exact, async and single-pass variants, and
  // windows that cut through the committed keys and through a tree path.
  const cases = [
    { committed: 1, nodes: 7, heads: 4, kvHeads: 4, headDim: 64, chunk: 16, window: 0 },
    { committed: 7, nodes: 32, heads: 8, kvHeads: 2, headDim: 128, chunk: 16, window: 0 },
    { committed: 129, nodes: 1, heads: 6, kvHeads: 2, headDim: 64, chunk: 48, window: 0 },
    { committed: 129, nodes: 32, heads: 4, kvHeads: 1, headDim: 16, chunk: 64, window: 0 },
    { committed: 4097, nodes: 13, heads: 4, kvHeads: 1, headDim: 64, chunk: 1536, window: 0 },
    { committed: 129, nodes: 32, heads: 4, kvHeads: 2, headDim: 64, chunk: 48, window: 40 },
    { committed: 60, nodes: 32, heads: 2, kvHeads: 1, headDim: 16, chunk: 16, window: 3 },
  ];
  for (const { committed, nodes, heads, kvHeads, headDim, chunk, window } of cases) {
    test(`${nodes} nodes after ${committed} keys, heads=${heads}/${kvHeads} headDim=${headDim} chunk=${chunk} window=${window}`, async () => {
      const c = await testGpu();
      const ctx = committed + nodes;
      const kv = fillCache(c, ctx, kvHeads, headDim, ctx * 3 + nodes);
      const t = tokenTree(nodes, committed + nodes);
      const positions = [committed - 1, ...t.depth.map((d) => committed - 1 + d)];
      const tree = [undefined, ...t.mask.map((mask) => ({ base: committed, mask }))];
      const q = randomF32(positions.length * heads * headDim, ctx + 5, 3);
      const base = { heads, positions, q, chunk, window, tree };
      for (const maxContext of [ctx + 20, chunk >= ctx ? ctx : 0].filter((x) => x > 0)) {
        const want = reference(kv, { ...base, variant: 'two_pass', maxContext });
        const exact = await decode(c, kv, { ...base, variant: 'two_pass', maxContext });
        expectClose(exact.outs[0] as Float32Array, want, { atol: ATOL });
        const asy = await decode(c, kv, { ...base, variant: 'async_softmax', phi: 0, maxContext }, [2]);
        expectClose(asy.outs[0] as Float32Array, want, { atol: ATOL });
        const fb = await decode(c, kv, { ...base, variant: 'async_softmax', phi: -100, maxContext });
        expectClose(fb.outs[0] as Float32Array, want, { atol: ATOL });
      }
      // The mask matters: the same rows as a plain causal chain (every slot up to the node's own)
      // give another result wherever a node has a non-ancestor before it.
      if (t.mask.some((m, i) => m !== 2 ** (i + 1) - 1)) {
        const chain = reference(kv, {
          ...base,
          tree: undefined,
          positions: positions.map((_, i) => committed - 1 + i),
          variant: 'two_pass',
          maxContext: ctx + 20,
        });
        const got = await decode(c, kv, { ...base, variant: 'two_pass', maxContext: ctx + 20 });
        expect(maxDiff(got.outs[0] as Float32Array, chain)).toBeGreaterThan(1e-3);
      }
    });
  }
});

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let d = 0;
  for (let i = 0; i < a.length; i++) d = Math.max(d, Math.abs((a[i] as number) - (b[i] as number)));
  return d;
}

describe('attention_decode in one split (single pass: no merge, no fallback)', () => {
  // maxContext within one chunk: both variants record one dispatch that writes the output itself.
  // ctx 1, 7, 129, 4097 (ragged blocks; 4097 tokens are 9 tiles of 512 at GQA 4, 17 of 256 at 7),
  // GQA 1, 4, 7 (7: a zero-padded second head block), head dims 16 to 128, f32 and f16 caches,
  // sliding windows with every block before the window poisoned, Gemma 2's soft-cap. Same ATOL:
  // the arithmetic is the exact pass 1's, divided once.
  const cases = [
    { ctx: 1, heads: 4, kvHeads: 4, headDim: 64, maxContext: 16, window: 0, softcap: 0 },
    { ctx: 7, heads: 8, kvHeads: 2, headDim: 128, maxContext: 7, window: 0, softcap: 0 },
    { ctx: 7, heads: 7, kvHeads: 1, headDim: 16, maxContext: 64, window: 3, softcap: 0 },
    { ctx: 129, heads: 14, kvHeads: 2, headDim: 64, maxContext: 129, window: 0, softcap: 0 },
    { ctx: 129, heads: 7, kvHeads: 1, headDim: 64, maxContext: 256, window: 0, softcap: 5 },
    { ctx: 300, heads: 14, kvHeads: 2, headDim: 64, maxContext: 304, window: 100, softcap: 0 },
    { ctx: 4097, heads: 4, kvHeads: 1, headDim: 64, maxContext: 4097, window: 0, softcap: 0 },
    { ctx: 4097, heads: 7, kvHeads: 1, headDim: 64, maxContext: 4097, window: 512, softcap: 0 },
  ];
  for (const { ctx, heads, kvHeads, headDim, maxContext, window, softcap } of cases) {
    const chunk = Math.ceil(maxContext / BLOCK) * BLOCK;
    test(`ctx=${ctx} heads=${heads}/${kvHeads} headDim=${headDim} window=${window} softcap=${softcap}`, async () => {
      const c = await testGpu();
      for (const dtype of ['f32', 'f16'] as const) {
        if (dtype === 'f16' && !c.adapter.shaderF16) continue;
        const kv = fillCache(c, ctx, kvHeads, headDim, ctx + heads + window, dtype);
        const positions = [...new Set([ctx - 1, Math.floor(ctx / 2)])];
        const firstKey = Math.min(...positions.map((p) => (window > 0 ? Math.max(0, p - window + 1) : 0)));
        const poisoned = Math.floor(firstKey / BLOCK);
        poisonBlocks(c, kv, 0, poisoned);
        const q = randomF32(positions.length * heads * headDim, ctx + 13, 3);
        const base = { heads, positions, q, chunk, maxContext, window, softcap };
        const want = reference(kv, { ...base, variant: 'two_pass' });
        const label = dtype === 'f16' ? 'attention_decode_single_pass_kvf16' : 'attention_decode_single_pass';
        const exact = await decode(c, kv, { ...base, variant: 'two_pass' });
        expect(exact.labels).toEqual([label]);
        expectClose(exact.outs[0] as Float32Array, want, { atol: ATOL });
        // The async variant's one split is the same exact pass: phi (even one that would flag
        // every row) is not used, no flag is raised.
        for (const phi of [0, -100]) {
          const asy = await decode(c, kv, { ...base, variant: 'async_softmax', phi });
          expect(asy.labels).toEqual([label]);
          expect([...(asy.flags[0] as Uint32Array)]).toEqual(positions.map(() => 0));
          expect(asy.outs[0]).toEqual(exact.outs[0]);
        }
        if (poisoned > 0) {
          const full = await decode(c, kv, { ...base, window: 0, variant: 'two_pass' });
          expect((full.outs[0] as Float32Array).some(Number.isNaN)).toBe(true);
        }
      }
    });
  }

  test('the record calibration reads is still written: c = the head max score, l = its sum', async () => {
    const c = await testGpu();
    const [ctx, heads, kvHeads, headDim] = [129, 4, 1, 64];
    const kv = fillCache(c, ctx, kvHeads, headDim, 77);
    const q = randomF32(heads * headDim, 78, 3);
    const scratch = new AttentionDecodeScratch(c, { rows: 1, heads, headDim, maxContext: ctx, chunk: 144 });
    const b = new DispatchBuilder(c);
    const ds = attentionDecode(b, {
      rowInfo: upload(c, plainRowInfo([ctx - 1])),
      blockTable: kv.blockTable,
      q: upload(c, q),
      kCache: kv.kCache,
      vCache: kv.vCache,
      out: upload(c, new Float32Array(q.length)),
      m: 1,
      heads,
      kvHeads,
      headDim,
      scale: 1 / Math.sqrt(headDim),
      maxContext: ctx,
      chunk: 144,
      variant: 'two_pass',
      scratch,
    });
    expect(ds.length).toBe(1);
    runDispatches(c, ds);
    const rec = await readF32(c, scratch.partials, heads * (headDim + 4));
    for (let h = 0; h < heads; h++) {
      const x = Array.from({ length: ctx }, (_, j) => {
        let d = 0;
        for (let i = 0; i < headDim; i++)
          d += (q[h * headDim + i] as number) * (kv.k[j * headDim + i] as number);
        return d / Math.sqrt(headDim);
      });
      const max = Math.max(...x);
      const sum = x.reduce((a, v) => a + Math.exp(v - max), 0);
      // f32 scores (see ATOL) and a sum of 129 terms in [0, 1].
      expect(Math.abs((rec[h * (headDim + 4)] as number) - max)).toBeLessThan(1e-4);
      expect(Math.abs((rec[h * (headDim + 4) + 1] as number) - sum) / sum).toBeLessThan(1e-5);
    }
    b.destroy();
    scratch.destroy();
  });
});

describe('attention_decode over an f16 KV cache vs attentionRef of the f16-rounded K/V', () => {
  // ctx 1, 7, 129, 4097 (ragged blocks, several tiles), GQA 1/3/4/8 (3: a zero-padded head block),
  // head dims 64 to 256, splits past the end. The reference is computed from the very K/V values
  // the cache holds (each rounded once to f16 by kv_write), so what is left is the kernels' f32
  // arithmetic, the same as over an f32 cache: ATOL above (its score bound scales with
  // √headDim, ~1.5e-6 at head_dim 256, still well inside 2e-5).
  const cases = [
    { ctx: 1, heads: 4, kvHeads: 4, headDim: 64, chunk: 64, maxContext: 200 },
    { ctx: 7, heads: 8, kvHeads: 2, headDim: 128, chunk: 16, maxContext: 64 },
    { ctx: 129, heads: 6, kvHeads: 2, headDim: 64, chunk: 48, maxContext: 300 },
    { ctx: 129, heads: 4, kvHeads: 1, headDim: 256, chunk: 64, maxContext: 129 },
    { ctx: 4097, heads: 8, kvHeads: 1, headDim: 64, chunk: 512, maxContext: 4200 },
  ];
  for (const { ctx, heads, kvHeads, headDim, chunk, maxContext } of cases) {
    test(`ctx=${ctx} heads=${heads}/${kvHeads} headDim=${headDim} chunk=${chunk} max=${maxContext}`, async () => {
      const c = await testGpu();
      if (!c.adapter.shaderF16) return;
      const kv = fillCache(c, ctx, kvHeads, headDim, ctx + headDim + 5, 'f16');
      const positions = [...new Set([ctx - 1, Math.floor(ctx / 2)])];
      const q = randomF32(positions.length * heads * headDim, ctx + 9, 3);
      const base = { heads, positions, q, chunk, maxContext };
      const want = reference(kv, { ...base, variant: 'two_pass' });
      const exact = await decode(c, kv, { ...base, variant: 'two_pass' });
      expect(exact.labels).toEqual(['attention_decode_two_pass_kvf16', 'attention_merge_two_pass']);
      expectClose(exact.outs[0] as Float32Array, want, { atol: ATOL });
      const asy = await decode(c, kv, { ...base, variant: 'async_softmax', phi: 0 }, [2]);
      expect(asy.labels).toEqual(attentionDecodeLabels('async_softmax', 'f16'));
      expect([...(asy.flags[0] as Uint32Array)]).toEqual(positions.map(() => 0));
      expectClose(asy.outs[0] as Float32Array, want, { atol: ATOL });
      expect(asy.outs[1]).toEqual(asy.outs[0]);
    });
  }

  test('the exact fallback of the async chain reads the f16 cache too', async () => {
    const c = await testGpu();
    if (!c.adapter.shaderF16) return;
    const kv = fillCache(c, 300, 2, 64, 43, 'f16');
    const positions = [299, 20, 150];
    const q = randomF32(positions.length * 4 * 64, 44, 3);
    // x - phi ≈ 100 > 60: every row is flagged and recomputed by the exact pass.
    const call: Call = {
      heads: 4,
      positions,
      q,
      variant: 'async_softmax',
      chunk: 64,
      maxContext: 320,
      phi: -100,
    };
    const r = await decode(c, kv, call, [1]);
    expect([...(r.flags[0] as Uint32Array)]).toEqual([1, 1, 1]);
    expectClose(r.outs[1] as Float32Array, reference(kv, call), { atol: ATOL });
  });

  test('labels: pass 1 reads the cache and gets _kvf16; the merges read only partials', () => {
    expect(attentionDecodeLabels('two_pass', 'f32')).toEqual([...ATTENTION_DECODE_LABELS.two_pass]);
    expect(attentionDecodeLabels('async_softmax', 'f16', 1)).toEqual(['attention_decode_single_pass_kvf16']);
    expect(attentionDecodeLabels('async_softmax', 'f16')).toEqual([
      'attention_decode_async_softmax_kvf16',
      'attention_merge_async_softmax',
      'attention_decode_async_softmax_fallback_kvf16',
    ]);
  });
});

describe('supportsAttentionDecode (how the forward pass decides between this kernel and `attention`)', () => {
  test('accepts the benchmark and test shapes, refuses what attentionDecode refuses', () => {
    expect(supportsAttentionDecode(32, 8, 64)).toBe(true); // Llama-3.2-1B
    expect(supportsAttentionDecode(14, 2, 64)).toBe(true); // Qwen2.5-0.5B
    expect(supportsAttentionDecode(8, 4, 16)).toBe(true); // babyllama
    expect(supportsAttentionDecode(4, 1, 256)).toBe(true);
    expect(supportsAttentionDecode(8, 1, 256)).toBe(false); // > 4 heads per KV head at head_dim 256
    expect(supportsAttentionDecode(8, 1, 128)).toBe(true);
    expect(supportsAttentionDecode(16, 1, 64)).toBe(false); // > 8 heads per KV head
    expect(supportsAttentionDecode(2, 2, 12)).toBe(false); // head_dim not a multiple of 8
    expect(supportsAttentionDecode(6, 4, 64)).toBe(false); // not a whole GQA group
  });
});

describe('pickDecodeChunk', () => {
  test('aims for ~64 workgroups with chunks of at least 64 tokens', () => {
    expect(pickDecodeChunk({ maxContext: 4096, kvHeads: 2, rows: 1 })).toBe(128);
    expect(pickDecodeChunk({ maxContext: 4096, kvHeads: 8, rows: 1 })).toBe(512);
    expect(pickDecodeChunk({ maxContext: 100, kvHeads: 2, rows: 1 })).toBe(64);
    expect(pickDecodeChunk({ maxContext: 32, kvHeads: 8, rows: 16 })).toBe(64);
    const huge = pickDecodeChunk({ maxContext: 2 ** 27, kvHeads: 64, rows: 1 });
    expect(decodeSplits(2 ** 27, huge)).toBeLessThanOrEqual(65535);
    expect(huge % 16).toBe(0);
  });
});
