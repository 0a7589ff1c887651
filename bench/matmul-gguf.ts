/**
 * matmul_gguf rows of `kiln bench kernels`: the GGUF block kernels in the formats int4-class and
 * 8-bit GGUF files use most (Q4_K, Q5_K, Q6_K, Q8_0, Q4_0, and Q5_0, which llama.cpp's Q4_K_M
 * writes where a row is not whole 256-element blocks, e.g. Qwen2.5-0.5B's 896 columns) at the
 * benchmark models' layer shapes whose K is whole blocks, M = 1 (decode) and 16, in quick runs
 * too, timed against the same bandwidth figure as every other row (compare with the matmul_q4
 * rows at the same shapes). Weights: a seeded 64-row tile
 * quantized by the round-to-nearest quantizer, repeated down the rows (the kernel's traffic does
 * not depend on the values; quantizing whole 16k-row matrices on the CPU would dominate the run).
 */
import { DispatchBuilder, type Dispatch } from '../src/gpu/dispatch.js';
import { matmulGguf } from '../src/kernels/matmul-gguf.js';
import { randomF32 } from '../src/kernels/random.js';
import { dequantizeGguf, quantizeGguf } from '../src/quant/gguf-blocks.js';
import { ggufBlockLayout } from '../src/quant/gguf-pack.js';
import { uploadGgufWeight } from '../src/weights/upload-gguf.js';
import { checkedColumns, type BenchContext } from './kernels.js';
import { BENCH_MODELS } from './shapes.js';

const TILE_ROWS = 64;

export async function matmulGgufSuite(b: BenchContext): Promise<void> {
  const ms = [1, 16];
  const types = ['Q4_K', 'Q5_K', 'Q6_K', 'Q8_0', 'Q4_0', 'Q5_0'];
  for (const model of BENCH_MODELS) {
    for (const lin of model.linears) {
      for (const type of types) {
        const { info } = ggufBlockLayout(type);
        if (lin.k % info.blockElems !== 0) continue;
        const mark = b.mark;
        const tile = quantizeGguf(type, randomF32(TILE_ROWS * lin.k, lin.n + lin.k, 0.05));
        const seen = dequantizeGguf(type, tile, TILE_ROWS * lin.k);
        const rowBytes = (lin.k / info.blockElems) * info.blockBytes;
        const bytes = new Uint8Array(lin.n * rowBytes);
        for (let r = 0; r < lin.n; r += TILE_ROWS) {
          bytes.set(tile.subarray(0, Math.min(TILE_ROWS, lin.n - r) * rowBytes), r * rowBytes);
        }
        const weight = uploadGgufWeight(b.ctx, 'bench', [{ type, bytes, rows: lin.n }], lin.k);
        let weightBytes = 0;
        for (const p of weight.parts) {
          for (const buf of [p.words, p.dplane, p.hplane]) {
            if (buf) {
              b.adopt(buf);
              weightBytes += buf.size;
            }
          }
        }
        for (const m of ms) {
          const x = randomF32(m * lin.k, m + 3);
          const y = b.buffer(m * lin.n * 4);
          const builder = new DispatchBuilder(b.ctx);
          const d = matmulGguf(builder, { x: b.upload(x), weight, y, m, placeholder: b.buffer(16) });
          const label = (d[0] as Dispatch).label;
          const t = await b.time(label, d);
          const out = await b.readF32(y, m * lin.n);
          const err = blockError(out, x, seen, info.blockElems, m, lin.n, lin.k);
          b.add({
            kernel: 'matmul_gguf',
            variant: label,
            shape: { model: model.name, layer: lin.name, m, n: lin.n, k: lin.k, type },
            ms: t,
            bytes: weightBytes + m * (lin.k + lin.n) * 4,
            flops: 2 * m * lin.n * lin.k,
            max_rel_err: err,
            // The bound of test/kernels/matmul-gguf.test.ts: γ_(K/8+10) of Σ A_k·|x_k|, A_k = 3·the
            // block's max |w| (the magnitude of the terms each weight is formed from).
            ok: err <= (lin.k / 8 + 10) * 2 ** -24,
          });
          builder.destroy();
        }
        b.freeSince(mark);
      }
    }
  }
}

/**
 * Worst |y − ref| / Σ_k A_k·|x_k| over the checked outputs, ref the float64 product with the
 * decoded weights (row n is tile row n % 64) and A_k three times the max |w| of weight k's block.
 */
function blockError(
  y: Float32Array,
  x: Float32Array,
  tile: Float64Array,
  blockElems: number,
  m: number,
  n: number,
  k: number,
): number {
  let worst = 0;
  for (let i = 0; i < m; i++) {
    for (const j of checkedColumns(m, n, k)) {
      const row = (j % TILE_ROWS) * k;
      let s = 0;
      let a = 0;
      for (let b0 = 0; b0 < k; b0 += blockElems) {
        let mx = 0;
        for (let t = b0; t < b0 + blockElems; t++) mx = Math.max(mx, Math.abs(tile[row + t] as number));
        for (let t = b0; t < b0 + blockElems; t++) {
          const xv = x[i * k + t] as number;
          s += xv * (tile[row + t] as number);
          a += 3 * mx * Math.abs(xv);
        }
      }
      worst = Math.max(worst, Math.abs((y[i * n + j] as number) - s) / (a || 1));
    }
  }
  return worst;
}
