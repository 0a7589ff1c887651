import type { GpuContext } from '../../src/gpu/device.js';
import type { KvFloatDtype as KvDtype } from '../../src/kernels/kv-dtype.js';
import { kvWrite } from '../../bench/baselines/kv-write.js';
import { kvBuffer, kvRounded, randomF32, run, shuffledBlocks, upload } from './gpu.js';

const BLOCK = 16;

/** A paged float KV cache filled for an attention kernel test, with the values it holds. */
export interface Cache {
  ctx: number;
  kvHeads: number;
  headDim: number;
  /** The values the cache holds (f16-rounded for an f16 cache), in token order. */
  k: Float32Array;
  v: Float32Array;
  dtype: KvDtype;
  kCache: GPUBuffer;
  vCache: GPUBuffer;
  blockTable: GPUBuffer;
  /** Physical block of each logical block. */
  table: number[];
}

/**
 * K/V of `ctx` tokens (k in [-2, 2), v in [-1, 1)) written through kv_write into shuffled blocks of
 * a `dtype` cache.
 */
export function fillCache(
  c: GpuContext,
  ctx: number,
  kvHeads: number,
  headDim: number,
  seed: number,
  dtype: KvDtype = 'f32',
): Cache {
  const kvDim = kvHeads * headDim;
  const blocks = Math.ceil(ctx / BLOCK);
  const table = shuffledBlocks(blocks, seed);
  const k = randomF32(ctx * kvDim, seed, 2);
  const v = randomF32(ctx * kvDim, seed + 1);
  const kCache = kvBuffer(c, blocks * kvDim * BLOCK, dtype);
  const vCache = kvBuffer(c, blocks * kvDim * BLOCK, dtype);
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
      kvDtype: dtype,
    }),
  );
  return {
    ctx,
    kvHeads,
    headDim,
    // kv_write rounds once to nearest-even f16 (attention.test.ts checks it bit for bit).
    k: kvRounded(k, dtype),
    v: kvRounded(v, dtype),
    dtype,
    kCache,
    vCache,
    blockTable: upload(c, Uint32Array.from(table)),
    table,
  };
}
