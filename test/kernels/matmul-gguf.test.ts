/**
 * matmul_gguf against its float64 reference (the CPU twins' exact weights) for every block format,
 * at awkward sizes: M in 1, 7, 129, N in 1, 7, 129, K whole blocks up to 4096 + 256, bias,
 * accumulate and a weight split in parts.
 */
import { describe, expect, test } from 'vitest';
import { DispatchBuilder, runDispatches } from '../../src/gpu/dispatch.js';
import { embedGguf } from '../../src/kernels/embed-gguf.js';
import { matmulGguf, type GgufVariant, type MatmulGgufArgs } from '../../src/kernels/matmul-gguf.js';
import { q4SubgroupsUsable } from '../../src/kernels/matmul-q4.js';
import { matmulGgufRef } from '../../src/kernels/matmul-gguf.ref.js';
import { dequantizeGguf, quantizeGguf } from '../../src/quant/gguf-blocks.js';
import { ggufBlockLayout, GGUF_KERNEL_TYPES, packGguf } from '../../src/quant/gguf-pack.js';
import { uploadGgufWeight } from '../../src/weights/upload-gguf.js';
import { plainGpu, randomF32, readF32, testGpu, upload } from '../helpers/gpu.js';
import type { GpuContext } from '../../src/gpu/device.js';

const u = 2 ** -24;
const gamma = (n: number) => (n * u) / (1 - n * u);

/**
 * Per-element tolerance. The kernel forms each weight in f32 from exact small integers and f16 /
 * six-bit scales (d·sc and dmin·m are exact in f32; the code times the scale and the offset
 * subtraction cost at most 2 roundings), then per chunk of 8 adds two 4-element dots into one
 * accumulator, in block order: every product passes through at most D = K/8 + 10 roundings (4 in a
 * dot, 1 joining the dots, K/8 chunk adds, 2 for the weight, slack 3). So |y − y_ref| ≤
 * γ_D·Σ_k A_k·|x_k|, A_k bounding the magnitude of the terms that form weight k: |d·sc·q| + |dmin·m|
 * ≤ 3·max|w| over its block for the round-to-nearest quantizer's blocks (the offset never exceeds
 * the sub-block's range), and |w| for the symmetric formats. Bias and accumulate add 2 roundings
 * of |acc| + |bias| + |y0|.
 */
function tolerance(
  type: string,
  w: Float64Array,
  n: number,
  k: number,
  x: Float32Array,
  m: number,
  extra?: { bias?: Float32Array; y0?: Float32Array },
): Float64Array {
  const be = ggufBlockLayout(type).info.blockElems;
  const a = new Float64Array(n * k);
  for (let b = 0; b < (n * k) / be; b++) {
    let mx = 0;
    for (let i = b * be; i < (b + 1) * be; i++) mx = Math.max(mx, Math.abs(w[i] as number));
    a.fill(3 * mx, b * be, (b + 1) * be);
  }
  const g = gamma(k / 8 + 10);
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += (a[j * k + t] as number) * Math.abs(x[i * k + t] as number);
      let e = g * s;
      if (extra?.bias || extra?.y0) {
        e += gamma(2) * (s + Math.abs(extra.bias?.[j] ?? 0) + Math.abs(extra.y0?.[i * n + j] ?? 0));
      }
      out[i * n + j] = e;
    }
  }
  return out;
}

interface Case {
  m: number;
  n: number;
  k: number;
  bias?: boolean;
  accumulate?: boolean;
  rowsPerPart?: number;
}

/** n × k weights with very different row ranges, so d, offsets and sub-scales vary. */
function weights(n: number, k: number, seed: number): Float32Array {
  const wv = randomF32(n * k, seed, 1);
  for (let i = 0; i < wv.length; i++) wv[i] = (wv[i] as number) * (1 + (Math.floor(i / k) % 5));
  return wv;
}

