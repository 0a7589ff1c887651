/**
 * rope_kv_write_qknorm (per-head RMSNorm of q and k folded into RoPE + the KV-cache write) against
 * its float64 twin, at the head sizes of Qwen3 (128), Gemma 3 (256) and smaller ones (64), one and
 * seven query heads, 1, 7 and 129 rows; and bit-equal to the unfused pair it replaces (qk_norm,
 * then rope_kv_write), which the engine ran before.
 */
import { plainRowInfo } from '../../src/kernels/row-info.js';
import { describe, expect, test } from 'vitest';
import type { GpuContext } from '../../src/gpu/device.js';
import type { KvFloatDtype } from '../../src/kernels/kv-dtype.js';
import { qkNorm } from '../../bench/baselines/qk-norm.js';
import { qkNormRef } from '../../src/kernels/qk-norm.ref.js';
import { ropeKvWrite } from '../../src/kernels/rope-kv-write.js';
import { ropeKvWriteQkNormRef } from '../../src/kernels/rope-kv-write-qknorm.ref.js';
import { ropeAngles, ropeTable } from '../../src/kernels/rope.ref.js';
import {
  expectClose,
  kvBuffer,
  randomF32,
  readF32,
  readKv,
  run,
  shuffledBlocks,
  testGpu,
  upload,
} from '../helpers/gpu.js';

const BLOCK = 16;
const U = 2 ** -24;
const EPS = 1e-6;
const POSITIONS = 600;

/** The [rows, kvHeads·headDim] rows of `slots` gathered back out of a paged cache read as f32. */
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

interface Case {
  m: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  rotaryDim?: number;
  kvDtype?: KvFloatDtype;
}

const CASES: Case[] = [];
for (const headDim of [64, 128, 256])
  for (const [heads, kvHeads] of [
    [1, 1],
    [7, 1],
  ] as const)
    for (const m of [1, 7, 129]) CASES.push({ m, heads, kvHeads, headDim });
// Partial rotation (Phi-3 style), no rotation (NoPE layers), and an f16 cache.
CASES.push({ m: 7, heads: 4, kvHeads: 2, headDim: 64, rotaryDim: 32 });
CASES.push({ m: 7, heads: 4, kvHeads: 2, headDim: 128, rotaryDim: 0 });
CASES.push({ m: 129, heads: 7, kvHeads: 1, headDim: 128, kvDtype: 'f16' });

function supported(c: GpuContext, dtype: KvFloatDtype): boolean {
  return dtype === 'f32' || c.adapter.shaderF16;
}

