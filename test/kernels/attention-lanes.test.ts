import { describe, expect, test } from 'vitest';
import type { GpuContext } from '../../src/gpu/device.js';
import { AttentionDecodeScratch, attentionDecode } from '../../src/kernels/attention-decode.js';
import { attentionLanesLabel, supportsAttentionLanes } from '../../src/kernels/attention-lanes.js';
import { attentionRef } from '../../src/kernels/attention.ref.js';
import { ROW_INFO_WORDS, writeRowInfo, type TreeKeys } from '../../src/kernels/row-info.js';
import { DispatchBuilder, runDispatches } from '../../src/gpu/dispatch.js';
import { fillCache, type Cache } from '../helpers/paged-kv.js';
import { expectClose, randomF32, readF32, testGpu, upload } from '../helpers/gpu.js';
import { tokenTree } from '../helpers/tree.js';

const BLOCK = 16;

/** NaN (all-ones bytes) in K and V of logical blocks from..to-1, as in attention-decode.test.ts. */
function poisonBlocks(c: GpuContext, kv: Cache, from: number, to: number): void {
  const bytes = kv.kvHeads * BLOCK * kv.headDim * (kv.dtype === 'f16' ? 2 : 4);
  const nan = new Uint8Array(bytes).fill(0xff);
  for (let blk = from; blk < to; blk++) {
    const at = (kv.table[blk] as number) * bytes;
    for (const buf of [kv.kCache, kv.vCache]) c.device.queue.writeBuffer(buf, at, nan);
  }
}

/**
 * Same bound and reasoning as attention-decode.test.ts's ATOL (q in [-3, 3), k in [-2, 2), v in
 * [-1, 1), f32 scores and sums over up to 4097 keys against float64): 2e-5 absolute.
 */
const ATOL = 2e-5;

interface Call {
  heads: number;
  positions: number[];
  q: Float32Array;
  window?: number;
  softcap?: number;
  tree?: (TreeKeys | undefined)[];
}