function checkClose(what: string, got: Float32Array, want: Float64Array, tol: Float64Array): void {
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs((got[i] as number) - (want[i] as number));
    if (!(err <= (tol[i] as number)))
      expect.fail(`${what}: y[${i}] = ${got[i]}, want ${want[i]} (±${tol[i]})`);
  }
}

/**
 * Runs the case once per variant (the weight, X and the reference made once) and returns the
 * pipeline labels that ran.
 */
async function check(
  type: string,
  c: Case,
  seed: number,
  variants: readonly GgufVariant[] = [{}],
  ctx?: GpuContext,
): Promise<string[]> {
  ctx ??= await testGpu();
  const bytes = quantizeGguf(type, weights(c.n, c.k, seed));
  const x = randomF32(c.m * c.k, seed + 1, 1);
  const bias = c.bias ? randomF32(c.n, seed + 2, 1) : undefined;
  const y0 = c.accumulate ? randomF32(c.m * c.n, seed + 3, 1) : undefined;
  const weight = uploadGgufWeight(ctx, `w_${type}`, [{ type, bytes, rows: c.n }], c.k, c.rowsPerPart);
  const xb = upload(ctx, x);
  const bb = bias ? upload(ctx, bias) : undefined;
  const ph = upload(ctx, new Float32Array(4));
  const want = matmulGgufRef(type, bytes, c.n, c.k, x, c.m, { bias, y0 });
  const tol = tolerance(type, dequantizeGguf(type, bytes, c.n * c.k), c.n, c.k, x, c.m, { bias, y0 });
  const labels: string[] = [];
  for (const variant of variants) {
    const yb = upload(ctx, y0 ?? new Float32Array(c.m * c.n));
    const builder = new DispatchBuilder(ctx);
    const args: MatmulGgufArgs = {
      x: xb,
      weight,
      y: yb,
      m: c.m,
      bias: bb,
      accumulate: c.accumulate,
      placeholder: ph,
      ...variant,
    };
    const dispatches = matmulGguf(builder, args);
    runDispatches(ctx, dispatches);
    builder.destroy();
    const got = await readF32(ctx, yb, c.m * c.n);
    const label = dispatches[0]?.label ?? '';
    checkClose(`${label} ${JSON.stringify(c)}`, got, want, tol);
    labels.push(label);
  }
  return labels;
}