describe('rope_kv_write_qknorm', () => {
  for (const { m, heads, kvHeads, headDim, rotaryDim = headDim, kvDtype = 'f32' } of CASES) {
    test(`m=${m} heads=${heads}/${kvHeads} headDim=${headDim} rot=${rotaryDim} ${kvDtype}`, async () => {
      const c = await testGpu();
      if (!supported(c, kvDtype)) return;
      const qDim = heads * headDim;
      const kvDim = kvHeads * headDim;
      const width = qDim + 2 * kvDim;
      const qkv = randomF32(m * width, headDim * 31 + m, 3);
      const qw = randomF32(headDim, headDim + 1, 2);
      const kw = randomF32(headDim, headDim + 2, 2);
      const positions = Array.from({ length: m }, (_, r) => (r * 37 + 5) % POSITIONS);
      const blocks = Math.ceil(m / BLOCK) + 2;
      const order = shuffledBlocks(blocks, m + headDim);
      const slots = positions.map((_, r) => (order[Math.floor(r / BLOCK)] as number) * BLOCK + (r % BLOCK));
      const angles = ropeAngles(rotaryDim, 1_000_000, { type: 'none' });
      const table = upload(c, ropeTable(angles, POSITIONS));
      const rowInfo = upload(c, plainRowInfo(positions));
      const slotBuf = upload(c, Uint32Array.from(slots));
      const qW = upload(c, qw);
      const kW = upload(c, kw);
      const common = { rowInfo, slots: slotBuf, table, m, heads, kvHeads, headDim, rotaryDim, kvDtype };

      // Fused.
      const q = upload(c, new Float32Array(m * qDim));
      const kCache = kvBuffer(c, blocks * kvDim * BLOCK, kvDtype);
      const vCache = kvBuffer(c, blocks * kvDim * BLOCK, kvDtype);
      run(c, (b) => {
        const d = ropeKvWrite(b, {
          ...common,
          qkv: upload(c, qkv),
          q,
          kCache,
          vCache,
          qkNorm: { qWeight: qW, kWeight: kW, eps: EPS },
        });
        expect(d.label).toBe(kvDtype === 'f16' ? 'rope_kv_write_qknorm_kvf16' : 'rope_kv_write_qknorm');
        return d;
      });
      const gotQ = await readF32(c, q, m * qDim);
      const gotK = gather(await readKv(c, kCache, blocks * kvDim * BLOCK, kvDtype), slots, kvHeads, headDim);
      const gotV = gather(await readKv(c, vCache, blocks * kvDim * BLOCK, kvDtype), slots, kvHeads, headDim);

      // Against float64: a normalized element carries qk_norm's relative error (its test's bound,
      // normRtol); a rotated one is a·c − b·s of two such elements with f32 (c, s) and two
      // products and a sum (≤ 4 ulp more), so its error is at most (normRtol + 4u)·(|a| + |b|)
      // ≤ 2·(normRtol + 4u)·max|normalized element|. An f16 cache rounds once more to nearest: half
      // an f16 ulp, 2⁻¹¹ relative (normal values) or 2⁻²⁵ absolute (subnormal ones).
      const want = ropeKvWriteQkNormRef(qkv, positions, heads, kvHeads, headDim, angles, qw, kw, EPS);
      const normed = qkNormRef(qkv, m, heads, kvHeads, headDim, qw, kw, EPS);
      let maxNormed = 0;
      for (let r = 0; r < m; r++)
        for (let e = 0; e < qDim + kvDim; e++)
          maxNormed = Math.max(maxNormed, Math.abs(normed[r * width + e]!));
      const normRtol = ((Math.ceil(headDim / 64) + 64) / 2 + 8) * U;
      const atol = 2 * (normRtol + 4 * U) * maxNormed;
      expectClose(gotQ, want.q, { atol });
      const f16 = { atol: 2 ** -25, rtol: 2 ** -11 };
      expectClose(gotK, want.k, kvDtype === 'f16' ? { ...f16, atol: atol + f16.atol } : { atol });
      expectClose(gotV, want.v, kvDtype === 'f16' ? f16 : { atol: 0 });

      // Against the unfused pair: the same f32 operations in the same order, so the same bits.
      const qkvUnfused = upload(c, qkv);
      const q2 = upload(c, new Float32Array(m * qDim));
      const k2 = kvBuffer(c, blocks * kvDim * BLOCK, kvDtype);
      const v2 = kvBuffer(c, blocks * kvDim * BLOCK, kvDtype);
      run(c, (b) => [
        qkNorm(b, { qkv: qkvUnfused, qWeight: qW, kWeight: kW, m, heads, kvHeads, headDim, eps: EPS }),
        ropeKvWrite(b, { ...common, qkv: qkvUnfused, q: q2, kCache: k2, vCache: v2 }),
      ]);
      expect(Array.from(await readF32(c, q2, m * qDim))).toEqual(Array.from(gotQ));
      const k2Rows = gather(await readKv(c, k2, blocks * kvDim * BLOCK, kvDtype), slots, kvHeads, headDim);
      const v2Rows = gather(await readKv(c, v2, blocks * kvDim * BLOCK, kvDtype), slots, kvHeads, headDim);
      expect(k2Rows).toEqual(gotK);
      expect(v2Rows).toEqual(gotV);
    });
  }
});