/** One lanes-form call; returns the output and the partials' (max, sum) header of each head. */
async function lanes(
  c: GpuContext,
  kv: Cache,
  call: Call,
): Promise<{ out: Float32Array; headers: Float32Array; labels: string[] }> {
  const m = call.positions.length;
  const maxContext = Math.max(...call.positions) + 1 + (call.tree ? 32 : 0);
  const chunk = Math.ceil(maxContext / BLOCK) * BLOCK;
  const scratch = new AttentionDecodeScratch(c, {
    rows: m,
    heads: call.heads,
    headDim: kv.headDim,
    maxContext,
    chunk,
  });
  const rowInfo = new Uint32Array(ROW_INFO_WORDS * m);
  call.positions.forEach((p, i) => writeRowInfo(rowInfo, i, p, 0, call.tree?.[i]));
  const out = upload(c, new Float32Array(call.q.length).fill(NaN));
  const b = new DispatchBuilder(c);
  const ds = attentionDecode(b, {
    rowInfo: upload(c, rowInfo),
    blockTable: kv.blockTable,
    q: upload(c, call.q),
    kCache: kv.kCache,
    vCache: kv.vCache,
    kvDtype: kv.dtype,
    out,
    m,
    heads: call.heads,
    kvHeads: kv.kvHeads,
    headDim: kv.headDim,
    scale: 1 / Math.sqrt(kv.headDim),
    maxContext,
    chunk,
    variant: 'two_pass',
    form: 'lanes',
    ...(call.window ? { window: call.window } : {}),
    ...(call.softcap ? { softcap: call.softcap } : {}),
    scratch,
  });
  runDispatches(c, ds);
  const o = await readF32(c, out, call.q.length);
  const rec = kv.headDim / 4 + 1;
  const all = await readF32(c, scratch.partials, m * call.heads * rec * 4);
  const headers = new Float32Array(2 * m * call.heads);
  for (let i = 0; i < m * call.heads; i++) headers.set(all.subarray(i * rec * 4, i * rec * 4 + 2), 2 * i);
  b.destroy();
  scratch.destroy();
  return { out: o, headers, labels: ds.map((d) => d.label) };
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

describe('attention_decode lanes form (one invocation per row and KV head) vs attentionRef', () => {
  // ctx 1, 7, 129, 4097 (ragged last blocks), 1, 7 and 13 rows at scattered positions, GQA 1 to 7,
  // head dims 8 to 64 (BabyLlama 8/4 x 16, stories260K 8/4 x 8, and up to the 64 values of state),
  // f32 and f16 caches, sliding windows (every block wholly before a row's window poisoned with
  // NaN: a read of one would show), Gemma 2's soft-cap.
  const cases = [
    { ctx: 1, rows: 1, heads: 8, kvHeads: 4, headDim: 16, window: 0, softcap: 0 },
    { ctx: 7, rows: 7, heads: 8, kvHeads: 4, headDim: 8, window: 0, softcap: 0 },
    { ctx: 129, rows: 13, heads: 8, kvHeads: 4, headDim: 16, window: 0, softcap: 0 },
    { ctx: 129, rows: 7, heads: 7, kvHeads: 1, headDim: 8, window: 0, softcap: 5 },
    { ctx: 129, rows: 1, heads: 2, kvHeads: 2, headDim: 64, window: 0, softcap: 0 },
    { ctx: 300, rows: 13, heads: 6, kvHeads: 2, headDim: 16, window: 100, softcap: 0 },
    { ctx: 4097, rows: 7, heads: 4, kvHeads: 1, headDim: 16, window: 0, softcap: 0 },
    { ctx: 4097, rows: 1, heads: 8, kvHeads: 4, headDim: 8, window: 512, softcap: 0 },
  ];
  for (const { ctx, rows, heads, kvHeads, headDim, window, softcap } of cases) {
    test(`ctx=${ctx} rows=${rows} heads=${heads}/${kvHeads} headDim=${headDim} window=${window} softcap=${softcap}`, async () => {
      const c = await testGpu();
      for (const dtype of ['f32', 'f16'] as const) {
        if (dtype === 'f16' && !c.adapter.shaderF16) continue;
        const kv = fillCache(c, ctx, kvHeads, headDim, ctx + rows + headDim, dtype);
        // The last position, then positions spread over the context (some rows see one block).
        const positions = Array.from({ length: rows }, (_, i) => (i === 0 ? ctx - 1 : (i * 37) % ctx));
        const firstKey = Math.min(...positions.map((p) => (window > 0 ? Math.max(0, p - window + 1) : 0)));
        const poisoned = Math.floor(firstKey / BLOCK);
        const q = randomF32(rows * heads * headDim, ctx + 3, 3);
        const call = { heads, positions, q, window, softcap };
        const want = reference(kv, call);
        poisonBlocks(c, kv, 0, poisoned);
        const got = await lanes(c, kv, call);
        expect(got.labels).toEqual([attentionLanesLabel(heads / kvHeads, headDim, dtype)]);
        expectClose(got.out, want, { atol: ATOL });
      }
    });
  }

  test('a row gives the same bits alone as in a step of 13 rows', async () => {
    const c = await testGpu();
    const [ctx, heads, kvHeads, headDim] = [200, 8, 4, 16];
    const kv = fillCache(c, ctx, kvHeads, headDim, 5);
    const positions = Array.from({ length: 13 }, (_, i) => ctx - 1 - 11 * i);
    const q = randomF32(13 * heads * headDim, 6, 3);
    const all = await lanes(c, kv, { heads, positions, q });
    const w = heads * headDim;
    for (const r of [0, 6, 12]) {
      const one = await lanes(c, kv, {
        heads,
        positions: [positions[r] as number],
        q: q.slice(r * w, (r + 1) * w),
      });
      expect([...one.out]).toEqual([...all.out.subarray(r * w, (r + 1) * w)]);
    }
  });

  test('token-tree rows see their ancestors only (speculative verification)', async () => {
    const c = await testGpu();
    for (const [committed, nodes] of [
      [1, 7],
      [129, 32],
      [60, 13],
    ] as const) {
      const [heads, kvHeads, headDim] = [8, 4, 16];
      const ctx = committed + nodes;
      const kv = fillCache(c, ctx, kvHeads, headDim, ctx * 3);
      const t = tokenTree(nodes, ctx);
      const positions = [committed - 1, ...t.depth.map((d) => committed - 1 + d)];
      const tree = [undefined, ...t.mask.map((mask) => ({ base: committed, mask }))];
      const q = randomF32(positions.length * heads * headDim, ctx + 1, 3);
      const call = { heads, positions, q, tree };
      const got = await lanes(c, kv, call);
      expectClose(got.out, reference(kv, call), { atol: ATOL });
    }
  });

  test("writes each head's (max score, sum) record where calibration reads it", async () => {
    const c = await testGpu();
    const [ctx, heads, kvHeads, headDim] = [129, 4, 2, 8];
    const kv = fillCache(c, ctx, kvHeads, headDim, 77);
    const q = randomF32(heads * headDim, 78, 3);
    const { headers } = await lanes(c, kv, { heads, positions: [ctx - 1], q });
    for (let h = 0; h < heads; h++) {
      const g = Math.floor(h / (heads / kvHeads));
      const x = Array.from({ length: ctx }, (_, j) => {
        let d = 0;
        for (let i = 0; i < headDim; i++)
          d += (q[h * headDim + i] as number) * (kv.k[(j * kvHeads + g) * headDim + i] as number);
        return d / Math.sqrt(headDim);
      });
      const max = Math.max(...x);
      const sum = x.reduce((a, v) => a + Math.exp(v - max), 0);
      // f32 scores (see ATOL) and a sum of 129 terms in [0, 1].
      expect(Math.abs((headers[2 * h] as number) - max)).toBeLessThan(1e-4);
      expect(Math.abs((headers[2 * h + 1] as number) - sum) / sum).toBeLessThan(1e-5);
    }
  });
});

describe('supportsAttentionLanes', () => {
  test('float caches and at most 64 values of q per KV head', () => {
    expect(supportsAttentionLanes(8, 4, 16, 'f16')).toBe(true); // BabyLlama
    expect(supportsAttentionLanes(8, 4, 8, 'f32')).toBe(true); // stories260K
    expect(supportsAttentionLanes(2, 2, 64, 'f32')).toBe(true);
    expect(supportsAttentionLanes(14, 2, 64, 'f16')).toBe(false); // Qwen2.5-0.5B: 448
    expect(supportsAttentionLanes(8, 4, 16, 'int8')).toBe(false);
    expect(supportsAttentionLanes(8, 3, 16, 'f32')).toBe(false);
  });
});