describe('matmul_gguf', () => {
  for (const type of GGUF_KERNEL_TYPES) {
    const bk = ggufBlockLayout(type).info.blockElems;
    test(`${type}: M 1, 7, 129 × N 1, 7, 129 at K = 1, 3, 17 blocks and 4096 + 256`, async () => {
      await check(type, { m: 1, n: 129, k: 4096 + 256 }, 11);
      await check(type, { m: 7, n: 7, k: 3 * bk }, 12);
      await check(type, { m: 129, n: 1, k: bk }, 13);
      await check(type, { m: 7, n: 129, k: 17 * bk, bias: true }, 14);
      await check(type, { m: 129, n: 7, k: 2 * bk, accumulate: true }, 15);
    }, 120_000);
  }

  // Every compile-time choice of the kernel (X through subgroups or per lane, MT, R, threads) in
  // every format, at N = 1, 7, 129, 4097 rows and M = 1, 5, 16.
  for (const type of GGUF_KERNEL_TYPES) {
    const bk = ggufBlockLayout(type).info.blockElems;
    test(`${type}, 16-byte kernel: every variant at N 1, 7, 129, 4097 and M 1, 5, 16`, async () => {
      const sg = q4SubgroupsUsable(await testGpu());
      // Every MT (1, 4, 8), R (1, 2, 4) and thread count (16, 32, 64, 128) at least once, on both
      // X paths where the adapter has subgroups.
      const variants: GgufVariant[] = [
        { subgroups: false, rowsPerGroup: 1, rowsPerThread: 4, workgroupSize: 16 },
        { subgroups: false, rowsPerGroup: 4, rowsPerThread: 2, workgroupSize: 128 },
      ];
      if (sg) {
        variants.push(
          { subgroups: true, rowsPerGroup: 1, rowsPerThread: 1, workgroupSize: 32 },
          { subgroups: true, rowsPerGroup: 4, rowsPerThread: 4 },
          // MT = 8 once, with one row per thread: its unrolled code is the largest to compile.
          { subgroups: true, rowsPerGroup: 8, rowsPerThread: 1, workgroupSize: 16 },
        );
      }
      const labels = new Set<string>([
        ...(await check(type, { m: 1, n: 4097, k: bk }, 50, variants)),
        ...(await check(type, { m: 5, n: 7, k: 3 * bk, bias: true }, 60, variants)),
        ...(await check(type, { m: 16, n: 129, k: 2 * bk, accumulate: true }, 70, variants)),
        ...(await check(type, { m: 16, n: 1, k: bk }, 80, variants)),
      ]);
      // Each variant compiled its own pipeline (the label names every choice).
      expect(labels.size).toBe(variants.length);
      expect([...labels].every((l) => l.startsWith(`matmul_gguf_vec4_${type.toLowerCase()}_`))).toBe(true);
    }, 300_000);
  }

  // The path an adapter without subgroups takes by default, on a device made without them: every
  // format at M = 1 (MT 1), and the batched tile (MT 4) in Q4_K (its code is shared by the
  // formats; each is slow to compile on llvmpipe, and the variant test above runs them all).
  test('an adapter without subgroups runs every format (X loaded per lane)', async () => {
    const plain = await plainGpu();
    expect(plain.device.features.has('subgroups')).toBe(false);
    const labels: string[] = [];
    for (const type of GGUF_KERNEL_TYPES) {
      const bk = ggufBlockLayout(type).info.blockElems;
      labels.push(...(await check(type, { m: 1, n: 129, k: 2 * bk }, 90, [{}], plain)));
    }
    labels.push(...(await check('Q4_K', { m: 16, n: 7, k: 256, bias: true }, 91, [{}], plain)));
    expect(labels.every((l) => l.startsWith('matmul_gguf_vec4_') && !l.includes('_sg'))).toBe(true);
    // Asking for the subgroup path there is refused by name.
    await expect(check('Q4_K', { m: 1, n: 8, k: 256 }, 92, [{ subgroups: true }], plain)).rejects.toThrow(
      /no subgroups/,
    );
  }, 300_000);

  test('a weight in parts (16-row slices of 129 rows) equals the reference', async () => {
    await check('Q4_K', { m: 7, n: 129, k: 512, rowsPerPart: 16, bias: true }, 21);
    await check('Q6_K', { m: 1, n: 129, k: 512, rowsPerPart: 16 }, 22);
    await check('Q8_0', { m: 7, n: 129, k: 96, rowsPerPart: 16, accumulate: true }, 23);
  }, 120_000);

  test('a stack of pieces in different formats (Q4_K, Q6_K, Q8_0 rows of one projection)', async () => {
    const ctx = await testGpu();
    const k = 512;
    const m = 7;
    const pieces = (
      [
        ['Q4_K', 24],
        ['Q6_K', 9],
        ['Q8_0', 9],
      ] as const
    ).map(([type, rows], i) => ({ type, rows, bytes: quantizeGguf(type, weights(rows, k, 31 + i)) }));
    const n = 42;
    const weight = uploadGgufWeight(ctx, 'qkv', pieces, k);
    expect(weight.parts.map((p) => [p.type, p.rowStart, p.rows])).toEqual([
      ['Q4_K', 0, 24],
      ['Q6_K', 24, 9],
      ['Q8_0', 33, 9],
    ]);
    const x = randomF32(m * k, 35, 1);
    const yb = upload(ctx, new Float32Array(m * n));
    const builder = new DispatchBuilder(ctx);
    const ph = upload(ctx, new Float32Array(4));
    runDispatches(ctx, matmulGguf(builder, { x: upload(ctx, x), weight, y: yb, m, placeholder: ph }));
    builder.destroy();
    const got = await readF32(ctx, yb, m * n);
    // Each piece's reference fills its own columns of Y.
    const want = new Float64Array(m * n);
    const tol = new Float64Array(m * n);
    let col = 0;
    for (const p of pieces) {
      const ref = matmulGgufRef(p.type, p.bytes, p.rows, k, x, m);
      const t = tolerance(p.type, dequantizeGguf(p.type, p.bytes, p.rows * k), p.rows, k, x, m);
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < p.rows; j++) {
          want[i * n + col + j] = ref[i * p.rows + j] as number;
          tol[i * n + col + j] = t[i * p.rows + j] as number;
        }
      }
      col += p.rows;
    }
    checkClose('stack', got, want, tol);
  }, 60_000);

  test('embed_gguf gathers rows decoded as the kernel decodes them, in every format', async () => {
    const ctx = await testGpu();
    const ph = upload(ctx, new Float32Array(4));
    const ids = new Uint32Array([0, 128, 7, 64, 128]);
    for (const type of GGUF_KERNEL_TYPES) {
      const k = 512;
      const rows = 129;
      const bytes = quantizeGguf(type, weights(rows, k, 41));
      // Parts of 64 rows: ids 64 and 128 fall in later parts.
      const table = uploadGgufWeight(ctx, 'embd', [{ type, bytes, rows }], k, 64);
      const out = upload(ctx, new Float32Array(ids.length * k));
      const builder = new DispatchBuilder(ctx);
      runDispatches(
        ctx,
        embedGguf(builder, { table, ids: upload(ctx, ids), out, m: ids.length, placeholder: ph }),
      );
      builder.destroy();
      const got = await readF32(ctx, out, ids.length * k);
      const w = dequantizeGguf(type, bytes, rows * k);
      // Each weight is formed in f32 from exact integers and scales with at most 2 roundings of
      // terms bounded by 3·max|w| of the block (see \`tolerance\`).
      const be = ggufBlockLayout(type).info.blockElems;
      ids.forEach((id, i) => {
        for (let c = 0; c < k; c += be) {
          let mx = 0;
          for (let j = c; j < c + be; j++) mx = Math.max(mx, Math.abs(w[id * k + j] as number));
          for (let j = c; j < c + be; j++) {
            const err = Math.abs((got[i * k + j] as number) - (w[id * k + j] as number));
            if (!(err <= gamma(2) * 3 * mx))
              expect.fail(`${type} id ${id} col ${j}: ${got[i * k + j]} vs ${w[id * k + j]}`);
          }
        }
      });
    }
  }, 120_000);

  test('every format packs to planes that give back the file bytes exactly (BW a multiple of 4)', () => {
    const rows = 11;
    const u32 = (b: Uint8Array, o: number) =>
      ((b[o] as number) |
        ((b[o + 1] as number) << 8) |
        ((b[o + 2] as number) << 16) |
        ((b[o + 3] as number) << 24)) >>>
      0;
    for (const type of GGUF_KERNEL_TYPES) {
      const L = ggufBlockLayout(type);
      const { blockElems: be, blockBytes: bb } = L.info;
      const cols = 3 * be;
      const bytes = quantizeGguf(type, weights(rows, cols, 7));
      const p = packGguf(type, bytes, rows, cols);
      expect(L.blockWords % 4, type).toBe(0);
      // Bytes accounted for: the words plane, d (2) and the h plane's words.
      expect(4 * L.blockWords + (L.dAt === null ? 0 : 2) + 4 * L.hWords, type).toBe(bb);
      const nb = 3;
      for (let n = 0; n < rows; n++) {
        const tile = Math.floor(n / 8);
        const lane = n % 8;
        for (let b = 0; b < nb; b++) {
          const src = (n * nb + b) * bb;
          for (let w = 0; w < L.blockWords; w++) {
            const at =
              (((tile * nb * L.blockWords + b * L.blockWords) / 4 + (w >> 2)) * 8 + lane) * 4 + (w & 3);
            expect(p.words[at], `${type} row ${n} block ${b} word ${w}`).toBe(
              u32(bytes, src + (L.wordSrc[w] as number)),
            );
          }
          for (let j = 0; j < L.hWords; j++) {
            const at = ((tile * nb + b) * L.hWords + j) * 8 + lane;
            expect(p.hplane?.[at], `${type} h word ${j}`).toBe(u32(bytes, src + (L.hAt as number) + 4 * j));
          }
          if (L.dAt !== null) {
            const pair = p.dplane?.[(tile * Math.ceil(nb / 2) + (b >> 1)) * 8 + lane] ?? 0;
            const d = (bytes[src + L.dAt] as number) | ((bytes[src + L.dAt + 1] as number) << 8);
            expect((pair >>> (16 * (b & 1))) & 0xffff, `${type} d`).toBe(d);
          }
        }
      }
    }
  });

  test('the layout moves only the unaligned f16 d (and Q5_0 one u32) into planes of their own (an exact re-layout)', () => {
    const v = randomF32(9 * 64, 5, 1);
    const bytes = quantizeGguf('Q8_0', v);
    const p = packGguf('Q8_0', bytes, 9, 64);
    expect(p.paddedRows).toBe(16);
    // Row 8 is lane 0 of tile 1; its block 1 starts at file byte (8·2 + 1)·34.
    const src = (8 * 2 + 1) * 34;
    const word = p.words[(1 * 2 * 8 + 1 * 8) * 8 + 0 * 8 + 0];
    expect(word).toBe(
      ((bytes[src + 2] as number) |
        ((bytes[src + 3] as number) << 8) |
        ((bytes[src + 4] as number) << 16) |
        ((bytes[src + 5] as number) << 24)) >>>
        0,
    );
    const d = p.dplane?.[(1 * 1 + 0) * 8 + 0] ?? 0;
    expect(d >>> 16).toBe((bytes[src] as number) | ((bytes[src + 1] as number) << 8));
    // Lane 3 (row 11), block 1, u32 5 (file bytes 2 + 20..): component 1 of 16-byte word 1, the
    // 8 lanes of a tile interleaved by 16 bytes.
    const src11 = (11 * 2 + 1) * 34 + 2 + 20;
    const u32 = (o: number) =>
      ((bytes[o] as number) |
        ((bytes[o + 1] as number) << 8) |
        ((bytes[o + 2] as number) << 16) |
        ((bytes[o + 3] as number) << 24)) >>>
      0;
    expect(p.words[((1 * 2 * 2 + 1 * 2 + 1) * 8 + 3) * 4 + 1]).toBe(u32(src11));
    // Q5_0 (22-byte blocks: d, the u32 of fifth bits, 16 nibble bytes): the fifth bits go to the
    // h plane, the nibbles stay one 16-byte word.
    const q5 = quantizeGguf('Q5_0', v);
    const p5 = packGguf('Q5_0', q5, 9, 64);
    const b5 = (8 * 2 + 1) * 22;
    expect(p5.hplane?.[(1 * 2 + 1) * 8 + 0]).toBe(
      ((q5[b5 + 2] as number) |
        ((q5[b5 + 3] as number) << 8) |
        ((q5[b5 + 4] as number) << 16) |
        ((q5[b5 + 5] as number) << 24)) >>>
        0,
    );
    expect(p5.words[((1 * 2 + 1) * 8 + 0) * 4 + 2]).toBe(
      ((q5[b5 + 14] as number) |
        ((q5[b5 + 15] as number) << 8) |
        ((q5[b5 + 16] as number) << 16) |
        ((q5[b5 + 17] as number) << 24)) >>>
        0,
    );
    expect(() => packGguf('Q4_K', bytes, 1, 100)).toThrow(/whole 256-element blocks/);
    expect(() => packGguf('F16', bytes, 1, 32)).toThrow(/no block matmul/);
  });
});
