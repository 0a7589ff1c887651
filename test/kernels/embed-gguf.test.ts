/**
 * embed_gguf's scale (Gemma's √hidden on a block-quantized token table) against embedRef over the
 * weights the blocks decode to, for 7 ids of a 129-row table in parts, in each block family.
 */
import { describe, expect, test } from 'vitest';
import { DispatchBuilder, runDispatches } from '../../src/gpu/dispatch.js';
import { embedGguf } from '../../src/kernels/embed-gguf.js';
import { embedRef } from '../../src/kernels/embed.ref.js';
import { dequantizeGguf, quantizeGguf } from '../../src/quant/gguf-blocks.js';
import { ggufBlockLayout } from '../../src/quant/gguf-pack.js';
import { uploadGgufWeight } from '../../src/weights/upload-gguf.js';
import { randomF32, readF32, testGpu, upload } from '../helpers/gpu.js';

const u = 2 ** -24;
const gamma = (n: number) => (n * u) / (1 - n * u);

describe('embed_gguf with a scale', () => {
  test.each(['Q8_0', 'Q4_K', 'Q6_K', 'IQ4_NL'])(
    '%s: rows times √hidden',
    async (type) => {
      const ctx = await testGpu();
      const ph = upload(ctx, new Float32Array(4));
      const [rows, k] = [129, 512];
      const scale = Math.fround(Math.sqrt(k));
      const ids = [0, 128, 7, 64, 128, 1, 100];
      const bytes = quantizeGguf(type, randomF32(rows * k, 77, 0.1));
      const table = uploadGgufWeight(ctx, 'embd', [{ type, bytes, rows }], k, 64);
      const out = upload(ctx, new Float32Array(ids.length * k));
      const builder = new DispatchBuilder(ctx);
      runDispatches(
        ctx,
        embedGguf(builder, {
          table,
          ids: upload(ctx, Uint32Array.from(ids)),
          out,
          m: ids.length,
          placeholder: ph,
          scale,
        }),
      );
      builder.destroy();
      const got = await readF32(ctx, out, ids.length * k);
      const w = dequantizeGguf(type, bytes, rows * k);
      const want = embedRef(w, k, ids, scale);
      // Each weight is formed in f32 with at most 2 roundings of terms bounded by 3·max|w| of its
      // block (test/kernels/matmul-gguf.test.ts), then one rounding of the product with the scale.
      const be = ggufBlockLayout(type).info.blockElems;
      ids.forEach((id, i) => {
        for (let c = 0; c < k; c += be) {
          let mx = 0;
          for (let j = c; j < c + be; j++) mx = Math.max(mx, Math.abs(w[id * k + j] as number));
          for (let j = c; j < c + be; j++) {
            const err = Math.abs((got[i * k + j] as number) - (want[i * k + j] as number));
            if (!(err <= gamma(3) * 3 * mx * scale))
              expect.fail(`id ${id} col ${j}: ${got[i * k + j]} vs ${want[i * k + j]}`);
          }
        }
      });
    },
    60_000,
  );
});
